"""The COCO recipe at COCO's size: dataset build, loading and evaluation, adpd against the official HRNet code.

    python bench/bench_scale.py --official PATH/TO/deep-high-resolution-net.pytorch [--root DIR] [--out bench/results/scale]
                                [--eval-boxes N] [--loader-batches 20]

Builds (once, into DIR, default a folder under the system temp dir; never committed) a COCO-shaped set at the real
sizes in the official layout: train2017 118,287 images / 262,465 person annotations (149,813 with keypoints, 64,115
images with people), val2017 5,000 images / 11,004 person annotations (6,352 with keypoints, 2,693 images with
people) and a detection file of 104,125 person boxes over the 5,000 val images. Every image file is a hard link to
one of the four coco_tiny fixture images (a copy of them in DIR, so the links stay on one file system); each entry
carries the width/height of its file and annotations/detections copied from the fixture ones of that image (ids and
image ids renumbered; real polygons kept so the json is COCO's size per annotation).

Each measured step runs in a fresh process (so its peak RSS is its own; `rss0` is the same process after imports):
  build   train / val (ground-truth boxes) / val-det (104k detection boxes): adpd `CocoKeypoints` with a cold per-file
          check cache, then a warm one; the official `COCODataset` (which checks no file).
  loader  samples/s over `--loader-batches` training batches of 32: adpd `pose_dls` (decode threads) and the official
          `COCODataset` in a one-process `DataLoader`.
  eval    on the 104k detection boxes: model (`create_pose_model('tiny')`, flip test, CPU) on `--eval-boxes` boxes
          (the rest of the predictions are the ground truth's joints with noise, timed but not a model's), heatmap
          decode, rescoring + OKS-NMS, COCOeval; the official steps on the same predictions: `get_final_preds`'s decode
          (bench/classic.py's copy of its structure), and `COCODataset.evaluate` split into rescoring + OKS-NMS
          (`nms.nms.oks_nms`, imported from the checkout), its results json, and `_do_python_keypoint_eval`.
Shims for today's libraries: `np.float` (removed in numpy 1.24), `json_tricks` → `json` (numpy scalars as numbers) when
absent, stub `cpu_nms`/`gpu_nms` (Cython box NMS, never called on the keypoint path).
Results: a csv, results.md, the command, the commit and the machine, in --out."""
import argparse, json, os, platform, resource, shutil, subprocess, sys, tempfile, time, types, warnings
from pathlib import Path
import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = dict(train=dict(images=118_287, anns=262_465, kp_anns=149_813, person_images=64_115),
             val=dict(images=5_000, anns=11_004, kp_anns=6_352, person_images=2_693, dets=104_125))

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# --- the COCO-shaped set -------------------------------------------------------------------------------------------
def make_coco_shaped(root:Path, fixture:Path, seed=0):
    "Write the set into `root` (official layout); skip when `root/DONE` exists. Returns a one-line description."
    if (root / 'DONE').exists(): return (root / 'DONE').read_text()
    t0, rng = time.perf_counter(), np.random.default_rng(seed)
    src = json.loads((fixture / 'person_keypoints_tiny.json').read_text())
    dets = json.loads((fixture / 'person_detection_results_tiny.json').read_text())
    (root / 'annotations').mkdir(parents=True, exist_ok=True); (root / 'person_detection_results').mkdir(exist_ok=True)
    (root / 'fixture').mkdir(exist_ok=True)
    fix = sorted(src['images'], key=lambda im: im['id'])
    for im in fix: shutil.copy(fixture / 'images' / im['file_name'], root / 'fixture' / im['file_name'])
    anns_of = {im['id']: [a for a in src['annotations'] if a['image_id'] == im['id'] and a['num_keypoints'] > 0] for im in fix}
    dets_of = {im['id']: [d for d in dets if d['image_id'] == im['id']] for im in fix}
    for split, z in SIZES.items():
        d = root / 'images' / f'{split}2017'; d.mkdir(parents=True, exist_ok=True)
        ids = np.arange(1, z['images'] + 1) * 3 + (0 if split == 'train' else 1)        # 12-digit names, as COCO's
        which = np.arange(z['images']) % len(fix)
        images = []
        for i, k in zip(ids.tolist(), which.tolist()):
            im = fix[k]; name = f'{i:012d}.jpg'
            if not (d / name).exists(): os.link(root / 'fixture' / im['file_name'], d / name)
            images.append(dict(id=i, file_name=name, width=im['width'], height=im['height']))
        people = rng.choice(z['images'], z['person_images'], replace=False)
        on = people[np.arange(z['anns']) % len(people)]                                # every person image has >= 1
        with_kp = np.zeros(z['anns'], bool); with_kp[rng.choice(z['anns'], z['kp_anns'], replace=False)] = True
        anns, count = [], {}
        for a_id, (p, kp) in enumerate(zip(on.tolist(), with_kp.tolist()), 1):
            pool = anns_of[fix[which[p]]['id']]; c = count[p] = count.get(p, -1) + 1
            a = dict(pool[c % len(pool)], id=a_id, image_id=int(ids[p]))
            if not kp: a.update(keypoints=[0] * 51, num_keypoints=0)
            anns.append(a)
        gt = dict(info=src.get('info', {}), licenses=src.get('licenses', []), categories=src['categories'], images=images, annotations=anns)
        (root / 'annotations' / f'person_keypoints_{split}2017.json').write_text(json.dumps(gt))
        if split == 'val':
            on = np.arange(z['dets']) % z['images']
            out = []
            for j, p in enumerate(on.tolist()):
                pool = dets_of[fix[which[p]]['id']]; dd = pool[(j // z['images']) % len(pool)]
                box = (np.array(dd['bbox']) + rng.normal(0, 2, 4)).clip(1).round(2).tolist()
                out.append(dict(image_id=int(ids[p]), category_id=1, bbox=box, score=float(rng.uniform(.05, 1))))
            (root / 'person_detection_results' / 'COCO_val2017_detections_AP_H_56_person.json').write_text(json.dumps(out))
    desc = (f"COCO-shaped set in {root}: {SIZES['train']['images']} + {SIZES['val']['images']} image files, each a hard link to "
            f"one of the {len(fix)} coco_tiny images (copied to {root / 'fixture'}); train json "
            f"{(root / 'annotations' / 'person_keypoints_train2017.json').stat().st_size / 1e6:.0f} MB, built in {time.perf_counter() - t0:.0f} s")
    (root / 'DONE').write_text(desc)
    return desc

# --- the official code ---------------------------------------------------------------------------------------------
def import_official(repo:Path):
    "The official `COCODataset` and `oks_nms` from `repo/lib` (shims: np.float, json_tricks → json, the Cython NMS)."
    lib = repo / 'lib'
    if not hasattr(np, 'float'): np.float = float
    try: import json_tricks  # noqa: F401
    except ImportError:                       # json with numpy scalars, as json_tricks writes them
        jt = types.ModuleType('json_tricks'); jt.__dict__.update(json.__dict__)
        jt.dump = lambda o, f, **kw: json.dump(o, f, default=lambda x: x.item(), **kw); sys.modules['json_tricks'] = jt
    for m in ('cpu_nms', 'gpu_nms'):          # box NMS extensions the keypoint path never calls; nms.py imports them
        mod = types.ModuleType(f'nms.{m}'); setattr(mod, m, None); sys.modules[f'nms.{m}'] = mod
    sys.path.insert(0, str(lib))
    import logging; logging.disable(logging.INFO)
    from dataset.coco import COCODataset
    from nms.nms import oks_nms
    return COCODataset, oks_nms

def official_cfg(root, train_aug=True, det=False):
    sys.path.insert(0, str(HERE)); from bench_pipeline import official_cfg as cfg
    c = cfg(train_aug); c.RANK = 0; c.OUTPUT_DIR = tempfile.mkdtemp(prefix='bench-scale-out-')
    c.TEST.USE_GT_BBOX = not det
    c.TEST.COCO_BBOX_FILE = str(root / 'person_detection_results' / 'COCO_val2017_detections_AP_H_56_person.json')
    return c

# --- the steps (each in its own process) ---------------------------------------------------------------------------
def quiet():
    import contextlib, io
    return contextlib.redirect_stdout(io.StringIO())

def step_build(a):
    import torch, cv2  # noqa: F401   (imported before rss0, as a training run would have them)
    from adpd.data import CocoKeypoints, SkipWarning
    r0, root = rss_mb(), a.root
    split = 'val' if a.split.startswith('val') else 'train'
    ann, img = root / 'annotations' / f'person_keypoints_{split}2017.json', root / 'images' / f'{split}2017'
    det = a.split == 'val-det'
    t = time.perf_counter()
    if a.impl == 'adpd':
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', SkipWarning)
            ds = CocoKeypoints(ann, img, train=split == 'train',
                               det_file=root / 'person_detection_results' / 'COCO_val2017_detections_AP_H_56_person.json' if det else None)
    else:
        COCODataset, _ = import_official(a.official)
        import torchvision.transforms as T
        with quiet(): ds = COCODataset(official_cfg(root, det=det), str(root), f'{split}2017', split == 'train', T.ToTensor())
    return dict(seconds=time.perf_counter() - t, samples=len(ds), rss0_mb=r0, peak_rss_mb=rss_mb())

def step_loader(a):
    import torch, cv2
    from adpd.data import CocoKeypoints, SkipWarning, pose_dls
    root, n = a.root, a.loader_batches
    ann, img = root / 'annotations' / 'person_keypoints_train2017.json', root / 'images' / 'train2017'
    def rate(dl):
        torch.manual_seed(0); np.random.seed(0); k, it = 0, iter(dl)
        next(it); t = time.perf_counter()        # the first batch (pool start-up) is not counted
        for _ in range(n): k += len(next(it)[0])
        return k / (time.perf_counter() - t)
    if a.impl == 'adpd':
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', SkipWarning)
            ds = CocoKeypoints(ann, img, train=True)
        dl = pose_dls(ds, ds, bs=32, num_workers=0, device='cpu').train
        return dict(samples_per_s=rate(dl), threads=dl.threads, peak_rss_mb=rss_mb())
    COCODataset, _ = import_official(a.official)
    import torchvision.transforms as T
    norm = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    torch.set_num_threads(1); cv2.setNumThreads(1)
    with quiet(): ds = COCODataset(official_cfg(root), str(root), 'train2017', True, norm)
    return dict(samples_per_s=rate(torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=0)), threads=1,
                peak_rss_mb=rss_mb())

def step_eval(a):
    "Both evaluations on the same predictions; times per part (seconds)."
    import torch
    from adpd.data import CocoKeypoints, SkipWarning
    from adpd.evaluate import predict_keypoints, coco_results, coco_keypoint_eval, _cat_id
    from adpd.models import create_pose_model
    from adpd.transforms import decode_heatmaps, heatmap_to_image
    sys.path.insert(0, str(HERE)); from classic import classic_final_preds
    root = a.root
    ann = root / 'annotations' / 'person_keypoints_val2017.json'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SkipWarning)
        ds = CocoKeypoints(ann, root / 'images' / 'val2017', train=False,
                           det_file=root / 'person_detection_results' / 'COCO_val2017_detections_AP_H_56_person.json')
    N, K, (W, H) = len(ds), ds.spec.K, ds.heatmap_size
    out, rng = {}, np.random.default_rng(0)
    # model: a tiny network with flip test on the first `eval_boxes` boxes (decode included, as predict_keypoints does)
    m = min(a.eval_boxes, N)
    model = create_pose_model('tiny', num_joints=K).eval()
    class Head(torch.utils.data.Dataset):                  # the first m rows, as a dataset predict_keypoints accepts
        def __init__(s): s.db, s.spec, s.heatmap_size, s.train = _rows(ds.db, m), ds.spec, ds.heatmap_size, False
        def __len__(s): return m
        def __getitem__(s, i): return ds[i]
    t = time.perf_counter(); kp_m, mv_m = predict_keypoints(model, Head(), flip=True, bs=64); out['model_s'] = time.perf_counter() - t
    out['model_boxes'] = m; out['model_s_per_box'] = out['model_s'] / max(m, 1)
    # decode alone on a batch of heatmaps, both ways, scaled to N boxes
    hm = torch.rand(256, K, H, W)
    c, s = ds.db.center[:256], ds.db.scale[:256]
    t = time.perf_counter(); heatmap_to_image(decode_heatmaps(hm)[0].numpy(), c, s, (W, H)); out['decode_s'] = (time.perf_counter() - t) * N / 256
    t = time.perf_counter(); classic_final_preds(hm.numpy(), c, s); out['official_decode_s'] = (time.perf_counter() - t) * N / 256
    # predictions for all N boxes: the model's for the first m, the ground truth's joints with noise for the rest
    from adpd.evaluate import gt_keypoints
    kp, mv = gt_keypoints(ds)
    kp = kp + rng.normal(0, 3, kp.shape); mv = np.clip(mv * rng.uniform(.3, 1, mv.shape), 0, 1).astype(np.float32)
    kp[:m], mv[:m] = kp_m, mv_m
    t = time.perf_counter(); res = coco_results(ds, kp, mv); out['nms_s'] = time.perf_counter() - t
    t = time.perf_counter(); metrics = coco_keypoint_eval(ds.coco, res, ds.spec.sigmas, _cat_id(ds)); out['cocoeval_s'] = time.perf_counter() - t
    out.update(boxes=N, kept=len(res), AP=metrics['AP'])
    # the official evaluate on the same predictions
    COCODataset, _ = import_official(a.official)
    import torchvision.transforms as T
    with quiet(): off = COCODataset(official_cfg(root, det=True), str(root), 'val2017', False, T.ToTensor())
    assert len(off.db) == N, (len(off.db), N)
    preds = np.concatenate([kp, mv[..., None]], -1).astype(np.float32)
    boxes = np.zeros((N, 6), np.float32)
    boxes[:, 0:2], boxes[:, 2:4] = ds.db.center, ds.db.scale
    boxes[:, 4], boxes[:, 5] = np.prod(ds.db.scale * 200, 1), ds.db.score
    paths = [f"{int(i):012d}.jpg" for i in ds.db.image_id]
    tw = {}
    def timed(name, f):
        def g(*args, **kw):
            t = time.perf_counter(); r = f(*args, **kw); tw[name] = tw.get(name, 0) + time.perf_counter() - t; return r
        return g
    off._write_coco_keypoint_results = timed('write', off._write_coco_keypoint_results)
    off._do_python_keypoint_eval = timed('cocoeval', off._do_python_keypoint_eval)
    t = time.perf_counter()
    with quiet(): nv, ap = off.evaluate(official_cfg(root, det=True), preds, tempfile.mkdtemp(prefix='bench-scale-eval-'), boxes, paths)
    total = time.perf_counter() - t
    out.update(official_nms_s=total - tw['write'] - tw['cocoeval'], official_write_s=tw['write'], official_cocoeval_s=tw['cocoeval'],
               official_AP=float(ap), peak_rss_mb=rss_mb())
    return out

def _rows(db, m):
    "The first `m` rows of a `PoseRecords`."
    import dataclasses
    return type(db)(**{f.name: getattr(db, f.name)[:m] for f in dataclasses.fields(db)})

# --- the orchestration ---------------------------------------------------------------------------------------------
def child(a, step, pythonpath=None, **kw):
    "Run `step` in a fresh process (with `pythonpath` first on its path: an older adpd); its result dict."
    cmd = [sys.executable, __file__, '--_step', step, '--root', str(a.root), '--official', str(a.official),
           '--eval-boxes', str(a.eval_boxes), '--loader-batches', str(a.loader_batches)] + sum([[f'--{k}', str(v)] for k, v in kw.items()], [])
    env = dict(os.environ, ADPD_CACHE=str(a.cache), **({'PYTHONPATH': str(pythonpath)} if pythonpath else {}))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if p.returncode: sys.exit(f"step {step} {kw} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--official', type=Path, required=True)
    p.add_argument('--root', type=Path, default=Path(tempfile.gettempdir()) / 'adpd-coco-shaped')
    p.add_argument('--cache', type=Path, default=None, help='ADPD_CACHE for the adpd builds (default: a fresh temp dir, so the first build is cold)')
    p.add_argument('--out', type=Path, default=HERE / 'results' / 'scale')
    p.add_argument('--eval-boxes', type=int, default=4096); p.add_argument('--loader-batches', type=int, default=20)
    p.add_argument('--steps', default='build,loader,eval')
    p.add_argument('--before', type=Path, help='a folder holding an older `adpd/` package (e.g. `git archive COMMIT adpd | tar -x -C DIR`): its build, too')
    p.add_argument('--_step'); p.add_argument('--split', default='train'); p.add_argument('--impl', default='adpd')
    a = p.parse_args()
    if a._step:
        print(json.dumps(dict(build=step_build, loader=step_loader, eval=step_eval)[a._step](a))); return
    from adpd.core import shared_data
    fixture = shared_data('coco_tiny')
    if fixture is None: sys.exit('shared/data/coco_tiny not found: set ADPD_SHARED_DATA')
    a.cache = a.cache or Path(tempfile.mkdtemp(prefix='adpd-cache-'))
    desc = make_coco_shaped(a.root, fixture)
    print(desc, flush=True)
    rows = []
    def add(step, impl, what, **r):
        rows.append(dict(step=step, impl=impl, what=what, **r)); print(rows[-1], flush=True)
    steps = a.steps.split(',')
    if 'build' in steps:
        for split in ('train', 'val', 'val-det'):
            add('build', 'official', split, **child(a, 'build', split=split, impl='official'))
            add('build', 'adpd', split + ' (cold cache)', **child(a, 'build', split=split, impl='adpd'))
            add('build', 'adpd', split + ' (warm cache)', **child(a, 'build', split=split, impl='adpd'))
            if a.before: add('build', 'adpd before', split, **child(a, 'build', a.before, split=split, impl='adpd'))
    if 'loader' in steps:
        for impl in ('official', 'adpd'): add('loader', impl, 'train, batches of 32', **child(a, 'loader', impl=impl))
    if 'eval' in steps: add('eval', 'both', 'val-det', **child(a, 'eval'))
    write_results(a, desc, rows)

def write_results(a, desc, rows):
    import torch, csv
    a.out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(a.out / 'results.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, keys); w.writeheader(); w.writerows(rows)
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=HERE).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', 'adpd'], capture_output=True, text=True, cwd=HERE).stdout.strip()
    (a.out / 'command.txt').write_text(' '.join(['python'] + [str(x) for x in sys.argv]) + '\n')
    (a.out / 'commit.txt').write_text(commit + (' (with uncommitted changes in adpd/)' if dirty else '') + '\n')
    (a.out / 'machine.txt').write_text(f"cores: {os.cpu_count()}\ncpu: {platform.processor() or platform.machine()}\n"
                                       f"python: {platform.python_version()}\ntorch: {torch.__version__}\nnumpy: {np.__version__}\n"
                                       f"platform: {platform.platform()}\nset: {desc}\n")
    (a.out / 'results.md').write_text(table(rows, desc))
    print(table(rows, desc))

def table(rows, desc):
    "The markdown summary."
    before = any(r['impl'] == 'adpd before' for r in rows)
    L = [f"# COCO at COCO's size\n\n{desc}\n", "| step | official HRNet | adpd (cold cache) | adpd (warm cache) |" + (" adpd before |" if before else ''),
         "|---|---|---|---|" + ("---|" if before else '')]
    b = {(r['impl'], r['what']): r for r in rows if r['step'] == 'build'}
    for split in ('train', 'val', 'val-det'):
        if ('official', split) not in b: continue
        f = lambda r: f"{r['seconds']:.1f} s, {r['peak_rss_mb'] / 1024:.2f} GB peak RSS ({r['samples']} samples)"
        L.append(f"| build {split} | {f(b['official', split])} | {f(b['adpd', split + ' (cold cache)'])} | {f(b['adpd', split + ' (warm cache)'])} |"
                 + (f" {f(b['adpd before', split])} |" if before else ''))
    ld = {r['impl']: r for r in rows if r['step'] == 'loader'}
    if ld: L.append(f"| loader, train, samples/s | {ld['official']['samples_per_s']:.0f} (1 process) | "
                    f"{ld['adpd']['samples_per_s']:.0f} ({ld['adpd']['threads']} decode threads) | |")
    ev = next((r for r in rows if r['step'] == 'eval'), None)
    if ev:
        L += ["", f"Evaluation on {ev['boxes']} detection boxes ({ev['kept']} kept by OKS-NMS), seconds:", "",
              "| part | official HRNet | adpd |", "|---|---|---|",
              f"| image decode + crop + model (tiny, flip test, CPU, `predict_keypoints`), per box | | {ev['model_s_per_box'] * 1e3:.2f} ms "
              f"({ev['model_boxes']} boxes timed; all {ev['boxes']}: {ev['model_s_per_box'] * ev['boxes'] / 60:.0f} min) |",
              f"| heatmap decode to image coordinates | {ev['official_decode_s']:.1f} | {ev['decode_s']:.2f} |",
              f"| rescoring + OKS-NMS (+ result dicts) | {ev['official_nms_s']:.1f} | {ev['nms_s']:.1f} |",
              f"| results json | {ev['official_write_s']:.1f} | (not written unless asked) |",
              f"| COCOeval (loadRes, evaluate, accumulate) | {ev['official_cocoeval_s']:.1f} | {ev['cocoeval_s']:.1f} |",
              f"| AP on these predictions | {ev['official_AP']:.4f} | {ev['AP']:.4f} |",
              f"| all but the model | {ev['official_decode_s'] + ev['official_nms_s'] + ev['official_write_s'] + ev['official_cocoeval_s']:.1f} | "
              f"{ev['decode_s'] + ev['nms_s'] + ev['cocoeval_s']:.1f} |",
              "", "Decode times are for 256 random heatmaps scaled to all boxes. Predictions past the timed boxes are the ground "
              "truth's joints with noise; both evaluations get the same ones."]
    return '\n'.join(L) + '\n'

if __name__ == '__main__': main()

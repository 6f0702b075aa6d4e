"""Data pipeline against the official HRNet `COCODataset`, side by side, one process, exact decoding.

    python bench/bench_pipeline.py --official PATH/TO/deep-high-resolution-net.pytorch [--samples 360] [--reps 3]

PATH is a checkout of the official HRNet code (github.com/leoxiaobin/deep-high-resolution-net.pytorch); its `lib/`
is imported from there at run time, nothing of it is copied here. Both pipelines read the coco_tiny fixture
(../shared/data, or ADPD_SHARED_DATA) with the paper recipe's augmentation (w32_256x192: scale 0.35, rotation 45°
with p 0.6, flip, half body p 0.3 above 8 joints, RGB, sigma 2) and decode every JPEG in full.

First it checks that the two give the same inputs: without augmentation, the normalised crops and the targets of every
sample are compared. Then it times, interleaved, in one process with one thread each:
  item:    the official `__getitem__` (crop, ToTensor + Normalize, generate_target) against ours (crop) plus our
           per-batch normalisation and targets amortised per sample (what a CPU-only run does);
  loader:  a one-process `DataLoader` of batches of 32 of each, collation included (ours: `pose_dls` on the CPU,
           with one thread, and with its decode threads: one per core, up to 4; the official code has none).
To run the official code on today's numpy/without its compiled NMS, three shims are installed and printed:
`np.float` (removed in numpy 1.24), `json_tricks` → `json` when absent, and a stub `nms.nms` when its Cython
extensions are not built (the data path never calls NMS)."""
import argparse, json, os, sys, tempfile, time, types, warnings
from pathlib import Path
from types import SimpleNamespace as NS
import cv2, numpy as np, torch

def import_official(repo:Path):
    "The official `COCODataset` class, imported from `repo/lib`, with the shims it needs here (listed)."
    lib = repo / 'lib'
    if not (lib / 'dataset' / 'coco.py').is_file(): sys.exit(f"{repo}: not an HRNet checkout (no lib/dataset/coco.py)")
    shims = []
    if not hasattr(np, 'float'): np.float = float; shims.append('np.float = float')
    try: import json_tricks  # noqa: F401
    except ImportError: sys.modules['json_tricks'] = json; shims.append('json_tricks -> json')
    sys.path.insert(0, str(lib))
    try: import nms.nms  # noqa: F401
    except ImportError:
        pkg, mod = types.ModuleType('nms'), types.ModuleType('nms.nms')
        mod.oks_nms = mod.soft_oks_nms = None; pkg.nms = mod
        sys.modules.update({'nms': pkg, 'nms.nms': mod}); shims.append('nms.nms stub (Cython NMS not built)')
    import logging; logging.disable(logging.INFO)
    from dataset.coco import COCODataset
    return COCODataset, shims

def official_cfg(train_aug=True):
    "The fields of the official config the dataset reads, with the w32_256x192_adam_lr1e-3 values."
    return NS(OUTPUT_DIR=tempfile.gettempdir(),
              DATASET=NS(DATA_FORMAT='jpg', SCALE_FACTOR=.35, ROT_FACTOR=45, FLIP=True, NUM_JOINTS_HALF_BODY=8,
                         PROB_HALF_BODY=.3 if train_aug else -1., COLOR_RGB=True, SELECT_DATA=False),
              MODEL=NS(TARGET_TYPE='gaussian', IMAGE_SIZE=[192, 256], HEATMAP_SIZE=[48, 64], SIGMA=2),
              LOSS=NS(USE_DIFFERENT_JOINTS_WEIGHT=False),
              TEST=NS(NMS_THRE=1., IMAGE_THRE=0., SOFT_NMS=False, OKS_THRE=.9, IN_VIS_THRE=.2, COCO_BBOX_FILE='', USE_GT_BBOX=True))

def coco_layout(d:Path) -> Path:
    "A temporary folder in the official layout (annotations/person_keypoints_tiny.json, images/tiny/) linking to `d`."
    root = Path(tempfile.mkdtemp(prefix='bench-pipeline-'))
    (root / 'annotations').mkdir(); (root / 'images').mkdir()
    os.symlink(d / 'person_keypoints_tiny.json', root / 'annotations' / 'person_keypoints_tiny.json')
    os.symlink(d / 'images', root / 'images' / 'tiny')
    return root

def same_inputs(off, ours, tfm):
    "Max differences between the official and our crops (grey levels) and targets, over every sample, no augmentation."
    assert len(off) == len(ours), (len(off), len(ours))
    dx, dt, dw, npix = 0., 0., 0., 0
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    for i in range(len(ours)):
        x, t, w, _ = off[i]
        xo, j = ours[i]
        xb, hm, tw = tfm((xo[None], j[None]))
        d = ((xb[0] - x) * std).abs()
        dx, npix = max(dx, float(d.max())), npix + int((d > .5).sum())
        dt, dw = max(dt, float((hm[0] - t).abs().max())), max(dw, float((tw[0] - w[:, 0]).abs().max()))
    return dx, npix, dt, dw

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--official', required=True, type=Path, help='checkout of deep-high-resolution-net.pytorch')
    p.add_argument('--samples', type=int, default=360); p.add_argument('--reps', type=int, default=3)
    a = p.parse_args()
    from adpd.core import shared_data
    from adpd.data import CocoKeypoints, PoseTargets, pose_dls
    d = shared_data('coco_tiny')
    if d is None: sys.exit('shared/data/coco_tiny not found: set ADPD_SHARED_DATA')
    COCODataset, shims = import_official(a.official.expanduser())
    print('official code:', a.official, '| shims:', ', '.join(shims) or 'none')
    import torchvision.transforms as T
    norm = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    root = coco_layout(d)
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        off_val, off = (COCODataset(official_cfg(tr), str(root), 'tiny', tr, norm) for tr in (False, True))
        ours_val, ours = (CocoKeypoints(d / 'person_keypoints_tiny.json', d / 'images', train=tr) for tr in (False, True))
    tfm = PoseTargets(ours.heatmap_size)
    dx, npix, dt, dw = same_inputs(off_val, ours_val, tfm)
    n_all = len(ours_val) * 3 * 256 * 192
    print(f"same inputs, {len(ours_val)} persons without augmentation: crops differ by at most {dx:.2f} grey levels "
          f"({npix} of {n_all} values differ), targets by {dt:.1e}, target weights by {dw:.0f}")

    torch.set_num_threads(1); cv2.setNumThreads(1)
    N, n, buf = len(ours), a.samples, []
    def ours_item(i):   # a worker's crop, plus (every 32 items) the batch's normalisation and targets on the CPU
        buf.append(ours[i % N])
        if len(buf) == 32: tfm((torch.stack([b[0] for b in buf]), torch.stack([b[1] for b in buf]))); buf.clear()
    def rate(get, seed):
        np.random.seed(seed); t = time.perf_counter()
        for i in range(n): get(i)
        return n / (time.perf_counter() - t)
    def loader_rate(dl, seed):
        torch.manual_seed(seed); np.random.seed(seed); k, t = 0, time.perf_counter()
        while k < n:
            for b in dl:
                k += len(b[0])
                if k >= n: break
        return k / (time.perf_counter() - t)
    off_dl = torch.utils.data.DataLoader(off, batch_size=32, shuffle=True, num_workers=0)
    ours_dl1 = pose_dls(ours, ours_val, bs=32, num_workers=0, device='cpu', threads=1).train
    ours_dl = pose_dls(ours, ours_val, bs=32, num_workers=0, device='cpu').train
    r = {k: [] for k in ('official item', 'adpd item', 'official loader', 'adpd loader', 'adpd loader+threads')}
    for rep in range(a.reps):
        r['official item'].append(rate(lambda i: off[i % N], rep)); r['adpd item'].append(rate(ours_item, rep))
        r['official loader'].append(loader_rate(off_dl, rep)); r['adpd loader'].append(loader_rate(ours_dl1, rep))
        r['adpd loader+threads'].append(loader_rate(ours_dl, rep))
    m = {k: float(np.median(v)) for k, v in r.items()}
    print(f"samples/s, one process, coco_tiny ({N} persons, {n} draws, median of {a.reps} interleaved runs, {os.cpu_count()} cores):")
    for what, o in (('item', 'item'), ('loader', 'loader'), (f'loader, {ours_dl.threads} decode threads', 'loader')):
        ov, sv = m[f'official {o}'], m['adpd ' + what.replace(f', {ours_dl.threads} decode threads', '+threads')]
        print(f"  {what:>26}: official {ov:6.1f}   adpd {sv:6.1f}   ratio {sv / ov:.2f}x")

if __name__ == '__main__': main()

"""Parameters, GFLOPs and CPU latency of a teacher and its students, side by side in one run, with the speed-up over the teacher.

    python bench/bench_students.py                      # the shipped teacher and student (the demo's pair) at the demo's input size
    python bench/bench_students.py runs/demo            # a run folder: `adpd_train demo`'s, or one of `adpd_train coco|mpii`
    python bench/bench_students.py --models hrnet_w48,hrnet_w32,tiny --image-size 256x192
    options: --threads 1 (torch and ONNX Runtime) --runs 20 (timed passes at batch 1; a quarter, at least 3, at larger batches)
             --batch-sizes 1,32 --no-onnx --joints 17 (named models)

The first model is the reference (the teacher). For each model: parameters, GFLOPs (`torch.utils.flop_counter`'s count: 2 FLOPs
per multiply-add), and the latency per crop (ms, median of `--runs` passes of random crops) at each batch size for eager PyTorch
and for ONNX Runtime on the CPU running the model exported by `adpd.export.export_student`, with the same number of threads. The
exported model's heatmaps are checked against eager PyTorch's first ("ORT max rel err": max |ORT − eager| ÷ max |eager|). The
speed-up is the teacher's latency ÷ the model's in the same runtime; "ORT ÷ eager" is the eager latency ÷ ONNX Runtime's for the
same model. Everything is measured in this run by `adpd.speed.compare_speed` (`adpd.models.compare_speed`, the function the demo's table uses, plus ONNX Runtime), in interleaved
rounds over the models; nothing is read from earlier runs. A run folder's models carry its trained weights (which do not change
the speed); named models are freshly initialised.
"""
import argparse, json, os, platform, sys, warnings
warnings.filterwarnings('ignore', message='.*torch.jit.script.*')    # said by a dependency on import
from pathlib import Path
import torch
from adpd.core import parse_size
from adpd.models import load_pose_model
from adpd.recipes import BENCH, model_from_name, shipped_model
from adpd.speed import compare_speed
from adpd.run import TrainError

def load_model(name, path=None, joints=17):
    "Model `name` with the weights of `path` (read by `load_pose_model`, its number of joints from them), or freshly initialised with `joints` joints."
    return model_from_name(name, joints) if path is None else load_pose_model(path, arch=name).model

def _final(run) -> Path|None:
    "The weights a finished run left (`final.pth`, else `best.pth`), or None."
    return next((f for f in (run / 'final.pth', run / 'best.pth') if f.is_file()), None)

def run_models(folder):
    """The models of the run folder `folder` as `({label: model}, input_size (w, h), notes)`: the teacher first, then the students.
    A demo folder (or one of its runs) gives the shipped teacher and the student architecture once, with the weights of its first
    fine-tuned run (all its runs share the architecture, so the speed is theirs too); a `coco`/`mpii` run gives its teacher (when
    it distils) and its student; a run that trained a shipped model gives that model."""
    folder = Path(folder).expanduser()
    cfg = folder / 'config.json'
    if not cfg.is_file(): raise TrainError(f"{folder}: no config.json; not a run folder of adpd_train")
    c, notes = json.loads(cfg.read_text()), []
    if c.get('cmd') in ('coco', 'mpii'):
        size, models, student = parse_size(c['image_size']), {}, _final(folder)
        if c.get('kd', 'none') != 'none' and c.get('teacher'):
            tw = c.get('teacher_weights')
            if tw and not Path(tw).is_file(): notes.append(f"teacher weights {tw} not found: the teacher is freshly initialised"); tw = None
            models[f"teacher {c['teacher']}"] = load_model(c['teacher'], tw)
        if student is None: notes.append(f"{folder} holds no final.pth or best.pth: the student is freshly initialised")
        models[f"student {c['student']}"] = load_model(c['student'], student)
        return models, size, notes
    if 'role' in c and 'model' in c:                               # a run that trained one of the shipped models
        f = _final(folder)
        return {f"{c['role']} {c['model']}": load_model(c['model'], f)}, parse_size(c.get('image_size', BENCH['image_size'])), notes
    if 'teacher' in c and 'student' in c:                          # the demo, or one of its fine-tuning runs
        teacher, base = shipped_model('teacher'), shipped_model('student')
        for role, m in (('teacher', teacher), ('student', base)):
            if c[role] and c[role] != m.shipped['sha256']: notes.append(f"the run started from another shipped {role} (sha256 {c[role][:12]}…)")
        runs = sorted(p.parent for p in folder.glob('**/final.pth'))
        runs = sorted(runs, key=lambda r: r.name not in ('adpd', 'student-adpd'))   # the ADPD student's weights first, when there is one
        models = {f"teacher {teacher.shipped['model']} (shipped)": teacher}
        if runs:
            label = runs[0].relative_to(folder).as_posix() if runs[0] != folder else folder.name
            models[f"student {base.shipped['model']} ({label})"] = load_model(base.shipped['model'], runs[0] / 'final.pth')
            if len(runs) > 1: notes.append(f"{len(runs)} fine-tuned students share this architecture (latency does not depend on the weights): "
                                           + ', '.join(r.relative_to(folder).as_posix() for r in runs))
        else:
            models[f"student {base.shipped['model']} (shipped)"] = base
            notes.append(f"{folder} holds no finished student (final.pth): the shipped student is timed")
        return models, parse_size(BENCH['image_size']), notes
    raise TrainError(f"{cfg}: not the config of an adpd_train run (demo, coco, mpii or a shipped model's)")

def fmt(x, f='{:.2f}'): return '' if x is None else f.format(x)

def table(rows, batch_sizes, onnx=True) -> str:
    "The rows of `compare_speed` as a markdown table."
    rts = ('eager', 'ort') if onnx else ('eager',)
    name = dict(eager='eager', ort='ORT')
    cols = [('model', lambda r: r['name']), ('params (M)', lambda r: fmt(r['params'] / 1e6, '{:.3g}')),
            ('GFLOPs', lambda r: fmt(r['gflops'], '{:.3g}'))]
    for rt in rts:
        for b in batch_sizes: cols.append((f'{name[rt]} b{b} (ms/crop)', lambda r, k=f'{rt}_b{b}': fmt(r[k], '{:.3g}')))
    for rt in rts:
        cols.append((f"speed-up {name[rt]} ({' / '.join(f'b{b}' for b in batch_sizes)})",
                     lambda r, rt=rt: ' / '.join(fmt(r[f'speedup_{rt}_b{b}'], '{:.1f}×') for b in batch_sizes)))
    if onnx:
        cols.append((f"ORT ÷ eager ({' / '.join(f'b{b}' for b in batch_sizes)})",
                     lambda r: ' / '.join(fmt(r[f'ort_vs_eager_b{b}'], '{:.1f}×') for b in batch_sizes)))
        cols.append(('ORT max rel err', lambda r: fmt(r['ort_err'], '{:.1e}')))
    out = ['| ' + ' | '.join(h for h, _ in cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
    out += ['| ' + ' | '.join(f(r) for _, f in cols) + ' |' for r in rows]
    return '\n'.join(out)

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('run', nargs='?', help='a run folder of adpd_train (demo, coco, mpii); default: the shipped teacher and student')
    p.add_argument('--models', help='comma-separated model names (create_pose_model), the teacher first, freshly initialised')
    p.add_argument('--image-size', help='input HxW, e.g. 256x192 (default: the run\'s, or the demo\'s 128x96)')
    p.add_argument('--threads', type=int, default=1, help='threads of torch and of ONNX Runtime (default 1)')
    p.add_argument('--runs', type=int, default=20, help='timed passes at batch 1 (a quarter, at least 3, at larger batches)')
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--joints', type=int, default=17, help='joints of named models')
    p.add_argument('--no-onnx', action='store_true', help='eager PyTorch only')
    a = p.parse_args(argv)
    try:
        if a.run and a.models: raise TrainError("give a run folder or --models, not both")
        bs = tuple(int(b) for b in a.batch_sizes.split(','))
        if a.models:
            names = [n.strip() for n in a.models.split(',') if n.strip()]
            models, size = {n: load_model(n, joints=a.joints) for n in names}, parse_size(BENCH['image_size'])
            notes = ['named models, freshly initialised']
        elif a.run: models, size, notes = run_models(a.run)
        else:
            t, s = shipped_model('teacher'), shipped_model('student')
            models = {f"teacher {t.shipped['model']} (shipped)": t, f"student {s.shipped['model']} (shipped)": s}
            size, notes = parse_size(BENCH['image_size']), []
        if a.image_size: size = parse_size(a.image_size)
    except (TrainError, ValueError, FileNotFoundError) as e:
        print(f"bench_students: {e}", file=sys.stderr); return 2
    w, h = size
    import onnxruntime as ort
    print(f"input {h}x{w} (HxW); {a.threads} thread{'s' if a.threads > 1 else ''} for torch {torch.__version__} and onnxruntime "
          f"{ort.__version__} (CPU); {os.cpu_count()} cores, {platform.processor() or platform.machine()}; latency: median of {a.runs} "
          f"passes at batch 1, {max(3, a.runs // 4)} at larger batches", flush=True)
    for n in notes: print(f"note: {n}")
    rows = compare_speed(models, size, bs, threads=a.threads, n_runs=a.runs, onnx=not a.no_onnx)
    print('\n' + table(rows, bs, not a.no_onnx), flush=True)
    return 0

if __name__ == '__main__': sys.exit(main())

"""The demo's members trained as one cohort against the same members trained as separate runs, side by side in one run.

    python bench/bench_cohort.py [--batches 40] [--bs 32] [--rounds 2] [--threads 2] [--out bench/results/cohort]

Both ways train the demo's five students (no KD, FPD, KL, DKD, ADPD; copies of the shipped student, the shipped
teacher) on the same `--batches` training batches of the demo's benchmark (same seed: the same samples and
augmentations): the cohort as one learner (one data stream, one teacher forward pass per batch), the separate runs
as five `distill_learner`/`pose_learner` runs one after the other (each loads the data and runs the teacher itself).
Training steps only (no validation); data loading included, in the main process as in the demo. The rounds alternate
the two ways; the medians are compared. It also checks that both ways end with the same students (max relative
difference over every weight), so the speed is not bought with different work.
Prints `ratio separate / cohort (wall time): <x>`; writes `results.csv` and `meta.json` to `--out`.
"""
import argparse, json, os, platform, statistics, subprocess, sys, time, warnings
from pathlib import Path
import torch
from fastai.callback.training import ShortEpochCallback
from fastai.torch_core import set_seed
from adpd.data import pose_dls
from adpd.learner import distill_learner, distill_cohort
from adpd.losses import KD_KINDS
from adpd.recipes import bench_data, shipped_model, model_from_name
from adpd.run import paper_adam
from adpd.train import POS_INT

def train(make_learner, dls_fn, batches, lr=5e-4):
    "Seed, build the learner on fresh loaders, train `batches` batches; (seconds, the learner)."
    set_seed(0)
    learn = make_learner(dls_fn())
    set_seed(1)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1, lr, cbs=ShortEpochCallback((batches - .5) / len(learn.dls.train), short_valid=True))
    return time.perf_counter() - t, learn

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batches', type=POS_INT, default=40); p.add_argument('--bs', type=POS_INT, default=32)
    p.add_argument('--rounds', type=POS_INT, default=2); p.add_argument('--threads', type=POS_INT, default=os.cpu_count())
    p.add_argument('--out', default='bench/results/cohort')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tr, va = bench_data(quiet=True)
    teacher, base = shipped_model('teacher'), shipped_model('student')
    arch, init = base.shipped['model'], base.state_dict()
    def student():
        m = model_from_name(arch); m.load_state_dict(init); return m
    dls_fn = lambda: pose_dls(tr, va, bs=a.bs)
    times = {'cohort': [], 'separate': []}
    for r in range(a.rounds):
        for way in (('cohort', 'separate') if r % 2 == 0 else ('separate', 'cohort')):
            if way == 'cohort':
                together = {k: student() for k in KD_KINDS}
                dt, _ = train(lambda d: distill_cohort(d, teacher, {k: (m, k) for k, m in together.items()}, opt_func=paper_adam), dls_fn, a.batches)
            else:
                alone, dt = {k: student() for k in KD_KINDS}, 0.
                for k, m in alone.items():
                    torch.manual_seed(7)        # the ADPD weight net: initialised alike both ways (below)
                    dt += train(lambda d: distill_learner(d, m, teacher, kd=None if k == 'none' else k, opt_func=paper_adam), dls_fn, a.batches)[0]
            times[way].append(dt)
            print(f"round {r + 1}, {way}: {dt:.1f}s", flush=True)
    # the same work: students after both ways (the last round's), weight net aside (initialised from different RNG states)
    diff = {k: max(float(((together[k].state_dict()[n].float() - v.float()).abs().max()) / (v.float().abs().max() + 1e-12))
                   for n, v in alone[k].state_dict().items() if v.is_floating_point()) for k in KD_KINDS if k != 'adpd'}
    med = {w: statistics.median(v) for w, v in times.items()}
    ratio = med['separate'] / med['cohort']
    imgs = a.batches * a.bs
    print(f"\n{len(KD_KINDS)} members ({', '.join(KD_KINDS)}), {a.batches} batches of {a.bs}, {a.threads} threads, median of {a.rounds} rounds")
    print(f"  cohort:   {med['cohort']:.1f}s ({med['cohort'] / imgs * 1e3:.1f} ms per training image)")
    print(f"  separate: {med['separate']:.1f}s ({med['separate'] / imgs * 1e3:.1f} ms per training image, all five runs)")
    print("  same students both ways (max relative weight difference, ADPD aside): " + ', '.join(f'{k} {v:.1e}' for k, v in diff.items()))
    print(f"ratio separate / cohort (wall time): {ratio:.2f}")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'results.csv').write_text('round,way,seconds\n' + ''.join(f'{i + 1},{w},{t:.2f}\n' for w, ts in times.items() for i, t in enumerate(ts)))
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    (out / 'meta.json').write_text(json.dumps(dict(command=' '.join(['python', *sys.argv]), commit=commit, ratio=round(ratio, 3),
        median_s=med, batches=a.batches, bs=a.bs, threads=a.threads, same_students=diff,
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())), indent=1) + '\n')

if __name__ == '__main__': main()

"""The paper's experiment at benchmark scale: every KD method distils the shipped teacher into its own copy of the already
trained shipped student over a whole schedule, as one cohort per seed (same start, same batches, one teacher pass).

    python bench/bench_paper.py [--out runs/bench-paper] [--results bench/results/paper] [--resume]
    python bench/bench_paper.py --smoke      # 40 images, one epoch, one seed: checks the script (runs/bench-paper-smoke)

The published protocol distils into a student that was trained on its own first (the official ADPD MPII config starts
its ShuffleNetV2 from the student's own checkpoint; FPD's best MPII row is its pretrained student) and trains for the
whole schedule. PROTOCOL — fixed in this docstring before the first run and the same for every method (no per-method
tuning; nothing was tuned on these seeds):

- data: the demo's benchmark (`adpd.recipes.BENCH`: synthetic COCO people, level easy, 3000 images, data seed 0):
  2700 training and 300 validation people, input 128x96, the demo's augmentation;
- teacher: the shipped teacher (fpn:resnet10t-d64, COCO AP 0.785 on these validation people), frozen;
- start: every member is a copy of the shipped student (fpn:mobilenetv3_small_050-d32, trained 30 epochs on its own,
  AP 0.233);
- members: `none` (no KD), `fpd`, `kl`, `dkd` (BiKD + KAD + NAD, weights 1, 1, 1), `adpd` (the kit's default: weight net
  on detached inputs, bounded weights), `adpd_published` (`faithful=True`: the published weight net and loss);
- schedule: 12 epochs of fastai's one-cycle at a peak lr of 5e-3 (the shipped student's own peak lr), Adam as the HRNet
  family uses it, batch 32, alpha 0.5, T 1, thr 0.5 — 12 epochs is 40% of the student's own 30: what three seeds of six
  members fit in the time this bench is allowed (≤ 100 min on 2 cores); the no-KD curve shows whether it has plateaued;
- seeds: 100, 101, 102 (not the demo's 0, 1, 2);
- evaluation: COCO AP with flip test on the 300 validation people after every epoch (the curves); the reported numbers
  are the last epoch's, never the best epoch's (choosing an epoch on the validation people would be tuning on them).

Writes to `--results`: `results.csv` (member, seed, final metrics), `curves.csv` (member, seed, epoch, AP, AP50, PCK,
train pose loss), `curves.png` (AP per epoch, mean ± std over seeds), `results.md` (the table, paired differences,
the conclusion's numbers), `meta.json` (the command, the commit, the machine, wall times).
"""
import argparse, csv, io, json, os, platform, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch
from adpd.data import pose_dls
from adpd.evaluate import coco_evaluate
from adpd.run import Runtime, TrainError, Run, say
from adpd.recipes import BENCH, SHIPPED, DemoCohort, bench_data, bench_card, shipped_model, model_from_name, paired_diffs, mean_std

MEMBERS = (('none', 'none'), ('fpd', 'fpd'), ('kl', 'kl'), ('dkd', 'dkd'), ('adpd', 'adpd'),
           ('adpd_published', {'kd': 'adpd', 'faithful': True}))
PROTOCOL = dict(epochs=12, lr=SHIPPED['student']['lr'], bs=32, seeds=(100, 101, 102), schedule='onecycle')
PAIRS = [(m, 'none') for m, _ in MEMBERS if m != 'none'] + [('adpd', 'dkd'), ('adpd', 'adpd_published')]
LABELS = dict(none='no KD', fpd='FPD', kl='KL', dkd='DKD (fixed weights)', adpd='ADPD (default)', adpd_published='ADPD (published)')

def run(out, resume, n_images, epochs, seeds, smoke):
    "Train one cohort per seed; rows of final metrics and per-epoch curves."
    tr, va = bench_data(n_images=n_images)
    teacher, base = shipped_model('teacher'), shipped_model('student')
    arch, init = base.shipped['model'], base.state_dict()
    def make_students():
        ms = {n: model_from_name(arch) for n, _ in MEMBERS}
        for m in ms.values(): m.load_state_dict(init)
        return ms
    evaluate = lambda m: coco_evaluate(m, va, flip=True, bs=64)
    rows, curves, times = [], [], {}
    for seed in seeds:
        c = DemoCohort(members=MEMBERS, epochs=epochs, lr=PROTOCOL['lr'], bs=PROTOCOL['bs'], seed=seed, schedule=PROTOCOL['schedule'],
                        n_images=n_images, teacher=teacher.shipped['sha256'], student=base.shipped['sha256'])
        t = time.time()
        r = Run(c, out / f'seed{seed}', Runtime(out=str(out), resume=resume, bar=False, command=' '.join(sys.argv)),
                lambda: pose_dls(tr, va, bs=c.bs), make_students, teacher, evaluate=evaluate, eval_every=1,
                name=f'paper cohort (seed {seed})', part=True, card=bench_card(arch, tr.spec, ' '.join(sys.argv))).train()
        times[seed] = dict(wall_s=round(time.time() - t, 1), train_s=r.train_time)
        last = r.history[-1]
        for n, m in r.members.items():
            rows.append(dict(kd=n, seed=seed, **{k: m.metrics[k] for k in ('AP', 'AP50', 'AP75', 'APm', 'AR')}, pck=last.get(f'{n}_pck'),
                             best_AP=m.best, best_epoch=(m.best_epoch or 0) + 1))
            curves += [dict(kd=n, seed=seed, epoch=h['epoch'] + 1, AP=h.get(f'{n}_AP'), AP50=h.get(f'{n}_AP50'), pck=h.get(f'{n}_pck'),
                            train_pose=h.get(f'{n}_train_pose')) for h in r.history]
        say(f"seed {seed}: " + ', '.join(f"{n} {r.members[n].metrics['AP']:.3f}" for n, _ in MEMBERS) + f" ({times[seed]['wall_s']:.0f}s)")
    return rows, curves, times, (teacher, base, tr, va)

def write_csv(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(rows[0])); w.writeheader(); w.writerows(rows)
    path.write_text(buf.getvalue())

def plot(curves, fname, epochs):
    "AP per epoch of each member, mean ± std over seeds (band), and the train pose loss."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 2, figsize=(13, 4.2))
    for i, (n, _) in enumerate(MEMBERS):
        for ax, k in zip(axs, ('AP', 'train_pose')):
            by = np.array([[next(c[k] for c in curves if c['kd'] == n and c['seed'] == s and c['epoch'] == e) for e in range(1, epochs + 1)]
                           for s in sorted({c['seed'] for c in curves})], dtype=float)
            mu, sd, ep = by.mean(0), by.std(0, ddof=1) if len(by) > 1 else 0 * by[0], np.arange(1, epochs + 1)
            ax.plot(ep, mu, c=f'C{i}', marker='.', label=LABELS[n]); ax.fill_between(ep, mu - sd, mu + sd, color=f'C{i}', alpha=.15)
    axs[0].set_title('validation COCO AP (flip test), mean ± std over seeds'); axs[1].set_title('train pose loss (MSE), epoch mean')
    axs[1].set_yscale('log')
    for ax in axs: ax.set_xlabel('epoch (from the shipped student)'); ax.grid(alpha=.3)
    axs[0].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(fname, dpi=90); plt.close(fig)

def report(rows, seeds, start_ap):
    "The markdown table and paired differences (AP, final epoch)."
    out = ['| member | AP | AP50 | PCK | best-epoch AP (not reported as the result) | seeds |', '|---|---|---|---|---|---|']
    for n, _ in MEMBERS:
        rs = [r for r in rows if r['kd'] == n]
        out.append(f"| {LABELS[n]} | {mean_std([r['AP'] for r in rs])} | {mean_std([r['AP50'] for r in rs])} | "
                   f"{mean_std([r['pck'] for r in rs])} | {mean_std([r['best_AP'] for r in rs])} | {len(rs)} |")
    out += ['', f"mean ± std (sample std) over seeds {', '.join(map(str, seeds))}; every member starts from the shipped student "
                 f"(AP {start_ap:.3f}).", '', '| paired difference (AP, final epoch) | mean ± std | per seed |', '|---|---|---|']
    for (x, y), d in paired_diffs(rows, PAIRS).items():
        out.append(f"| {LABELS[x]} − {LABELS[y]} | {mean_std(d, '{:+.4f}')} | {' '.join(f'{v:+.4f}' for v in d)} |")
    return '\n'.join(out)

def fail(msg) -> int:
    "One line on stderr naming the problem; exit status 2, as `adpd_train`."
    print(f"bench_paper: error: {msg}", file=sys.stderr, flush=True)
    return 2

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', help='run folder (default runs/bench-paper, runs/bench-paper-smoke with --smoke)')
    p.add_argument('--results', default='bench/results/paper')
    p.add_argument('--resume', action='store_true'); p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    t0 = time.time()
    git = lambda *args: subprocess.run(['git', *args], capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout.strip()
    commit, dirty = git('rev-parse', 'HEAD'), bool(git('status', '--porcelain', '--', 'adpd'))   # the code this run imports
    n_images, epochs, seeds = (40, 1, (100,)) if a.smoke else (BENCH['n_images'], PROTOCOL['epochs'], PROTOCOL['seeds'])
    out = Path(a.out or ('runs/bench-paper-smoke' if a.smoke else 'runs/bench-paper')).absolute()
    res = out / 'smoke-results' if a.smoke else Path(a.results)       # a smoke run never overwrites the committed results
    for flag, d in (('--out', out), ('--results', res)):
        if d.exists() and not d.is_dir(): return fail(f"{flag} {d}: exists and is not a folder")
    try: rows, curves, times, (teacher, base, tr, va) = run(out, a.resume, n_images, epochs, seeds, a.smoke)
    except TrainError as e: return fail(e)
    res.mkdir(parents=True, exist_ok=True)
    write_csv(res / 'results.csv', rows); write_csv(res / 'curves.csv', curves)
    plot(curves, res / 'curves.png', epochs)
    md = report(rows, seeds, base.shipped['metrics']['AP'])
    (res / 'results.md').write_text(md + '\n')
    meta = dict(command=' '.join(['python', *sys.argv]), commit=commit, package_modified_at_start=dirty, protocol=PROTOCOL,
                members=[n for n, _ in MEMBERS], machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"torch {torch.__version__}, {torch.get_num_threads()} threads", train_people=len(tr), valid_people=len(va),
                times=times, wall_s=round(time.time() - t0, 1), date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    (res / 'meta.json').write_text(json.dumps(meta, indent=1) + '\n')
    print('\n' + md + f"\n\nwritten: {res}/results.csv, curves.csv, curves.png, results.md, meta.json ({time.time() - t0:.0f}s)", flush=True)

if __name__ == '__main__': sys.exit(main())

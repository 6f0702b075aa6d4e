"""No KD vs FPD vs KL vs DKD vs ADPD over seeds, and ADPD's published behaviour beside the default, on the demo's benchmark.

    python bench/bench_distill.py [--seeds 5] [--epochs 2] [--variants [--variant-seeds 3]] [--out runs/bench-distill]

Part 1 is `adpd_train demo` with more seeds: the shipped student, fine-tuned from the same weights on the same batches
per seed (one cohort per seed), without KD and with each KD; the table has mean ± std over seeds and the paired
differences of every KD against no KD and ADPD − DKD, with their spread. Part 2 (`--variants`) runs ADPD alone under the settings that diverge:
the weight net's inputs not detached (`--no-detach`), with a tiny weight-net learning rate (`--weight-lr 1e-5`), with
unbounded weights (`--no-bound`, the literal objective), and the published loss (`--faithful`), and prints AP with its spread and what the logs recorded (weights, KD loss,
KD/pose gradient ratio). Every number is measured in this run; nothing is read from earlier runs.
"""
import argparse, csv, io, json, sys
from pathlib import Path
import numpy as np
from adpd.train import main
from adpd.recipes import kd_summary

def demo(out, seeds, epochs, *flags):
    "Run `adpd_train demo` into `out`; its per-seed rows from results.csv."
    args = ['demo', '--no-bar', '--out', str(out), '--seeds', ','.join(map(str, seeds)), '--epochs', str(epochs), *flags]
    if (out / 'results.csv').is_file(): args.append('--resume')
    if main(args) != 0: sys.exit(f"bench_distill: adpd_train {' '.join(args)} failed")
    return list(csv.DictReader(io.StringIO((out / 'results.csv').read_text())))

def stat(xs): return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, default=5)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--variants', action='store_true', help='also ADPD without detaching, with weight-lr 1e-5, and as published')
    p.add_argument('--variant-seeds', type=int, default=3, help='seeds of each ADPD variant')
    p.add_argument('--out', default='runs/bench-distill')
    a = p.parse_args()
    out, seeds = Path(a.out), list(range(a.seeds))
    print(f"== part 1: no KD / FPD / KL / DKD / ADPD, {a.seeds} seeds, {a.epochs} fine-tuning epochs", flush=True)
    demo(out / 'kinds', seeds, a.epochs)
    if a.variants:
        vseeds = list(range(a.variant_seeds))
        print(f"\n== part 2: ADPD variants, {a.variant_seeds} seeds", flush=True)
        table = ['| ADPD setting | AP | AP50 | PCK | what the logs recorded |', '|---|---|---|---|---|']
        for flags in ((), ('--no-detach',), ('--no-detach', '--weight-lr', '1e-5'), ('--no-bound', '--weight-lr', '1e-5'),
                      ('--no-bound', '--no-detach', '--weight-lr', '1e-5'), ('--faithful',)):
            name = ' '.join(flags) or 'default (detached, bounded)'
            d = out / ('adpd-' + ('-'.join(f.strip('-') for f in flags) or 'default'))
            rows = [r for r in demo(d, vseeds, a.epochs, '--kd', 'adpd', *flags) if r['kd'] == 'adpd']
            f = lambda k: [float(r[k]) for r in rows]
            hist = [json.loads((d / f'seed{s}' / 'results.json').read_text())['history'] for s in vseeds]   # one cohort per seed; ADPD's columns are adpd_*
            table.append(f"| {name} | {stat(f('AP'))} | {stat(f('AP50'))} | {stat(f('pck'))} | {kd_summary(hist, 'adpd_')} |")
        print('\n'.join(table))

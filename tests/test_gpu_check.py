"`bench/gpu_check.py`: its CPU smoke runs every section and prints finite numbers; its tolerance check can fail."
import importlib.util, math, os, re, subprocess, sys
from pathlib import Path
import pytest, torch

SCRIPT = Path(__file__).resolve().parents[1] / 'bench' / 'gpu_check.py'

def load():
    spec = importlib.util.spec_from_file_location('bench_gpu_check', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod              # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod

gc = load()

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    "The CPU smoke, once per module, in a subprocess (as CI and a user run it): `(returncode, stdout)`."
    data = tmp_path_factory.mktemp('gpu-check-data')
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''} if not torch.cuda.is_available() else dict(os.environ)
    p = subprocess.run([sys.executable, str(SCRIPT), '--cpu-smoke', '--data', str(data)], capture_output=True, text=True,
                       timeout=150, env=env, cwd=SCRIPT.parents[1])
    return p.returncode, p.stdout + ('\n' + p.stderr if p.returncode else '')

def test_smoke_runs_every_section(smoke):
    rc, out = smoke
    assert rc == 0, out
    assert 'CPU smoke only' in out
    if not torch.cuda.is_available(): assert gc.CPU_SMOKE_LINE in out
    for h in gc.SECTIONS: assert h in out, f'missing section {h!r}'
    summary = [l for l in out.splitlines() if l.startswith('summary: ')]
    assert len(summary) == 1 and out.rstrip().splitlines()[-1] == summary[0]
    assert 'correctness PASS (6 modes)' in summary[0] and 'errors' not in summary[0] and 'cohort PASS' in summary[0]

def test_smoke_cohort_runs_the_teacher_once_per_batch_without_autograd(smoke):
    rc, out = smoke
    line = next(l for l in out.splitlines() if l.strip().startswith('training steps'))
    steps, fwd = (int(v) for v in re.search(r'training steps (\d+), teacher forwards (\d+)', line).groups())
    assert steps == fwd >= 2 and 'once per batch: yes' in line and 'without autograd: yes' in line and 'losses finite: yes' in line, line

def rows_of(out, header):
    "The data rows of the first table after the line starting with `header`."
    lines = out.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(header))
    j = next(j for j in range(i, len(lines)) if set(lines[j].replace(' ', '')) == {'-'})   # the rule under the column names
    cols = lines[j - 1].split()
    rows = []
    for l in lines[j + 1:]:
        if not l.strip() or l.startswith(('(', 'per-step', 'teacher unchanged')): break
        rows.append(dict(zip(cols, l.split())))
    return rows

def test_smoke_correctness_numbers_are_finite(smoke):
    rc, out = smoke
    rows = rows_of(out, gc.SECTIONS[1])
    assert [r['mode'] for r in rows] == list(gc.MODES)
    for r in rows:
        assert r['check'] == 'PASS' and r['finite'] == 'yes', r
        assert math.isfinite(float(r['loss1'])) and math.isfinite(float(r['kd1'])) and float(r['loss1']) > 0
    assert 'teacher unchanged after all modes (frozen, BN statistics included): yes' in out
    steps = re.search(r'per-step losses: (.*)', out).group(1)
    vals = [float(v) for part in steps.split(' | ') for v in part.split(': ')[1].split()]
    assert len(vals) == 2 * len(gc.MODES) and all(math.isfinite(v) for v in vals)

def test_smoke_throughput_rows(smoke):
    rc, out = smoke
    rows = rows_of(out, gc.SECTIONS[2])
    assert {(r['kd'], r['loader']) for r in rows} == {(k, l) for k in ('none', 'fpd', 'adpd') for l in ('included', 'excluded')}
    for r in rows:
        assert float(r['img_s']) > 0 and float(r['ms_step']) > 0, r
        if r['kd'] != 'none': assert 0 < float(r['teacher_pct']) < 100, r
    var = rows_of(out, gc.SECTIONS[3])
    assert any(r['variant'] == 'channels_last' and float(r['img_s']) > 0 for r in var)
    assert 'torch.compile' in out and 'skipped' in out

def test_tolerance_check_can_fail():
    assert gc.within_tol(1.0004, 1.0, 1e-3)[0]
    ok, rel = gc.within_tol(1.1, 1.0, 1e-2)            # a deliberately wrong value: 10% off, 1% allowed
    assert not ok and rel == pytest.approx(.1)
    assert not gc.within_tol(0.9, 1.0, 5e-2)[0]          # on either side
    assert not gc.within_tol(float('nan'), 1.0, 1.)[0] and not gc.within_tol(1.0, float('inf'), 1.)[0]
    assert not gc.within_tol(None, 1.0, 1.)[0]
    assert gc.within_tol(0., 0., 0.)[0] and not gc.within_tol(1e-9, 0., 1e3)[0]
    assert gc.within_tol(1e-9, 0., 0., atol=1e-8)[0]
    for p in ('fp32', 'fp16', 'bf16'): assert 0 < gc.TOL[p]['loss'] <= gc.TOL[p]['kd'] < 1

def test_a_wrong_loss_fails_the_check(monkeypatch, tmp_path):
    "A precision mode whose loss is off (here: a tolerance of zero for bf16, which always rounds) makes the script exit 1."
    monkeypatch.setitem(gc.TOL, 'bf16', dict(loss=0., kd=0.))
    monkeypatch.setattr(sys, 'argv', ['gpu_check.py'])
    rc = gc.main(['--cpu-smoke', '--skip', 'throughput,variants', '--data', str(tmp_path)])
    assert rc == 1

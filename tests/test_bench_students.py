"Student speed: `bench/bench_students.py` end to end (named models, run folders), its GFLOPs, its ONNX Runtime path, the demo's latency columns."
import importlib.util, re, subprocess, sys
from pathlib import Path
import pytest, torch
from torch.utils.flop_counter import FlopCounterMode
from adpd.models import create_pose_model, measure_latency
from adpd.speed import compare_speed
from adpd.run import load_checkpoint
from adpd.train import main

ROOT = Path(__file__).parents[1]
BENCH = ROOT / 'bench' / 'bench_students.py'
spec = importlib.util.spec_from_file_location('bench_students', BENCH)
bs_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(bs_mod)
QUICK = ['--models', 'tiny-w16,tiny-w8', '--image-size', '64x48', '--runs', '3']

def md_table(text):
    "The header and rows (lists of cells) of the first markdown table in `text`."
    ls = [l for l in text.splitlines() if l.startswith('|')]
    cells = lambda l: [c.strip() for c in l.strip().strip('|').split('|')]
    return cells(ls[0]), [cells(l) for l in ls[2:]]

def test_bench_end_to_end_prints_every_column():
    r = subprocess.run([sys.executable, str(BENCH), *QUICK], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    head, rows = md_table(r.stdout)
    assert head == ['model', 'params (M)', 'GFLOPs', 'eager b1 (ms/crop)', 'eager b32 (ms/crop)', 'ORT b1 (ms/crop)', 'ORT b32 (ms/crop)',
                    'speed-up eager (b1 / b32)', 'speed-up ORT (b1 / b32)', 'ORT ÷ eager (b1 / b32)', 'ORT max rel err'], head
    assert [row[0] for row in rows] == ['tiny-w16', 'tiny-w8']
    for row in rows:
        assert all(row), row                                               # every cell filled
        assert all(float(v) > 0 for v in row[1:7]), row
        for c in row[7:10]: assert re.fullmatch(r'\d+\.\d× / \d+\.\d×', c), c
    assert rows[0][7] == rows[0][8] == '1.0× / 1.0×'                       # the first model is the reference
    assert '1 thread for torch' in r.stdout and 'median of 3 passes' in r.stdout

def test_gflops_equal_flop_counter_and_ort_runs_the_exported_model(monkeypatch):
    import onnxruntime as ort
    calls, run = [], ort.InferenceSession.run
    def counted(self, out_names, feeds, *a, **kw):
        calls.append(feeds['input'].shape[0]); return run(self, out_names, feeds, *a, **kw)
    monkeypatch.setattr(ort.InferenceSession, 'run', counted)
    models = {n: create_pose_model(n) for n in ('tiny-w16', 'tiny-w8')}
    rows = compare_speed(models, (48, 64), (1, 4), threads=1, n_runs=3)
    for r, m in zip(rows, models.values()):
        with FlopCounterMode(display=False) as fc: m.eval()(torch.randn(1, 3, 64, 48))
        assert r['gflops'] * 1e9 == pytest.approx(fc.get_total_flops()) and r['gmacs'] == pytest.approx(r['gflops'] / 2)
        assert r['ort_err'] < 1e-4
    # per model: one checked batch of 2, then warmup + 3 timed passes at batch 1, warmup + 3 at batch 4 (interleaved rounds)
    assert calls.count(2) == 2 and calls.count(1) >= 2 * (3 + 2) and calls.count(4) >= 2 * (3 + 1), calls
    assert rows[1]['speedup_ort_b1'] == pytest.approx(rows[0]['ort_b1'] / rows[1]['ort_b1'])
    assert rows[1]['ort_vs_eager_b4'] == pytest.approx(rows[1]['eager_b4'] / rows[1]['ort_b4'])

@pytest.mark.parametrize('scale', [1., 1e-10])    # 1e-10: the scale of a freshly initialised HRNet's heatmaps
def test_a_wrong_exported_model_is_refused(monkeypatch, scale):
    import adpd.export
    m = create_pose_model('tiny-w8')
    with torch.no_grad():
        for p in m.final_layer.parameters(): p.mul_(scale)
    compare_speed({'tiny-w8': m}, (48, 64), (1,), n_runs=1)                   # the right model passes the check
    fwd = adpd.export.ExportedModel.forward
    monkeypatch.setattr(adpd.export.ExportedModel, 'forward', lambda self, x: fwd(self, x) * 1.01)   # 1% off
    with pytest.raises(ValueError, match='ONNX Runtime differs from eager PyTorch'):
        compare_speed({'tiny-w8': m}, (48, 64), (1,), n_runs=1)

def test_measure_latency_median_min_and_threads():
    m = create_pose_model('tiny-w8')
    n0 = torch.get_num_threads()
    ms = measure_latency(m, (48, 64), 2, n_runs=5, warmup=0, threads=1, stat=None)
    assert len(ms) == 5 and torch.get_num_threads() == n0 and m.training     # threads and mode restored
    assert all(v > 0 for v in ms) and measure_latency(m, (48, 64), n_runs=3, stat='min') > 0   # values are not asserted: timing is not a test
    with pytest.raises(ValueError, match="'median', 'min' or None"): measure_latency(m, (48, 64), stat='mean')
    frozen = torch.jit.freeze(torch.jit.trace(create_pose_model('tiny-w8').eval(), torch.randn(1, 3, 64, 48)))
    assert measure_latency(frozen, (48, 64), n_runs=2) > 0                    # a frozen TorchScript module has no train/eval mode

@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    "A quick demo (one seed, no KD), into a fresh folder: its printed table comes from `_demo_report`."
    d = tmp_path_factory.mktemp('demo')
    assert main(['demo', '--quick', '--no-bar', '--kd', 'none', '--seeds', '0', '--threads', '1',
                 '--data-root', str(d / 'data'), '--out', str(d / 'demo')]) == 0
    return d / 'demo'

def test_demo_table_has_the_latency_columns(demo_run):
    text = (demo_run / 'results.md').read_text()
    head, rows = md_table(text)
    i = head.index('latency, ms/crop (b1 / b32)')
    assert head[i - 1] == 'speed-up (b1 / b32)'
    lat = [tuple(map(float, r[i].split(' / '))) for r in rows]
    sp = [tuple(float(v.rstrip('×')) for v in r[i - 1].split(' / ')) for r in rows]
    assert len(rows) == 3 and lat[1] == lat[2] and all(a > 0 for l in lat for a in l)
    for k in (0, 1):   # the speed-up is the teacher's latency over the student's (within the rounding of the printed values)
        assert sp[1][k] == pytest.approx(lat[0][k] / lat[1][k], rel=.06, abs=.06), (sp, lat)
    assert 'eager PyTorch on the CPU' in text and 'with 1 torch thread' in text

def test_bench_on_a_demo_run_folder(demo_run, capsys):
    models, size, notes = bs_mod.run_models(demo_run)
    (tn, t), (sn, s) = models.items()
    assert tn.startswith('teacher fpn:resnet10t-d64') and 'seed0/none' in sn and size == (96, 128)
    final = load_checkpoint(demo_run / 'seed0' / 'none' / 'final.pth')
    assert all(torch.equal(v, final[k]) for k, v in s.state_dict().items())      # the run's weights, not the shipped ones
    assert bs_mod.main([str(demo_run), '--runs', '2', '--batch-sizes', '1', '--image-size', '64x48']) == 0
    head, rows = md_table(capsys.readouterr().out)
    assert len(rows) == 2 and rows[1][0] == sn and 'ORT b1 (ms/crop)' in head

def test_bench_on_a_coco_run_folder(finished, capsys):
    models, size, notes = bs_mod.run_models(finished)
    assert list(models) == ['teacher tiny-w16', 'student tiny-w8'] and size == (48, 64) and not notes
    final = load_checkpoint(finished / 'final.pth')
    assert all(torch.equal(v, final[k]) for k, v in models['student tiny-w8'].state_dict().items())
    assert bs_mod.main([str(finished), '--runs', '2', '--batch-sizes', '1,2', '--no-onnx']) == 0
    head, rows = md_table(capsys.readouterr().out)
    assert [r[0] for r in rows] == list(models) and 'ORT b1 (ms/crop)' not in head and 'eager b2 (ms/crop)' in head

def test_bad_arguments_fail_with_a_message(tmp_path, capsys):
    assert bs_mod.main([str(tmp_path)]) == 2 and 'no config.json' in capsys.readouterr().err
    assert bs_mod.main([str(tmp_path), '--models', 'tiny']) == 2 and 'not both' in capsys.readouterr().err
    assert bs_mod.main(['--models', 'nonesuch']) == 2 and 'nonesuch' in capsys.readouterr().err

"The shipped teacher and student: files, sha256, model cards, size, recorded AP, heatmaps that peak at the joints; the benchmark data."
import json, shutil, warnings
from pathlib import Path
import numpy as np, pytest, torch
import adpd.recipes
from adpd.recipes import WEIGHTS, SHIPPED, BENCH, shipped_model, bench_data
from adpd.run import TrainError
from adpd.core import n_params, parse_size, sha256, UserError
from adpd.data import SkipWarning
from adpd.evaluate import coco_evaluate
from adpd.models import model_stats
from adpd.data import pose_dls

ROLES = ('teacher', 'student')

def test_shipped_files_sizes_and_sha256():
    files = [WEIGHTS / f'{r}{ext}' for r in ROLES for ext in ('.pth', '.json', '_log.csv')]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"shipped files missing: {missing}"
    total = sum(f.stat().st_size for f in WEIGHTS.iterdir() if f.is_file())
    assert total <= 12e6, f"shipped weights take {total / 1e6:.1f} MB (> 12 MB)"
    for r in ROLES:
        info = json.loads((WEIGHTS / f'{r}.json').read_text())
        assert info['sha256'] == sha256(WEIGHTS / f'{r}.pth') and info['model'] == SHIPPED[r]['model']
        assert info['config']['epochs'] == SHIPPED[r]['epochs'] and info['config']['level'] == BENCH['level']
        log = (WEIGHTS / f'{r}_log.csv').read_text().splitlines()
        assert len(log) == info['config']['epochs'] + 1                 # one row per epoch, all of them

def test_shipped_models_carry_their_card():
    "Each shipped model's record holds its model card: the architecture, the benchmark's input size, synthetic data, its metrics."
    w, h = parse_size(BENCH['image_size'])
    for r in ROLES:
        info = json.loads((WEIGHTS / f'{r}.json').read_text())
        card = info['card']
        assert card['arch'] == info['model'] and tuple(card['image_size']) == (w, h) and card['data']['synthetic'] is True
        assert card['metrics']['AP'] == info['metrics']['AP'] and f'--train-{r}' in card['command']

def test_a_changed_file_is_refused_with_its_name(tmp_path):
    for f in WEIGHTS.iterdir(): shutil.copy(f, tmp_path / f.name)
    b = bytearray((tmp_path / 'teacher.pth').read_bytes()); b[len(b) // 2] ^= 0xff
    (tmp_path / 'teacher.pth').write_bytes(bytes(b))
    with pytest.raises(TrainError, match=r'teacher\.pth.*sha256'): shipped_model('teacher', tmp_path)
    (tmp_path / 'student.json').unlink()
    with pytest.raises(TrainError, match='student.json: no shipped student'): shipped_model('student', tmp_path)

@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    "The benchmark as the command rebuilds it (in a fresh folder)."
    return bench_data(tmp_path_factory.mktemp('bench'), quiet=True)

@pytest.fixture(scope='module')
def teacher(): return shipped_model('teacher')

def test_shipped_teacher_reaches_its_recorded_ap(bench, teacher):
    tr, va = bench
    ap = coco_evaluate(teacher, va, flip=True, bs=64)['AP']
    rec = teacher.shipped['metrics']['AP']
    assert rec >= .5, f"recorded teacher AP {rec} < 0.5"
    assert abs(ap - rec) <= .02, (ap, rec)

def test_teacher_heatmaps_peak_at_the_joints(bench, teacher):
    "For >= 80% of the visible validation joints, the teacher's argmax is within 2 heatmap pixels of the target's peak."
    tr, va = bench
    hits = n = 0
    with torch.no_grad():
        for x, hm, tw in pose_dls(tr, va, bs=64).valid:
            out = teacher(x)
            am = lambda h: (lambda i: torch.stack([i % h.shape[-1], i // h.shape[-1]], -1).float())(h.flatten(2).argmax(-1))
            ok = tw.reshape(out.shape[:2]) > 0
            hits += int(((am(out) - am(hm)).norm(dim=-1) <= 2)[ok].sum()); n += int(ok.sum())
    assert n > 1000 and hits / n >= .8, (hits, n)

def test_student_is_smaller_and_cheaper(teacher):
    s = shipped_model('student')
    assert n_params(teacher) >= 4 * n_params(s)
    w, h = parse_size(BENCH['image_size'])
    st, ss = (model_stats(m, (w, h), latency=False) for m in (teacher, s))
    assert st['gmacs'] >= 3 * ss['gmacs'], (st, ss)    # the speed itself is measured by the demo and bench/bench_distill.py

def test_parse_size_refuses_empty_and_odd_sizes():
    assert parse_size('256x192') == (192, 256) and parse_size(' 64 × 48 ') == (48, 64)
    for bad in ('0x0', '0x192', '255x192', 'abc'):
        with pytest.raises(UserError, match='size'): parse_size(bad)

def test_bench_data_hides_only_the_counted_skips(tmp_path, monkeypatch):
    "The benchmark's expected skips (`SkipWarning`) are not shown; any other warning of the datasets is."
    def dataset(*a, **k):
        warnings.warn('skipped 3 people (no labelled joint: 3)', SkipWarning)
        warnings.warn('something else', UserWarning)
        return object()
    monkeypatch.setattr(adpd.recipes, 'CocoKeypoints', dataset)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always')
        bench_data(tmp_path, n_images=16, quiet=True)
    msgs = [str(w.message) for w in got]
    assert msgs.count('something else') == 2 and not any('skipped' in m for m in msgs), msgs

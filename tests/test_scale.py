"The fast build path of `CocoKeypoints` at a small scale: the table and file-check caches, and where they live."
import json, os, shutil, stat, warnings
import numpy as np, pytest
import adpd.data as D
from adpd.data import CocoKeypoints, SkipWarning, cache_dir

ANN, DET = 'person_keypoints_tiny.json', 'person_detection_results_tiny.json'

@pytest.fixture
def root(tmp_path, coco_tiny, monkeypatch):
    "A copy of coco_tiny (its own files, so they can change) and a cache of its own."
    r = tmp_path / 'data'; shutil.copytree(coco_tiny, r)
    monkeypatch.setenv('ADPD_CACHE', str(tmp_path / 'cache'))
    return r

def build(r, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SkipWarning)
        return CocoKeypoints(r / ANN, r / 'images', **kw)

def same(a, b):
    for f in ('image_id', 'file', 'img_wh', 'center', 'scale', 'joints', 'score', 'area', 'box'):
        assert (getattr(a.db, f) == getattr(b.db, f)).all(), f
    assert a.skips == b.skips

def listing(r): return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in r.rglob('*'))

def test_cache_dir_is_the_users(monkeypatch, tmp_path):
    monkeypatch.setenv('ADPD_CACHE', str(tmp_path / 'c'))
    assert cache_dir() == tmp_path / 'c'
    monkeypatch.delenv('ADPD_CACHE'); monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
    assert cache_dir() == tmp_path / 'x' / 'adpd'

@pytest.mark.parametrize('det', [False, True])
def test_a_second_build_hits_the_cache(root, monkeypatch, det):
    kw = dict(train=not det, det_file=root / DET if det else None)
    first = build(root, **kw)
    assert list((cache_dir() / 'coco-tables').glob('*.npz')) and list((cache_dir() / 'file-checks').glob('*.json'))
    def boom(*a, **k): raise AssertionError('parsed or checked again')
    monkeypatch.setattr(D, 'read_coco_json', boom); monkeypatch.setattr(D, 'image_file_problem', boom)
    second = build(root, **kw)
    same(first, second)
    monkeypatch.undo(); monkeypatch.setenv('ADPD_CACHE', str(cache_dir()))
    assert second.coco is not None and len(second.coco.getImgIds()) == 4     # parsed on first use

def test_a_changed_file_is_checked_again(root, monkeypatch):
    build(root)
    imgs = sorted((root / 'images').glob('*.jpg'))
    b = imgs[0].read_bytes(); imgs[0].write_bytes(b[:len(b) // 2])           # size changes: now truncated
    os.utime(imgs[1], ns=(imgs[1].stat().st_atime_ns, imgs[1].stat().st_mtime_ns + 10**9))   # mtime only
    seen, check = [], D.image_file_problem
    monkeypatch.setattr(D, 'image_file_problem', lambda p: seen.append(p.name) or check(p))
    ds = build(root)
    assert sorted(seen) == sorted([imgs[0].name, imgs[1].name])
    assert ds.skips['corrupt or truncated image file'] >= 1 and imgs[0].name not in {os.path.basename(f) for f in ds.db.file}

def test_a_changed_annotation_file_is_read_again(root):
    a = build(root)
    d = json.loads((root / ANN).read_text()); d['annotations'][0]['iscrowd'] = 1; (root / ANN).write_text(json.dumps(d))
    b = build(root)
    assert len(b) == len(a) - 1 and b.skips['crowd'] == 1

def test_nothing_is_written_in_a_read_only_data_root(root, tmp_path):
    before = listing(root)
    for p in [root, *root.rglob('*')]: p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        a, b = build(root), build(root, train=False, det_file=root / DET)
        assert len(a) == 12 and len(b) == 118 and listing(root) == before
        assert str(cache_dir()).startswith(str(tmp_path / 'cache'))
    finally:
        for p in [root, *root.rglob('*')]: p.chmod(p.stat().st_mode | stat.S_IWUSR)

def test_an_unwritable_cache_only_costs_time(root, monkeypatch, tmp_path):
    (tmp_path / 'file').write_text('')
    monkeypatch.setenv('ADPD_CACHE', str(tmp_path / 'file' / 'cache'))       # under a file: nothing can be created
    a, b = build(root), build(root)
    same(a, b)

def test_a_file_replaced_with_its_size_and_mtime_kept_is_read_again(root):
    "`cp -p`/`rsync -a` restore the mtime: the change time and inode still tell the versions apart."
    f = root / ANN
    d = json.loads(f.read_text())
    f.write_text(json.dumps(d))
    st, first = f.stat(), build(root)
    a = next(a for a in d['annotations'] if a.get('num_keypoints', 0) > 0 and a.get('iscrowd') == 0)
    a['iscrowd'] = 1                                                          # same length: 0 → 1
    tmp = root / 'new.json'; tmp.write_text(json.dumps(d)); os.replace(tmp, f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert len(build(root)) == len(first) - 1

def test_numpy_thresholds_and_a_stale_index(root):
    "A numpy `det_thr` keys the cache like a float; an evaluation index parsed after its json changed is refused, not mixed."
    a = build(root, train=False, det_file=root / DET, det_thr=np.float32(.5))
    assert len(a) == len(build(root, train=False, det_file=root / DET, det_thr=.5))
    build(root, train=False)
    b = build(root, train=False)                                             # a warm cache: the index is parsed on first use
    (root / ANN).write_text((root / ANN).read_text() + ' ')
    with pytest.raises(D.UserError, match='changed since this dataset was built'): b.coco

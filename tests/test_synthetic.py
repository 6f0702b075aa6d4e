"The embedded default dataset: COCO validity, annotation semantics, determinism, caching, interrupted builds."
import contextlib, io, json, os, time
import cv2, numpy as np, pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import adpd.synthetic as synthetic
from adpd.core import COCO17
from adpd.synthetic import make_synthetic_coco, render_synthetic_image

N, W, H = 30, 320, 256

def quiet_coco(f):
    with contextlib.redirect_stdout(io.StringIO()): return COCO(str(f))

def all_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file() and p.name != '.synthetic.lock'}

@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth') / 'd'
    return root, make_synthetic_coco(root, n_images=N, seed=0)

@pytest.fixture(scope='module')
def anns(ds):
    _, paths = ds
    return {s: json.loads(paths[s][0].read_text()) for s in ('train', 'val')}

def test_layout_and_pycocotools(ds):
    root, paths = ds
    assert set(paths) == {'train', 'val'}
    for s, (ann, img_dir) in paths.items():
        assert ann == root / 'annotations' / f'person_keypoints_{s}.json' and img_dir == root / 'images' / s
        coco = quiet_coco(ann)
        cat = coco.loadCats(1)[0]
        assert cat['name'] == 'person' and cat['keypoints'] == list(COCO17.names) and len(cat['keypoints']) == 17
        assert cat['skeleton'] == [[a + 1, b + 1] for a, b in COCO17.skeleton]
        assert sorted(p.name for p in img_dir.glob('*.jpg')) == sorted(i['file_name'] for i in coco.dataset['images'])

def test_images_and_annotations_well_formed(ds, anns):
    _, paths = ds
    for s, d in anns.items():
        imgs = {i['id']: i for i in d['images']}
        for i in d['images']:
            assert set(i) >= {'id', 'file_name', 'width', 'height'} and type(i['id']) is int
            assert (i['width'], i['height']) == (W, H)
        for i in d['images'][:3]:
            assert cv2.imread(str(paths[s][1] / i['file_name'])).shape == (H, W, 3)
        for a in d['annotations']:
            assert set(a) >= {'id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd', 'keypoints', 'num_keypoints', 'segmentation'}
            assert type(a['id']) is int and a['image_id'] in imgs and a['category_id'] == 1 and a['iscrowd'] == 0
            assert len(a['bbox']) == 4 and all(isinstance(v, (int, float)) for v in a['bbox'])
            x, y, w, h = a['bbox']
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6
            assert isinstance(a['area'], (int, float)) and synthetic.MIN_AREA <= a['area'] <= w * h + 1e-6
            kp = a['keypoints']
            assert len(kp) == 51 and all(isinstance(v, (int, float)) for v in kp)
            v = kp[2::3]
            assert all(type(x) is int and x in (0, 1, 2) for x in v)
            assert a['num_keypoints'] == sum(x > 0 for x in v)
            seg = a['segmentation']
            assert isinstance(seg, list) and seg and all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
            assert all(kp[3 * j] >= x - 1e-6 and kp[3 * j] <= x + w + 1e-6 for j in range(17) if v[j] > 0)   # bbox holds labelled joints
    ids = [a['id'] for d in anns.values() for a in d['annotations']]
    assert len(ids) == len(set(ids))

def test_visibility_semantics(anns):
    kp = np.array([a['keypoints'] for d in anns.values() for a in d['annotations']], float).reshape(-1, 17, 3)
    v = kp[..., 2]
    assert (kp[v == 0][:, :2] == 0).all()                                   # v=0: at (0, 0), as in COCO
    on = kp[v > 0]
    assert ((on[:, 0] >= 0) & (on[:, 0] <= W - 1) & (on[:, 1] >= 0) & (on[:, 1] <= H - 1)).all()
    assert (v == 1).mean() > .05 and (v == 2).mean() > .4                   # occlusion happens, most joints show
    assert (v == 0).any()                                                   # some people are cut by the border

def test_area_is_visible_mask_and_joints_show_the_person():
    for i in range(20):
        img, people = render_synthetic_image([7, i])
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        hs = [q['height'] for q in people]
        assert hs == sorted(hs) and len(set(hs)) == len(hs)                 # drawn far (small) to near (large)
        masks = np.stack([q['mask'] for q in people])
        assert masks.sum(0).max() <= 1                                      # a pixel belongs to one person at most
        for q in people:
            kp = q['keypoints']
            vis = kp[:, 2] == 2
            assert q['mask'][np.round(kp[vis, 1]).astype(int), np.round(kp[vis, 0]).astype(int)].all()
            assert q['mask'].sum() <= q['full_area']

def test_frontal_left_is_image_right(anns):
    "An upright person whose nose shows faces the camera: the left shoulder is on the image's right."
    kp = np.array([a['keypoints'] for d in anns.values() for a in d['annotations']], float).reshape(-1, 17, 3)
    ok = (kp[:, 0, 2] == 2) & (kp[:, [5, 6, 11, 12], 2] > 0).all(1)
    axis = kp[:, [11, 12], :2].mean(1) - kp[:, [5, 6], :2].mean(1)
    upright = axis[:, 1] > np.abs(axis[:, 0]) * 1.7                         # within 30 degrees of straight down
    sel = ok & upright
    assert sel.sum() >= 5
    assert (kp[sel, 5, 0] > kp[sel, 6, 0]).all()

def test_split(ds, anns):
    tr, va = ({i['id'] for i in anns[s]['images']} for s in ('train', 'val'))
    assert not tr & va and len(tr | va) == N and len(va) == round(N * .2)
    for s, ids in (('train', tr), ('val', va)):
        assert {a['image_id'] for a in anns[s]['annotations']} <= ids

def test_sizes_vary(tmp_path):
    paths = make_synthetic_coco(tmp_path / 'd', n_images=60, seed=3)
    a = json.loads(paths['train'][0].read_text())['annotations']
    hs = np.array([x['bbox'][3] for x in a])
    assert hs.min() < 60 and hs.max() > 150
    per_image = np.bincount([x['image_id'] for x in a])
    assert per_image.max() >= 3

def test_deterministic_per_seed(ds, tmp_path):
    root, _ = ds
    make_synthetic_coco(tmp_path / 'same', n_images=N, seed=0)
    make_synthetic_coco(tmp_path / 'other', n_images=N, seed=1)
    a, b, c = all_files(root), all_files(tmp_path / 'same'), all_files(tmp_path / 'other')
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)            # byte-identical json and JPEGs
    for s in ('train', 'val'): assert a[f'annotations/person_keypoints_{s}.json'] != c[f'annotations/person_keypoints_{s}.json']
    shared = [k for k in a if k.endswith('.jpg') and k in c]
    assert shared and all(a[k] != c[k] for k in shared)

def test_cache_hit_is_fast_and_writes_nothing(ds):
    root, paths = ds
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob('*') if p.is_file() and p.name != '.synthetic.lock'}
    t = time.perf_counter()
    again = make_synthetic_coco(root, n_images=N, seed=0)
    assert time.perf_counter() - t < .5
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert not list(root.glob('.build-*'))

def test_force_and_new_params_rebuild(tmp_path):
    p = make_synthetic_coco(tmp_path, n_images=6, seed=0)
    m = p['train'][0].stat().st_mtime_ns
    time.sleep(.01)
    make_synthetic_coco(tmp_path, n_images=6, seed=0, force=True)
    assert p['train'][0].stat().st_mtime_ns != m
    make_synthetic_coco(tmp_path, n_images=10, seed=0, val_frac=.5)
    n = [len(list(p[s][1].glob('*.jpg'))) for s in ('train', 'val')]
    assert n == [5, 5]
    assert json.loads((tmp_path / 'synthetic_meta.json').read_text())['n_images'] == 10

def test_interrupted_build_is_not_taken_as_done(tmp_path, monkeypatch):
    good = make_synthetic_coco(tmp_path, n_images=6, seed=0)
    before = all_files(tmp_path)
    # stopped while rendering: the old dataset stays complete and cached
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(synthetic, '_render_all', boom)
    with pytest.raises(KeyboardInterrupt): make_synthetic_coco(tmp_path, n_images=6, seed=0, force=True)
    monkeypatch.undo()
    assert all_files(tmp_path) == before and not list(tmp_path.glob('.build-*'))
    # stopped while swapping files in: no meta, so the next call rebuilds
    real, calls = os.replace, []
    def flaky(a, b):
        calls.append(b)
        if len(calls) == 2: raise KeyboardInterrupt
        return real(a, b)
    monkeypatch.setattr(synthetic.os, 'replace', flaky)
    with pytest.raises(KeyboardInterrupt): make_synthetic_coco(tmp_path, n_images=6, seed=0, force=True)
    monkeypatch.undo()
    assert not (tmp_path / 'synthetic_meta.json').exists()
    assert make_synthetic_coco(tmp_path, n_images=6, seed=0) == good
    assert all_files(tmp_path) == before

def test_refuses_foreign_folder_and_bad_args(tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'person_keypoints_train.json').write_text('{"images": []}')
    with pytest.raises(FileExistsError, match='not overwriting'): make_synthetic_coco(tmp_path, n_images=4)
    for bad in (dict(n_images=0), dict(seed=-1), dict(val_frac=1.), dict(image_size=(32, 32))):
        with pytest.raises(ValueError, match='make_synthetic_coco'): make_synthetic_coco(tmp_path / 'x', **{'n_images': 4, **bad})

def test_gt_against_itself_gives_ap_1(ds):
    _, paths = ds
    for s in ('train', 'val'):
        gt = quiet_coco(paths[s][0])
        res = [dict(image_id=a['image_id'], category_id=1, keypoints=a['keypoints'], score=1.)
               for a in gt.loadAnns(gt.getAnnIds()) if a['num_keypoints'] > 0]
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(res), 'keypoints')
            ev.evaluate(); ev.accumulate(); ev.summarize()
        assert ev.stats[0] == pytest.approx(1.) and ev.stats[5] == pytest.approx(1.)   # AP and AR


def test_synthetic_gt_scores_ap_one_through_the_kit(tmp_path):
    "The synthetic val split read by CocoKeypoints and scored by coco_evaluate: GT gives AP 1, jitter less."
    import warnings
    from adpd.data import CocoKeypoints, SkipWarning
    from adpd.evaluate import coco_evaluate, gt_keypoints
    paths = make_synthetic_coco(tmp_path / 's', n_images=30, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SkipWarning)
        ds = CocoKeypoints(*paths['val'], train=False)
    kp, mv = gt_keypoints(ds)
    r = coco_evaluate((kp, mv), ds)
    assert r['AP'] == 1.0 and r['AR'] == 1.0
    noisy = kp + np.random.default_rng(0).normal(0, 3, kp.shape)
    assert coco_evaluate((noisy, mv), ds)['AP'] < .95

"Datasets: real fixtures, augmentation geometry, any-K categories, bad input."
import json, shutil, warnings
import cv2, numpy as np, pytest, torch
from adpd.core import COCO17
from adpd.core import UserError
from adpd.data import CocoKeypoints, MPIIKeypoints, ImageError, SkipWarning, pose_dls, read_image, load_coco_json
from adpd.transforms import decode_heatmaps
from conftest import warned

ANN, DET = 'person_keypoints_tiny.json', 'person_detection_results_tiny.json'

def write_coco(tmp_path, names, people, size=(160, 200), n_images=1, draw=None, skeleton=()):
    "A small COCO json + images: `people` is a list of (image index, joints (K,3), bbox)."
    (tmp_path / 'img').mkdir(exist_ok=True)
    images = []
    for i in range(n_images):
        img = np.full((size[1], size[0], 3), 90, np.uint8) if draw is None else draw(i)
        cv2.imwrite(str(tmp_path / 'img' / f'{i}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
        images.append(dict(id=i + 1, file_name=f'{i}.jpg', width=size[0], height=size[1]))
    anns = [dict(id=n + 1, image_id=i + 1, category_id=1, iscrowd=0, bbox=list(map(float, box)), area=float(box[2] * box[3]),
                 keypoints=np.asarray(j, float).ravel().tolist(), num_keypoints=int((np.asarray(j)[:, 2] > 0).sum()))
            for n, (i, j, box) in enumerate(people)]
    d = dict(images=images, annotations=anns, categories=[dict(id=1, name='thing', keypoints=list(names), skeleton=list(skeleton))])
    (tmp_path / 'ann.json').write_text(json.dumps(d))
    return tmp_path / 'ann.json', tmp_path / 'img'

# --- real fixtures -----------------------------------------------------------

def test_coco_tiny_gt_and_dets(coco_tiny):
    ds, msgs = warned(CocoKeypoints, coco_tiny / ANN, coco_tiny / 'images', train=False)
    assert len(ds) == 12 and ds.skips == {'no labelled joint': 2}
    assert any('skipped 2 samples' in m and ANN in m for m in msgs)
    x, j = ds[0]
    assert x.shape == (3, 256, 192) and x.dtype == torch.uint8 and j.shape == (17, 3)
    dets = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False, det_file=coco_tiny / DET)
    raw = json.loads((coco_tiny / DET).read_text())
    assert len(dets) == len(raw) - sum(dets.skips.values()) and len(dets) > 50
    assert set(dets.db.image_id) <= set(ds.db.image_id)
    hi = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False, det_file=coco_tiny / DET, det_thr=.5)
    assert len(hi) == sum(d['score'] >= .5 for d in raw) and (hi.db.score >= .5).all()

def test_eval_mode_joints_match_crop_geometry(coco_tiny):
    "In eval mode the joints are the GT joints mapped by the crop: center maps to the middle."
    ds = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False)
    for i in range(len(ds)):
        _, j = ds[i]
        vis = ds.db.joints[i, :, 2] > 0
        assert torch.equal(j[:, 2] > 0, torch.from_numpy(vis))
        assert (j[vis, 0] > -1).all() and (j[vis, 0] < 49).all() and (j[vis, 1] > -1).all() and (j[vis, 1] < 65).all()

def test_mpii_tiny(mpii_tiny):
    ds = MPIIKeypoints(mpii_tiny / 'mpii_tiny.json', mpii_tiny / 'images', train=False)
    assert len(ds) == 5 and ds.spec.K == 16
    raw = json.loads((mpii_tiny / 'mpii_tiny.json').read_text())
    np.testing.assert_allclose(ds.db.joints[:, :, :2], np.array([r['joints'] for r in raw]) - 1, atol=1e-4)
    x, j = ds[1]
    assert x.shape == (3, 256, 256) and j.shape == (16, 3)
    assert (ds.head_size > 0).all()

# --- augmentation geometry ---------------------------------------------------

@pytest.mark.parametrize('seed', range(6))
def test_augmented_joints_agree_with_warped_blobs(tmp_path, seed):
    "Image k holds one bright blob at joint k; under one drawn augmentation, the crop's argmax is the warped joint k."
    rng = np.random.default_rng(seed)
    K, W, H = 17, 480, 400
    joints = np.c_[rng.uniform(150, 330, (K, 1)), rng.uniform(80, 330, (K, 1)), np.full((K, 1), 2.)]
    ys, xs = np.mgrid[:H, :W]
    def draw(k):
        g = np.exp(-((xs - joints[k, 0]) ** 2 + (ys - joints[k, 1]) ** 2) / (2 * 6. ** 2))
        return np.repeat((g * 255).astype(np.uint8)[..., None], 3, 2)
    box = [130, 60, 220, 290]
    ann, img = write_coco(tmp_path, COCO17.names, [(k, joints, box) for k in range(K)], size=(W, H), n_images=K, draw=draw)
    ds = CocoKeypoints(ann, img, train=True, flip_p=.5, rot_p=1., half_body_p=.5)
    checked = 0
    for trial in range(4):
        aug = ds.sample_aug(0, np.random.default_rng(seed * 10 + trial))
        aug['scale'] = aug['scale'] * (3 if trial == 3 else 1)   # zoomed out: exercises the reduced JPEG decode
        for k in range(K):
            x, j = ds.load(k, aug)
            src = ds.spec.flip_index[k] if aug['flip'] else k       # joint k of the crop came from this blob
            if src != k: x, _ = ds.load(src, aug)
            g = x[0].float()
            if not (2 < j[k, 0] < 46 and 2 < j[k, 1] < 62): continue   # joint warped out of the crop
            checked += 1
            yx = np.unravel_index(int(g.argmax()), g.shape)
            tol = 1.5 if trial < 3 else 4
            assert abs(yx[1] / 4 - float(j[k, 0])) * 4 <= tol and abs(yx[0] / 4 - float(j[k, 1])) * 4 <= tol, (trial, k, aug)
    assert checked > 30

def test_jpeg_pixels_are_opencvs_exactly(coco_tiny, tmp_path):
    "simplejpeg (libjpeg-turbo, slow DCT, smooth upsampling) gives cv2.imdecode's pixels, in full and DCT-scaled."
    from adpd.synthetic import make_synthetic_coco
    make_synthetic_coco(tmp_path, 4, seed=0)
    files = sorted((coco_tiny / 'images').glob('*.jpg')) + sorted(tmp_path.rglob('*.jpg'))
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    assert len(files) >= 8
    for f in files:
        for r, fl in flags.items():
            ref = cv2.imdecode(np.fromfile(f, np.uint8), fl | cv2.IMREAD_IGNORE_ORIENTATION)
            assert np.array_equal(read_image(f, r), ref), (f, r)

def test_reduced_decode_matches_full_decode(coco_tiny):
    ds = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False, fast_decode=True)
    slow = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False)        # exact: the default
    aug = ds.sample_aug(0); aug['scale'] = aug['scale'] * 2.5
    (a, ja), (b, jb) = ds.load(0, aug), slow.load(0, aug)
    assert torch.equal(ja, jb)
    diff = (a.float() - b.float()).abs()
    assert 0 < diff.mean() < 6, float(diff.mean())         # same picture, smoother low-pass (not the same pixels)
    assert (a.float() - b.float().roll(3, 2)).abs().mean() > diff.mean() * 1.5  # and aligned to the pixel

# --- any K ------------------------------------------------------------------

def test_fourteen_keypoint_category_loads_and_flips(tmp_path):
    names = ['head', 'neck', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
             'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle']
    rng = np.random.default_rng(0)
    j = np.c_[rng.uniform(40, 120, (14, 2)), np.full(14, 2.)]
    ann, img = write_coco(tmp_path, names, [(0, j, [30, 30, 100, 100])], skeleton=[[1, 2], [2, 3], [2, 4]])
    base = CocoKeypoints(ann, img, train=True, flip_p=0, rot_p=0, scale_factor=0, half_body_p=0)
    assert base.spec.K == 14 and base.spec.flip_pairs == ((2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13))
    assert base.spec.skeleton == ((0, 1), (1, 2), (1, 3))
    flip = CocoKeypoints(ann, img, train=True, flip_p=1, rot_p=0, scale_factor=0, half_body_p=0)
    _, j0 = base[0]
    _, j1 = flip[0]
    assert j1.shape == (14, 3)
    # mirrored about the crop's middle (x = w/2 in continuous input coordinates), left and right swapped
    expect = j0[torch.as_tensor(base.spec.flip_index)].clone()
    expect[:, 0] = base.image_size[0] / 4 - expect[:, 0]     # = 2 · (w/2) / stride
    torch.testing.assert_close(j1, expect, atol=1e-3, rtol=0)

# --- bad input --------------------------------------------------------------

def _people(n=2):
    j = np.c_[np.full((17, 2), 60.), np.full(17, 2.)]
    return [(0, j, [20, 20, 80, 120])] * n

def test_missing_annotation_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.json: annotation file not found'):
        CocoKeypoints(tmp_path / 'nope.json', tmp_path)
    (tmp_path / 'bad.json').write_text('{"images": [')
    with pytest.raises(ValueError, match='bad.json: not valid json'): CocoKeypoints(tmp_path / 'bad.json', tmp_path)

@pytest.mark.parametrize('edit,msg', [
    (lambda d: d.pop('annotations'), "missing or non-list key 'annotations'"),
    (lambda d: d['images'][0].update(id='one'), 'needs int id'),
    (lambda d: d['annotations'][0].pop('bbox'), "has no 'bbox'"),
    (lambda d: d['annotations'][0].update(keypoints='x'), 'must be lists of numbers'),
    (lambda d: d['annotations'][0].update(image_id=99), 'unknown image_id 99'),
    (lambda d: d['categories'][0].pop('keypoints'), 'no category with a `keypoints` list'),
    (lambda d: d['annotations'][0].update(keypoints=[1., 2, 2] * 5), 'has 5 keypoints, category has 17'),
])
def test_malformed_json_names_file_and_problem(tmp_path, edit, msg):
    ann, img = write_coco(tmp_path, COCO17.names, _people())
    d = json.loads(ann.read_text()); edit(d); ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match='ann.json') as e: CocoKeypoints(ann, img)
    assert msg in str(e.value)

def test_unusable_persons_are_counted_skips(tmp_path):
    j = np.c_[np.full((17, 2), 60.), np.full(17, 2.)]
    people = [(0, j, [20, 20, 80, 120]), (0, j * [1, 1, 0], [20, 20, 80, 120]), (0, j, [20, 20, 0, 50]),
              (0, j, [20, 20, -5, 50]), (0, j, [500, 20, 30, 30])]
    ann, img = write_coco(tmp_path, COCO17.names, people)
    ds, msgs = warned(CocoKeypoints, ann, img)
    assert len(ds) == 1
    assert ds.skips == {'no labelled joint': 1, 'empty or outside box': 3}
    assert len(msgs) == 1 and 'skipped 4 samples' in msgs[0] and 'ann.json' in msgs[0]

def test_skips_warn_with_their_own_category(tmp_path):
    "The counted-skip warning is a SkipWarning (a UserWarning), so it can be filtered without hiding any other warning."
    j = np.c_[np.full((17, 2), 60.), np.full(17, 2.)]
    ann, img = write_coco(tmp_path, COCO17.names, [(0, j, [20, 20, 80, 120]), (0, j * [1, 1, 0], [20, 20, 80, 120])])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        CocoKeypoints(ann, img)
    assert [x.category for x in w] == [SkipWarning] and issubclass(SkipWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        warnings.filterwarnings('ignore', category=SkipWarning)
        assert len(CocoKeypoints(ann, img)) == 1

def test_synth_dls_hides_only_skip_warnings(tmp_path, monkeypatch):
    "synth_dls silences the skips it expects, and nothing else: another warning raised meanwhile still shows."
    import adpd.testing
    real = adpd.testing.CocoKeypoints
    def noisy(*a, **k):
        warnings.warn('another problem', UserWarning)
        warnings.warn('x.json: skipped 1 samples', SkipWarning)
        return real(*a, **k)
    monkeypatch.setattr(adpd.testing, 'CocoKeypoints', noisy)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        adpd.testing.synth_dls(tmp_path, n_images=8, bs=4)
    got = [(x.category, str(x.message)) for x in w]
    assert got.count((UserWarning, 'another problem')) == 2 and not any(c is SkipWarning for c, _ in got), got

def test_missing_and_corrupt_images(tmp_path):
    ann, img = write_coco(tmp_path, COCO17.names, _people(1) + [(1, _people(1)[0][1], [20, 20, 80, 120])], n_images=2)
    (img / '1.jpg').unlink()
    ds, msgs = warned(CocoKeypoints, ann, img)
    assert len(ds) == 1 and ds.skips == {'missing image file': 1} and 'missing image file: 1' in msgs[0]
    (img / '0.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    with pytest.raises(ValueError, match=r'0\.jpg: corrupt or truncated image'): ds[0]
    with pytest.raises(UserError, match=r'0\.jpg: corrupt'): ds[0]            # a problem the user can fix
    assert issubclass(ImageError, UserError) and issubclass(ImageError, ValueError)
    (img / '0.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r'0\.jpg: image file not found'): ds[0]

def test_empty_dataset_is_an_error(tmp_path):
    ann, img = write_coco(tmp_path, COCO17.names, [])
    with pytest.raises(ValueError, match='ann.json: no usable samples'): CocoKeypoints(ann, img)

def test_detection_file_problems(tmp_path):
    ann, img = write_coco(tmp_path, COCO17.names, _people(1))
    det = tmp_path / 'det.json'
    det.write_text(json.dumps([dict(image_id=1, bbox=[10, 10, 50, 80], score=.9, category_id=1),
                               dict(image_id=77, bbox=[10, 10, 50, 80], score=.9, category_id=1),
                               dict(image_id=1, bbox=[10, 10, 0, 80], score=.9, category_id=1)]))
    ds, msgs = warned(CocoKeypoints, ann, img, train=False, det_file=det)
    assert len(ds) == 1 and ds.skips == {'unknown image id': 1, 'empty box': 1}
    assert 'det.json: skipped 2 samples' in msgs[0]
    det.write_text(json.dumps([dict(image_id=77, bbox=[10, 10, 50, 80], score=.9)]))
    with pytest.raises(ValueError, match='det.json: no usable samples'), warnings.catch_warnings():
        warnings.simplefilter('ignore'); CocoKeypoints(ann, img, train=False, det_file=det)
    det.write_text(json.dumps([dict(image_id=1, bbox=[10, 10], score=.9)]))
    with pytest.raises(ValueError, match='det.json: detection .* needs image_id, numeric score and a 4-number bbox'):
        CocoKeypoints(ann, img, train=False, det_file=det)
    with pytest.raises(FileNotFoundError, match='missing.json: detection file not found'):
        CocoKeypoints(ann, img, train=False, det_file=tmp_path / 'missing.json')

def test_mpii_malformed(tmp_path):
    (tmp_path / 'm.json').write_text(json.dumps([dict(image='a.jpg', scale=1., center=[1, 2], joints=[[0, 0]] * 15, joints_vis=[1] * 16)]))
    with pytest.raises(ValueError, match=r'm\.json: entry .* joints \(16x2\)'): MPIIKeypoints(tmp_path / 'm.json', tmp_path)

# --- fastai loaders ---------------------------------------------------------

def test_pose_dls_batches_and_workers(coco_tiny):
    tr = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images')
    va = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False)
    dls = pose_dls(tr, va, bs=4, num_workers=2, device='cpu')
    x, hm, tw = dls.valid.one_batch()
    assert x.shape == (4, 3, 256, 192) and x.dtype == torch.float32 and hm.shape == (4, 17, 64, 48)
    kp, _ = decode_heatmaps(hm)
    j = torch.stack([va[i][1] for i in range(4)])
    ok = tw > 0
    assert ((kp - j[..., :2]).abs()[ok] <= .5 + 1e-4).all()      # targets sit on the joints
    assert torch.equal(ok, (j[..., 2] > 0) & ok)
    xs = [b[0] for b in dls.train]                                  # two workers, drop_last
    assert len(xs) == len(tr) // 4

"The official protocol, exactly: detection boxes, exact decoding, and the data path against the HRNet family's rules."
import json, warnings
import cv2, numpy as np, pytest, torch
from adpd.data import CocoKeypoints, TopDownDataset
from adpd.transforms import PIXEL_STD, get_affine

ANN, DET = 'person_keypoints_tiny.json', 'person_detection_results_tiny.json'

def official_cs(box, aspect):
    "Center and scale of a COCO box as the HRNet family's `COCODataset._xywh2cs` computes them (float32, padding 1.25)."
    x, y, w, h = box
    c = np.array([x + w * .5, y + h * .5], np.float32)
    if w > aspect * h: h = w / aspect
    elif w < aspect * h: w = h * aspect
    return c, np.array([w / 200, h / 200], np.float32) * 1.25

def test_detection_records_come_from_the_raw_box(coco_tiny):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False, det_file=coco_tiny / DET)
    raw = [d for d in json.loads((coco_tiny / DET).read_text()) if d['category_id'] == 1]
    assert len(ds) == len(raw)                                   # the official reader keeps every person box
    for i, d in enumerate(raw):
        c, s = official_cs(d['bbox'], 192 / 256)
        np.testing.assert_allclose(ds.db.center[i], c, atol=1e-4)
        np.testing.assert_allclose(ds.db.scale[i], s, rtol=1e-6)
        # the area OKS-NMS uses: prod(scale · 200), as the official validation loop fills `all_boxes[:, 4]`
        np.testing.assert_allclose(ds.db.area[i], np.prod(s.astype(np.float64) * 200), rtol=1e-5)

def test_small_detection_boxes_keep_their_size(tmp_path, coco_tiny):
    dets = [dict(image_id=785, category_id=1, bbox=[100.3, 50.7, 2.5, 1.5], score=.9),
            dict(image_id=785, category_id=1, bbox=[600., 400., 80., 120.], score=.8)]   # reaches past the image edge
    (tmp_path / 'dets.json').write_text(json.dumps(dets))
    ds = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False, det_file=tmp_path / 'dets.json')
    assert len(ds) == 2
    for i, d in enumerate(dets):
        c, s = official_cs(d['bbox'], 192 / 256)
        np.testing.assert_allclose(ds.db.center[i], c, atol=1e-4); np.testing.assert_allclose(ds.db.scale[i], s, rtol=1e-6)
    np.testing.assert_allclose(ds.db.area[0], 2.5 * 1.25 * (2.5 / .75) * 1.25, rtol=1e-5)

def test_crops_decode_the_jpeg_in_full_by_default(coco_tiny):
    "A crop that shrinks the image 3x equals the warp of the fully decoded image (what the official reader does)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=False)
    i = int(np.argmax(ds.db.scale[:, 0]))
    aug = dict(center=ds.db.center[i], scale=ds.db.scale[i] * 3, rot=0., flip=False)
    x, _ = ds.load(i, aug)
    img = cv2.imread(str(ds.db.file[i]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    ref = cv2.warpAffine(img, get_affine(aug['center'], aug['scale'], (192, 256)), (192, 256), flags=cv2.INTER_LINEAR)
    assert torch.equal(x, torch.from_numpy(ref[:, :, ::-1].transpose(2, 0, 1).copy()))

def test_threaded_loading_gives_the_same_batches(coco_tiny):
    "Decode threads change the speed only: augmentations are drawn in order, so the batches are identical."
    import random
    from adpd.data import pose_dls
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = CocoKeypoints(coco_tiny / ANN, coco_tiny / 'images', train=True)
    def batches(threads):
        random.seed(3); np.random.seed(3); torch.manual_seed(3)
        dl = pose_dls(ds, ds, bs=5, num_workers=0, device='cpu', threads=threads).train
        assert dl.threads == threads
        return [b for b in dl]
    one, three = batches(1), batches(3)
    assert len(one) == 2 and all(torch.equal(x, y) for p, q in zip(one, three) for x, y in zip(p, q))
    assert pose_dls(ds, ds, num_workers=0, device='cpu').train.threads >= 1

def test_paper_recipes_decode_in_full(tmp_path, coco_tiny, capsys):
    "coco/mpii decode every JPEG in full unless --fast-decode, whose help says what it trades."
    from adpd.train import make_parser, config_from_args
    from adpd.recipes import recipe_datasets
    root = tmp_path / 'coco'; (root / 'annotations').mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (root / 'annotations' / f'person_keypoints_{split}.json').symlink_to(coco_tiny / ANN)
        (root / split).symlink_to(coco_tiny / 'images', target_is_directory=True)
    p = make_parser()
    for extra, fast in (([], False), (['--fast-decode'], True)):
        cfg, _ = config_from_args(p.parse_args(['coco', '--data-root', str(root), '--student', 'tiny', *extra]))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            assert all(ds.fast_decode is fast for ds in recipe_datasets(cfg))
    assert p.parse_args(['mpii', '--data-root', '.']).fast_decode is False
    with pytest.raises(SystemExit): p.parse_args(['coco', '--help'])
    assert 'differ from the official pipeline' in ' '.join(capsys.readouterr().out.split())

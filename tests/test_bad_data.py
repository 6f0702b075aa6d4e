"Bad data files: each is a counted skip naming the file, or a clear error naming it; nothing trains on garbage."
import json, math, shutil, warnings
import cv2, numpy as np, pytest, torch
from adpd.data import CocoKeypoints, MPIIKeypoints, read_image, load_coco_json

def coco_json(tmp_path, people, images=None, size=(160, 200)):
    "A COCO keypoint json (K=3) over one grey image; `people` = list of (joints (3, 3), bbox)."
    (tmp_path / 'img').mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / 'img' / '0.jpg'), np.full((size[1], size[0], 3), 90, np.uint8))
    images = images or [dict(id=1, file_name='0.jpg', width=size[0], height=size[1])]
    anns = [dict(id=n + 1, image_id=images[0]['id'], category_id=1, iscrowd=0, bbox=list(box), area=100.,
                 keypoints=np.asarray(j, float).ravel().tolist()) for n, (j, box) in enumerate(people)]
    d = dict(images=images, annotations=anns, categories=[dict(id=1, name='p', keypoints=['a', 'b', 'c'])])
    (tmp_path / 'ann.json').write_text(json.dumps(d))          # json writes NaN/Infinity, as a buggy converter would
    return tmp_path / 'ann.json', tmp_path / 'img'

J = [[40, 50, 2], [60, 70, 2], [80, 90, 1]]

def build(*a, **k):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        return CocoKeypoints(*a, **k), ' '.join(str(x.message) for x in w)

def test_non_finite_numbers_and_one_pixel_boxes_are_counted_skips(tmp_path):
    nan_j = [[math.nan, 50, 2], [60, 70, 2], [80, 90, 1]]
    ann, img = coco_json(tmp_path, [(J, [30, 40, 60, 70]), (nan_j, [30, 40, 60, 70]), (J, [30, math.inf, 60, 70]),
                                    (J, [50.2, 60.3, 1., 1.])])
    ds, msg = build(ann, img, image_size=(64, 64), heatmap_size=(16, 16))
    assert len(ds) == 1 and ds.skips == {'non-finite numbers': 2, 'box of ≤ 1 px': 1}
    assert 'ann.json' in msg and 'non-finite numbers: 2' in msg
    assert np.isfinite(ds.db.scale).all() and (ds.db.scale > 0).all()

def test_bad_image_sizes_are_counted_skips(tmp_path):
    imgs = [dict(id=1, file_name='0.jpg', width=math.nan, height=200)]
    ann, img = coco_json(tmp_path, [(J, [30, 40, 60, 70])], images=imgs)
    with pytest.raises(ValueError, match='no usable samples'): build(ann, img)
    d = json.loads(ann.read_text()); d['images'].append(dict(id=2, file_name='0.jpg', width=160, height=200))
    d['annotations'].append(dict(d['annotations'][0], id=2, image_id=2)); ann.write_text(json.dumps(d))
    ds, msg = build(ann, img)
    assert len(ds) == 1 and ds.skips == {'bad image size': 1}

def test_non_finite_or_empty_detections_are_counted_skips(tmp_path):
    ann, img = coco_json(tmp_path, [(J, [30, 40, 60, 70])])
    dets = [dict(image_id=1, category_id=1, bbox=b, score=s) for b, s in
            [([10, 10, 50, 80], .9), ([math.nan, 10, 50, 80], .9), ([10, 10, 50, 80], math.nan), ([10, 10, 0, 80], .9)]]
    (tmp_path / 'det.json').write_text(json.dumps(dets))
    ds, msg = build(ann, img, train=False, det_file=tmp_path / 'det.json')
    assert len(ds) == 1 and ds.skips == {'non-finite numbers': 2, 'empty box': 1} and 'det.json' in msg

def test_mpii_non_finite_entries_are_counted_skips(tmp_path, mpii_tiny):
    entries = json.loads((mpii_tiny / 'mpii_tiny.json').read_text())
    entries[0]['joints'][3][0] = math.nan; entries[1]['scale'] = math.inf
    (tmp_path / 'm.json').write_text(json.dumps(entries))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = MPIIKeypoints(tmp_path / 'm.json', mpii_tiny / 'images')
    assert len(ds) == len(entries) - 2 and ds.skips == {'non-finite numbers': 2}
    assert any('m.json' in str(x.message) for x in w)

def corrupt(src, dst, how):
    b = np.fromfile(src, np.uint8)
    if how == 'truncate': b = b[:len(b) * 2 // 3]
    elif how == 'damage':   # 64 bytes overwritten mid-scan: libjpeg warns "Corrupt JPEG data" and decodes garbage
        m = len(b) // 2; b[m:m + 4] = [0xFF, 0x00, 0xFF, 0x00]; b[m + 4:m + 64] = 0x55
    b.tofile(dst)
    return dst

def test_corrupt_jpegs_are_found(tmp_path, coco_tiny):
    from adpd.data import image_file_problem
    src = sorted((coco_tiny / 'images').glob('*.jpg'))[0]
    damaged = corrupt(src, tmp_path / 'damaged.jpg', 'damage')
    with pytest.raises(ValueError, match=r'damaged\.jpg: corrupt'): read_image(damaged)
    trunc = corrupt(src, tmp_path / 'trunc.jpg', 'truncate')
    with pytest.raises(ValueError, match=r'trunc\.jpg: corrupt or truncated'): read_image(trunc)
    assert image_file_problem(trunc) == 'corrupt or truncated image file' and image_file_problem(src) is None
    (tmp_path / 'empty.jpg').write_bytes(b'')
    assert image_file_problem(tmp_path / 'empty.jpg') == 'empty image file'
    assert read_image(src).shape[2] == 3

def test_corrupt_images_are_skipped_at_build_and_stop_training_with_the_name(tmp_path, coco_tiny):
    shutil.copytree(coco_tiny / 'images', tmp_path / 'images')
    files = sorted((tmp_path / 'images').glob('*.jpg'))
    corrupt(coco_tiny / 'images' / files[0].name, files[0], 'truncate')
    ds, msg = build(coco_tiny / 'person_keypoints_tiny.json', tmp_path / 'images', train=False)
    assert ds.skips['corrupt or truncated image file'] > 0 and files[0].name in msg
    assert not any(str(f).endswith(files[0].name) for f in ds.db.file)
    corrupt(coco_tiny / 'images' / files[1].name, files[1], 'damage')   # not visible without decoding: met in training
    ds, _ = build(coco_tiny / 'person_keypoints_tiny.json', tmp_path / 'images', train=False, check_files=False)
    i = next(i for i, f in enumerate(ds.db.file) if str(f).endswith(files[1].name))
    with pytest.raises(ValueError, match=files[1].name + ': corrupt'): ds[i]

def test_binary_annotation_files_name_the_file(tmp_path, coco_tiny):
    (tmp_path / 'ann.json').write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r'ann\.json: not a text'): load_coco_json(tmp_path / 'ann.json')
    with pytest.raises(ValueError, match=r'ann\.json: not a text'): MPIIKeypoints(tmp_path / 'ann.json', tmp_path)
    with pytest.raises(ValueError, match=r'ann\.json: not a text'):
        CocoKeypoints(coco_tiny / 'person_keypoints_tiny.json', coco_tiny / 'images', det_file=tmp_path / 'ann.json')

def test_duplicate_ids_are_refused(tmp_path):
    ann, img = coco_json(tmp_path, [(J, [30, 40, 60, 70])])
    d = json.loads(ann.read_text()); d['images'].append(dict(d['images'][0], file_name='other.jpg')); ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r'ann\.json: image id 1 appears 2 times'): load_coco_json(ann)
    d['images'].pop(); d['annotations'].append(dict(d['annotations'][0])); ann.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r'annotation id 1 appears 2 times'): load_coco_json(ann)

def huge_jpeg(src, dst):
    "A copy of `src` whose header claims 60000 x 60000 pixels."
    b = np.fromfile(src, np.uint8)
    i = next(k for k in range(len(b) - 1) if b[k] == 0xFF and b[k + 1] in (0xC0, 0xC1, 0xC2))
    b[i + 5:i + 9] = [0xEA, 0x60, 0xEA, 0x60]; b.tofile(dst)
    return dst

def test_images_over_the_pixel_limit_name_the_file(tmp_path, coco_tiny, mpii_tiny):
    big = huge_jpeg(sorted((coco_tiny / 'images').glob('*.jpg'))[0], tmp_path / 'big.jpg')
    with pytest.raises(ValueError, match=r'big\.jpg: the decoder refuses it'): read_image(big)
    ann, img = coco_json(tmp_path, [(J, [30, 40, 60, 70])])
    d = json.loads(ann.read_text()); d['images'].append(dict(id=2, file_name='0.jpg', width=60000, height=60000))
    d['annotations'].append(dict(d['annotations'][0], id=2, image_id=2)); ann.write_text(json.dumps(d))
    ds, msg = build(ann, img)
    assert len(ds) == 1 and ds.skips == {'image over the decoder pixel limit': 1} and '0.jpg' in msg
    shutil.copytree(mpii_tiny / 'images', tmp_path / 'mi')
    entries = json.loads((mpii_tiny / 'mpii_tiny.json').read_text())
    huge_jpeg(mpii_tiny / 'images' / entries[0]['image'], tmp_path / 'mi' / entries[0]['image'])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        mp = MPIIKeypoints(mpii_tiny / 'mpii_tiny.json', tmp_path / 'mi')
    assert mp.skips['image over the decoder pixel limit'] >= 1 and any(entries[0]['image'] in str(x.message) for x in w)

def test_corrupt_jpegs_are_found_by_the_right_thread(tmp_path, coco_tiny):
    "Decoding threads each report their own file's damage (simplejpeg raises inside the call), naming that file."
    from concurrent.futures import ThreadPoolExecutor
    files = []
    for k, src in enumerate(sorted((coco_tiny / 'images').glob('*.jpg'))):
        files += [(shutil.copy(src, tmp_path / f'ok{k}.jpg'), False), (corrupt(src, tmp_path / f'bad{k}.jpg', 'damage'), True)]
    def named_iff_bad(f_bad):
        f, bad = f_bad
        try: read_image(f); return not bad
        except ValueError as e: return bad and str(f) in str(e)
    with ThreadPoolExecutor(3) as ex: ok = list(ex.map(named_iff_bad, files * 20))
    assert all(ok) and all(map(named_iff_bad, files))

@pytest.mark.parametrize('workers', ['0', '1'])
def test_a_corrupt_image_met_in_training_stops_the_run_naming_it(tmp_path, coco_tiny, capsys, workers):
    from adpd.train import main
    root = tmp_path / 'coco'; (root / 'annotations').mkdir(parents=True)
    shutil.copytree(coco_tiny / 'images', root / 'train2017'); (root / 'val2017').symlink_to(coco_tiny / 'images')
    for split in ('train2017', 'val2017'):
        (root / 'annotations' / f'person_keypoints_{split}.json').symlink_to(coco_tiny / 'person_keypoints_tiny.json')
    bad = sorted((root / 'train2017').glob('*.jpg'))[0]
    corrupt(coco_tiny / 'images' / bad.name, bad, 'damage')          # its end marker is intact: found only when decoded
    out = tmp_path / 'run'
    assert main(['coco', '--data-root', str(root), '--student', 'tiny-w8', '--kd', 'none', '--epochs', '1', '--bs', '4',
                 '--image-size', '64x48', '--no-bar', '--threads', '1', '--workers', workers, '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert f'adpd_train: error: {bad}: corrupt or truncated image (libjpeg: Corrupt JPEG data' in err and 'Traceback' not in err
    assert not (out / 'checkpoint.pth').exists()

def test_ground_truth_of_another_k_is_refused_with_detections_too(tmp_path):
    ann, img = coco_json(tmp_path, [(J, [30, 40, 60, 70])])
    d = json.loads(ann.read_text()); d['annotations'][0]['keypoints'] += [1, 2, 2]; ann.write_text(json.dumps(d))
    (tmp_path / 'det.json').write_text(json.dumps([dict(image_id=1, category_id=1, bbox=[10, 10, 50, 80], score=.9)]))
    for det in (None, tmp_path / 'det.json'):
        with pytest.raises(ValueError, match=r'ann\.json: annotation 1 has 4 keypoints, category has 3'):
            CocoKeypoints(ann, img, train=False, det_file=det)

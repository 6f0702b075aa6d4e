"Prediction on user images: the evaluation's crop and decode exactly, any input kind, `load_student` on what adpd_train writes, the `adpd_predict` CLI."
import json, shutil, subprocess, sys, warnings
from pathlib import Path
import cv2, numpy as np, PIL.Image, pytest, torch
from adpd.core import COCO17, MPII16
from adpd.data import CocoKeypoints
from adpd.evaluate import predict_keypoints, rescore
from adpd.models import create_pose_model
from adpd.predict import (InputError, ImageBoxes, Student, as_bgr, load_student, main, model_joints, predict, read_boxes,
                          spec_for, coco_image_id)
from conftest import quiet

ANN, DET = 'person_keypoints_tiny.json', 'person_detection_results_tiny.json'
SIZE = (48, 64)

def val_ds(root, **kw): return quiet(CocoKeypoints, root / ANN, root / 'images', train=False, image_size=SIZE, heatmap_size=(12, 16), **kw)

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    m = create_pose_model('tiny').eval()
    with torch.no_grad(): m.final_layer.bias.uniform_(-.1, .1)     # no flat regions: every crop moves the peaks
    return m

# --- one code path with evaluation ------------------------------------------------

@pytest.mark.parametrize('flip', [True, False])
def test_predict_with_gt_boxes_is_the_evaluation_prediction(coco_tiny, model, flip):
    val = val_ds(coco_tiny)
    kp_eval, mv_eval = predict_keypoints(model, val, flip=flip, bs=1)        # what coco_evaluate scores
    for img_id in np.unique(val.db.image_id):
        rows = np.flatnonzero(val.db.image_id == img_id)
        kp, mv = predict(model, val.db.file[rows[0]], val.db.box[rows], image_size=SIZE, flip=flip, bs=1)
        np.testing.assert_array_equal(kp, kp_eval[rows])
        np.testing.assert_array_equal(mv, mv_eval[rows])
    assert len(np.unique(val.db.image_id)) > 1

def test_predict_with_detections_is_the_detection_evaluation(coco_tiny, model):
    "Raw detection boxes give the crops of `CocoKeypoints(det_file=...)`."
    val = val_ds(coco_tiny, det_file=coco_tiny / DET)
    kp_eval, _ = predict_keypoints(model, val, bs=1)
    rows = np.flatnonzero(val.db.image_id == 785)
    kp, _ = predict(model, val.db.file[rows[0]], val.db.box[rows], image_size=SIZE, bs=1)
    np.testing.assert_array_equal(kp, kp_eval[rows])

def test_a_shifted_box_moves_the_prediction(coco_tiny, model):
    "The check above can fail: another crop gives other keypoints."
    val = val_ds(coco_tiny)
    b = val.db.box[:1].copy()
    k0, _ = predict(model, val.db.file[0], b, image_size=SIZE)
    b[0, 0] += 7
    k1, _ = predict(model, val.db.file[0], b, image_size=SIZE)
    assert np.abs(k1 - k0).max() > 1

# --- inputs ---------------------------------------------------------------------

def test_path_numpy_pil_give_the_same_result(coco_tiny, model):
    f = coco_tiny / 'images' / '000000000785.jpg'
    box = [[270, 40, 230, 340]]
    ref = predict(model, f, box, image_size=SIZE)
    rgb = cv2.imread(str(f))[..., ::-1]
    for img in (str(f), rgb, np.ascontiguousarray(rgb), PIL.Image.open(f), PIL.Image.fromarray(rgb), np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])):
        kp, mv = predict(model, img, box, image_size=SIZE)
        np.testing.assert_array_equal(kp, ref[0]); np.testing.assert_array_equal(mv, ref[1])
    bgr_by_mistake = predict(model, np.ascontiguousarray(rgb[..., ::-1]), box, image_size=SIZE)[1]
    assert not np.array_equal(bgr_by_mistake, ref[1])                 # the channel order matters, so the check above means something

def test_bad_arrays():
    with pytest.raises(InputError, match='multiply by 255'): as_bgr(np.zeros((4, 4, 3)))
    with pytest.raises(InputError, match=r'\(h, w, 3\)'): as_bgr(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(TypeError, match='numpy RGB array or a PIL image'): as_bgr([[1, 2]])

def test_no_boxes_is_the_whole_image_and_empty_boxes_no_person(coco_tiny, model):
    f = coco_tiny / 'images' / '000000000785.jpg'
    h, w = cv2.imread(str(f)).shape[:2]
    kp, mv = predict(model, f, image_size=SIZE)
    assert kp.shape == (1, 17, 2) and mv.shape == (1, 17)
    np.testing.assert_array_equal(kp, predict(model, f, [0, 0, w, h], image_size=SIZE)[0])
    kp, mv = predict(model, f, np.zeros((0, 4)))
    assert kp.shape == (0, 17, 2) and mv.shape == (0, 17)
    with pytest.raises(InputError, match='positive width'): predict(model, f, [[0, 0, -3, 5]])
    with pytest.raises(InputError, match=r'\(N, 4\)'): predict(model, f, [[0, 0, 3]])

def test_image_boxes_dataset_is_eval_only():
    img = np.zeros((50, 40, 3), np.uint8)
    ds = ImageBoxes([img, img], [[[0, 0, 10, 20]], [[1, 1, 5, 5], [2, 2, 6, 6]]], COCO17, image_size=(48, 64), image_ids=[7, 9])
    assert not ds.train and len(ds) == 3 and ds.db.image_id.tolist() == [7, 9, 9] and ds.heatmap_size == (12, 16)
    assert ds.image(1) is img

# --- spec -------------------------------------------------------------------------

def test_spec_from_k_and_mismatch(coco_tiny):
    assert spec_for(17) is COCO17 and spec_for(16) is MPII16
    with pytest.raises(InputError, match='pass the keypoint spec'): spec_for(14)
    m16 = create_pose_model('tiny', num_joints=16).eval()
    f = coco_tiny / 'images' / '000000000785.jpg'
    with pytest.raises(InputError, match="predicts 16 keypoints but the spec 'coco17' has 17"): predict(m16, f, spec=COCO17)
    with pytest.raises(InputError, match='pass the keypoint spec'): predict(create_pose_model('tiny', num_joints=14), f)
    assert model_joints(m16) == 16 and model_joints(create_pose_model('resnet_18-d32', num_joints=5)) == 5

# --- load_student -------------------------------------------------------------------

def test_load_student_from_a_finished_run(finished):
    st = load_student(finished)
    assert isinstance(st, Student)
    assert (st.arch, st.image_size, st.K, st.path.name) == ('tiny-w8', (48, 64), 17, 'best.pth')
    assert st.spec.names == COCO17.names
    sd = torch.load(finished / 'best.pth', weights_only=True)
    assert all(torch.equal(v, st.model.state_dict()[k]) for k, v in sd.items())
    assert not st.model.training
    for f in ('final.pth', 'checkpoint.pth'):                    # any weight file of the run: its config.json names the model
        s = load_student(finished / f)
        assert s.arch == 'tiny-w8' and s.image_size == (48, 64) and s.path.name == f
    ck = torch.load(finished / 'checkpoint.pth', weights_only=True)['model']
    assert all(torch.equal(v, load_student(finished / 'checkpoint.pth').model.state_dict()[k]) for k, v in ck.items())

def test_load_student_prefers_best_then_final_then_checkpoint(tmp_path):
    torch.manual_seed(0)
    (tmp_path / 'config.json').write_text(json.dumps(dict(cmd='mpii', student='tiny', image_size='64x64')))
    for n in ('checkpoint.pth', 'final.pth', 'best.pth'):
        sd = create_pose_model('tiny', num_joints=16).state_dict()
        torch.save(dict(format='adpd-run', model=sd) if n == 'checkpoint.pth' else sd, tmp_path / n)
        st = load_student(tmp_path)
        assert st.path.name == n and st.K == 16 and st.spec is MPII16 and st.image_size == (64, 64)

def test_load_student_demo_runs_and_shipped_weights(tmp_path):
    from adpd.recipes import WEIGHTS
    info = json.loads((WEIGHTS / 'student.json').read_text())
    for kd in ('none', 'adpd'):
        run = tmp_path / 'seed0' / f'student-{kd}'
        run.mkdir(parents=True)
        (run / 'config.json').write_text(json.dumps(dict(kd=kd, seed=0, student=info['sha256'], teacher='0' * 64, n_images=3000)))
        shutil.copy(WEIGHTS / 'student.pth', run / 'final.pth')
    st = load_student(tmp_path / 'seed0' / 'student-adpd')
    assert (st.arch, st.image_size, st.path.name) == (info['model'], (96, 128), 'final.pth')
    with pytest.raises(InputError, match=r'holds 2 runs \(seed0/student-adpd, seed0/student-none\); pass one'): load_student(tmp_path)
    shipped = load_student(WEIGHTS)
    assert shipped.path == WEIGHTS / 'student.pth' and shipped.arch == info['model']
    assert next(shipped.model.parameters()).dtype == torch.float32
    teacher = load_student(WEIGHTS / 'teacher.pth')
    assert teacher.arch == json.loads((WEIGHTS / 'teacher.json').read_text())['model']

def test_load_student_errors(tmp_path):
    torch.manual_seed(0)
    torch.save(create_pose_model('tiny').state_dict(), tmp_path / 'plain.pth')
    with pytest.raises(InputError, match=r'plain.pth: a checkpoint without a run config.*--arch'): load_student(tmp_path / 'plain.pth')
    assert load_student(tmp_path / 'plain.pth', arch='tiny').K == 17
    with pytest.raises(InputError, match=r'plain.pth: not the weights of a resnet_18 pose model'): load_student(tmp_path / 'plain.pth', arch='resnet_18')
    torch.save({'fc.weight': torch.zeros(10, 5), 'fc.bias': torch.zeros(10)}, tmp_path / 'classifier.pth')
    with pytest.raises(InputError, match=r'classifier.pth: not the weights of a tiny pose model'): load_student(tmp_path / 'classifier.pth', arch='tiny')
    with pytest.raises(FileNotFoundError, match='nope.pth: no such file'): load_student(tmp_path / 'nope.pth', arch='tiny')
    with pytest.raises(InputError, match='unknown model'): load_student(tmp_path / 'plain.pth', arch='resnet_7')
    with pytest.raises(InputError, match="predicts 17 keypoints but the spec 'mpii16' has 16"): load_student(tmp_path / 'plain.pth', arch='tiny', spec=MPII16)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(InputError, match=r'empty: no best.pth, final.pth, checkpoint.pth'): load_student(tmp_path / 'empty')
    run = tmp_path / 'run'; run.mkdir()
    torch.save(create_pose_model('tiny').state_dict(), run / 'best.pth')
    (run / 'config.json').write_text('{"kd": "adpd"')
    with pytest.raises(InputError, match=r'config.json: not valid json'): load_student(run)
    (run / 'config.json').write_text('{"kd": "adpd"}')
    with pytest.raises(InputError, match=r'config.json: names no student model'): load_student(run)
    assert load_student(run, arch='tiny').arch == 'tiny'                     # --arch when the config does not say

# --- the CLI ----------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, model):
    d = tmp_path / 'run'; d.mkdir()
    torch.save(model.state_dict(), d / 'best.pth')
    (d / 'config.json').write_text(json.dumps(dict(cmd='coco', student='tiny', image_size='64x48')))
    return d

def images(root): return [str(root / 'images' / f) for f in ('000000000785.jpg', '000000040083.jpg')]

def test_cli_mapping_boxes(coco_tiny, run_dir, tmp_path, model, capsys):
    files = images(coco_tiny)
    boxes = {'000000000785.jpg': [[270, 40, 230, 340], [10, 10, 50, 100]], files[1]: [[100, 50, 120, 250]]}
    (tmp_path / 'boxes.json').write_text(json.dumps(boxes))
    out = tmp_path / 'out'
    assert main([*files, '--model', str(run_dir), '--boxes', str(tmp_path / 'boxes.json'), '--out', str(out)]) == 0
    res = json.loads((out / 'keypoints.json').read_text())
    assert [r['image_id'] for r in res] == [785, 785, 40083] and {r['category_id'] for r in res} == {1}
    kp, mv = predict(model, files[0], boxes['000000000785.jpg'], image_size=SIZE)       # the same numbers as the API
    np.testing.assert_allclose(np.array(res[0]['keypoints']).reshape(17, 3), np.concatenate([kp[0], mv[0, :, None]], 1))
    np.testing.assert_allclose([r['score'] for r in res[:2]], rescore(np.ones(2), mv))
    for f in files:
        png = cv2.imread(str(out / (Path(f).stem + '.png')))
        assert png is not None and png.shape[:2] == cv2.imread(f).shape[:2]
    assert 'best.pth' in capsys.readouterr().out

def test_cli_coco_detections_and_no_boxes(coco_tiny, run_dir, tmp_path, capsys):
    files = images(coco_tiny) + [str(tmp_path / 'cat.png')]
    cv2.imwrite(files[2], np.full((40, 30, 3), 128, np.uint8))
    dets = json.loads((coco_tiny / DET).read_text())
    dets.append(dict(image_id=2, bbox=[1, 1, 20, 30], score=.8, category_id=1))            # cat.png is the third image: id 2
    dets.append(dict(image_id=785, bbox=[1, 1, 20, 30], score=.8, category_id=3))          # another category: left out
    (tmp_path / 'dets.json').write_text(json.dumps(dets))
    out = tmp_path / 'out'
    assert main([*files, '--model', str(run_dir), '--boxes', str(tmp_path / 'dets.json'), '--out', str(out), '--no-flip']) == 0
    res = json.loads((out / 'keypoints.json').read_text())
    n785 = sum(d['image_id'] == 785 and d.get('category_id', 1) == 1 for d in dets)
    assert sum(r['image_id'] == 785 for r in res) == n785 and sum(r['image_id'] == 2 for r in res) == 1
    assert all(len(r['keypoints']) == 51 and 0 <= r['score'] <= 1 for r in res)
    assert main([*files[:1], '--model', str(run_dir), '--out', str(tmp_path / 'whole')]) == 0
    res = json.loads((tmp_path / 'whole' / 'keypoints.json').read_text())
    assert len(res) == 1 and res[0]['image_id'] == 785

def error_of(capsys, argv):
    "Run `main(argv)`; assert exit status 2 and one line on stderr with no traceback; return that line."
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('adpd_predict: error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    return err

def test_cli_errors(coco_tiny, run_dir, tmp_path, capsys):
    img = images(coco_tiny)[0]
    m = ['--model', str(run_dir), '--out', str(tmp_path / 'o')]
    bad = tmp_path / 'notes.jpg'; bad.write_text('not an image')
    assert 'notes.jpg' in error_of(capsys, [str(bad), *m])
    assert 'missing.jpg: image file not found' in error_of(capsys, [str(tmp_path / 'missing.jpg'), *m])
    for content, what in ((json.dumps({'000000000785.jpg': [[1, 2, 3]]}), r"entry '000000000785.jpg': boxes must be"),
                          (json.dumps({'000000000785.jpg': [1, 2, 3, 4, 5]}), "boxes must be"),
                          (json.dumps({'000000000785.jpg': 'left'}), 'expected a list of [x, y, w, h] boxes'),
                          (json.dumps([dict(image_id=785, score=1.)]), 'detection 0'),
                          (json.dumps('boxes'), 'expected a mapping file name'),
                          ('{"a": ', 'not valid json')):
        (tmp_path / 'b.json').write_text(content)
        e = error_of(capsys, [img, *m, '--boxes', str(tmp_path / 'b.json')])
        assert 'b.json' in e and what in e, e
    assert 'nob.json: boxes file not found' in error_of(capsys, [img, *m, '--boxes', str(tmp_path / 'nob.json')])
    torch.save({'fc.weight': torch.zeros(3, 3)}, tmp_path / 'cls.pth')
    assert 'cls.pth: not the weights of a tiny pose model' in error_of(capsys, [img, '--model', str(tmp_path / 'cls.pth'), '--arch', 'tiny'])
    assert 'not a PyTorch checkpoint (starts with JPEG bytes)' in error_of(capsys, [img, '--model', img, '--arch', 'tiny'])
    torch.save(create_pose_model('tiny').state_dict(), tmp_path / 'plain.pth')
    assert '--arch' in error_of(capsys, [img, '--model', str(tmp_path / 'plain.pth')])
    assert "predicts 17 keypoints but the spec 'mpii16' has 16" in error_of(capsys, [img, *m, '--spec', 'mpii16'])
    assert 'nothing: no such file' in error_of(capsys, [img, '--model', str(tmp_path / 'nothing')])
    assert "'64x50'" in error_of(capsys, [img, *m, '--image-size', '64x50'])

def test_cli_spec_from_a_coco_json(coco_tiny, tmp_path, capsys):
    "A model of another K predicts with the spec of its category, given as a COCO json."
    cat = dict(id=1, name='hand', keypoints=['wrist', 'thumb', 'index', 'middle', 'ring'], skeleton=[[1, 2], [1, 3]])
    (tmp_path / 'hand.json').write_text(json.dumps(dict(images=[], annotations=[], categories=[cat])))
    torch.save(create_pose_model('tiny', num_joints=5).state_dict(), tmp_path / 'hand.pth')
    argv = [images(coco_tiny)[0], '--model', str(tmp_path / 'hand.pth'), '--arch', 'tiny', '--out', str(tmp_path / 'o')]
    assert 'pass the keypoint spec' in error_of(capsys, argv)
    assert main([*argv, '--spec', str(tmp_path / 'hand.json')]) == 0
    assert len(json.loads((tmp_path / 'o' / 'keypoints.json').read_text())[0]['keypoints']) == 15

def test_coco_image_id():
    assert coco_image_id('x/000000000785.jpg', 3) == 785 and coco_image_id('x/cat.png', 3) == 3

def test_console_script_help_says_whole_image():
    exe = Path(sys.executable).parent / 'adpd_predict'
    if not exe.exists(): pytest.skip(f'adpd_predict not installed in {exe.parent}')
    r = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'Without --boxes each image is one box' in r.stdout and 'COCO detection results' in r.stdout

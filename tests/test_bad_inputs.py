"Issue 19: bad inputs to the models, predict, export, losses and core each give one clear error naming the file or flag, or a counted skip."
import json
from pathlib import Path
import numpy as np, pytest, torch
from adpd.core import UserError, parse_size
from adpd.losses import ADPDLoss, TERMS, decoupled_kd
from adpd.models import (CheckpointError, ExportedModel, InputError, create_pose_model, load_pose_checkpoint, load_pose_model,
                         read_state_dict)
import adpd.predict as P, adpd.export as X

IMG = '000000000785.jpg'

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A tiny model's weights, the same with 3 NaNs in its joint layer, and a run folder with a card-less config."
    d = tmp_path_factory.mktemp('bad')
    torch.manual_seed(0)
    m = create_pose_model('tiny').eval()
    torch.save(m.state_dict(), d / 'good.pth')
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd['final_layer.weight'].view(-1)[:3] = float('nan'); sd['final_layer.bias'][0] = float('inf')
    torch.save(sd, d / 'teacher.pth')
    (d / 'run').mkdir()
    torch.save(m.state_dict(), d / 'run' / 'best.pth')
    (d / 'run' / 'config.json').write_text(json.dumps(dict(cmd='coco', student='tiny', image_size='64x48')))
    return d

NAN_MSG = 'teacher.pth: tensor final_layer.weight has 3 NaN values'

# --- non-finite weights are refused when read, naming the file and the tensor ---------------------------------------
def test_non_finite_weights_are_named_when_read(files):
    f = files / 'teacher.pth'
    for read in (lambda: read_state_dict(f), lambda: load_pose_checkpoint(create_pose_model('tiny'), f),
                 lambda: load_pose_model(f, arch='tiny'), lambda: create_pose_model('tiny', pretrained=f)):
        with pytest.raises(CheckpointError, match=NAN_MSG) as e: read()
        assert 'final_layer.bias' in str(e.value)                         # the other bad tensors are counted too
    sd = read_state_dict(f, check=False)                                   # the way to look inside such a file
    assert sd['final_layer.weight'].isnan().sum() == 3
    with pytest.raises(CheckpointError, match='dict checkpoint: tensor final_layer.weight'): read_state_dict(sd)
    assert read_state_dict(files / 'good.pth').keys() == sd.keys()

def test_predict_and_export_refuse_nan_weights(files, coco_tiny, tmp_path, capsys):
    assert P.main([str(coco_tiny / 'images' / IMG), '--model', str(files / 'teacher.pth'), '--arch', 'tiny', '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert NAN_MSG in err and err.count('\n') == 1 and not (tmp_path / 'o').exists()
    assert X.main([str(files / 'teacher.pth'), '--arch', 'tiny', '--out', str(tmp_path / 'n.onnx')]) == 2
    assert NAN_MSG in capsys.readouterr().err and not (tmp_path / 'n.onnx').exists()

def test_exported_nan_weights_are_named(files, tmp_path):
    m = create_pose_model('tiny').eval()
    with torch.no_grad(): m.final_layer.weight.view(-1)[:3] = float('nan')
    ts = X.export_student(m, tmp_path / 'nan.pt', 'torchscript', image_size=(48, 64))
    with pytest.raises(CheckpointError, match=r'nan.pt: tensor .*final_layer.weight has 3 NaN values'): ExportedModel(ts)
    pytest.importorskip('onnx'); pytest.importorskip('onnxruntime')
    ox = X.export_student(m, tmp_path / 'nan.onnx', 'onnx', image_size=(48, 64))
    with pytest.raises(CheckpointError, match=r'nan.onnx: tensor .*final_layer.weight has 3 NaN values'): ExportedModel(ox)

def test_predict_skips_non_finite_poses_with_a_count(files, coco_tiny, tmp_path, capsys, monkeypatch):
    "A model that outputs NaN (weights checked, yet e.g. an overflow) never puts a NaN in keypoints.json: the pose is skipped and counted."
    real = P.predict
    def nan_first(*a, **kw):
        kp, mv = real(*a, **kw)
        kp[0, 3] = np.nan
        return kp, mv
    monkeypatch.setattr(P, 'predict', nan_first)
    box = tmp_path / 'b.json'; box.write_text(json.dumps({IMG: [[270, 40, 230, 340], [10, 10, 50, 100]]}))
    out = tmp_path / 'o'
    assert P.main([str(coco_tiny / 'images' / IMG), '--model', str(files / 'run'), '--boxes', str(box), '--out', str(out)]) == 0
    res = json.loads((out / 'keypoints.json').read_text())
    assert len(res) == 1 and np.isfinite(res[0]['keypoints']).all()
    assert '1 pose with non-finite keypoints or scores skipped' in capsys.readouterr().err

# --- exported files that are not what their name says --------------------------------------------------------------
def test_exported_model_says_what_a_file_is_not(files, tmp_path):
    (tmp_path / 'w.pt').write_bytes((files / 'good.pth').read_bytes())
    with pytest.raises(InputError, match=r'w.pt: not a TorchScript model: a PyTorch checkpoint') as e: ExportedModel(tmp_path / 'w.pt')
    assert 'PytorchStreamReader' not in str(e.value)
    (tmp_path / 'notes.pt').write_text('hello')
    with pytest.raises(InputError, match=r"notes.pt: not a TorchScript model: .*text 'hello'"): ExportedModel(tmp_path / 'notes.pt')
    pytest.importorskip('onnxruntime')
    (tmp_path / 'b.onnx').write_text('garbage')
    with pytest.raises(InputError, match=r'b.onnx: not an ONNX model') as e: ExportedModel(tmp_path / 'b.onnx')
    assert 'ONNXRuntimeError' not in str(e.value)
    (tmp_path / 'w.onnx').write_bytes((files / 'good.pth').read_bytes())
    with pytest.raises(InputError, match=r'w.onnx: not an ONNX model: a PyTorch checkpoint'): ExportedModel(tmp_path / 'w.onnx')

# --- flags and paths of adpd_predict and adpd_export ---------------------------------------------------------------
def parse_error(parser, argv, capsys):
    with pytest.raises(SystemExit) as e: parser.parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]

@pytest.mark.parametrize('flag, value, what', [
    ('--device', 'bogus', "argument --device: 'bogus': not a device"), ('--device', 'cuda:99', "argument --device: 'cuda:99'"),
    ('--thr', 'nan', "argument --thr: 'nan': must be a finite number in [0, 1]"), ('--thr', '2', "argument --thr: '2'")])
def test_predict_flags_are_checked_at_parse_time(flag, value, what, capsys):
    assert what in parse_error(P.make_parser(), ['x.jpg', '--model', 'm', flag, value], capsys)

def test_predict_device_cuda_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert "argument --device: 'cuda': CUDA is not available" in parse_error(P.make_parser(), ['x.jpg', '--model', 'm', '--device', 'cuda'], capsys)

def test_predict_out_and_image_paths(files, coco_tiny, tmp_path, capsys):
    (tmp_path / 'afile').write_text('x')
    assert "--out" in parse_error(P.make_parser(), ['x.jpg', '--model', 'm', '--out', str(tmp_path / 'afile')], capsys)
    assert "a file, not a folder" in parse_error(P.make_parser(), ['x.jpg', '--model', 'm', '--out', str(tmp_path / 'afile' / 'sub')], capsys)
    assert P.main([str(tmp_path), '--model', str(files / 'run'), '--out', str(tmp_path / 'o')]) == 2
    assert f'{tmp_path}: a folder, not an image file' in capsys.readouterr().err
    img = str(coco_tiny / 'images' / IMG)          # --image-size is checked with the model's card, in one line
    assert P.main([img, '--model', str(files / 'run'), '--out', str(tmp_path / 'o'), '--image-size', '8x8']) == 2
    err = capsys.readouterr().err
    assert "--image-size: size '8x8': both sides must be at least 32" in err and err.count('\n') == 1

def test_export_out_is_checked(files, tmp_path, capsys):
    (tmp_path / 'afile').write_text('x')
    assert "--out" in parse_error(X.make_parser(), ['m.pth', '--out', str(tmp_path)], capsys)
    assert "a file, not a folder" in parse_error(X.make_parser(), ['m.pth', '--out', str(tmp_path / 'afile' / 'x.onnx')], capsys)
    assert "at least 32" in parse_error(X.make_parser(), ['m.pth', '--image-size', '4x4'], capsys)

def test_export_unwritable_out_names_it(files, tmp_path, capsys, monkeypatch):
    def refuse(*a, **kw): raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(X, 'atomic_write', refuse)
    out = tmp_path / 'x.pt'
    assert X.main([str(files / 'good.pth'), '--arch', 'tiny', '--format', 'torchscript', '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: cannot write it (Permission denied)" in err and err.count('\n') == 1 and '.tmp' not in err

# --- boxes entirely outside their image ----------------------------------------------------------------------------
def test_a_box_outside_the_image_is_a_counted_skip(files, coco_tiny, tmp_path, capsys):
    box = tmp_path / 'b.json'; box.write_text(json.dumps({IMG: [[5000, 5000, 50, 100], [270, 40, 230, 340]]}))
    out = tmp_path / 'o'
    assert P.main([str(coco_tiny / 'images' / IMG), '--model', str(files / 'run'), '--boxes', str(box), '--out', str(out)]) == 0
    res = json.loads((out / 'keypoints.json').read_text())
    assert len(res) == 1 and max(res[0]['keypoints'][0::3]) < 640
    assert f"{box}: 1 box entirely outside its image skipped ({IMG} box 0 [5000.0, 5000.0, 50.0, 100.0])" in capsys.readouterr().err
    m = create_pose_model('tiny').eval()
    with pytest.raises(InputError, match=r'box 0 \[5000.0, 5000.0, 50.0, 100.0\] lies entirely outside the image'):
        P.predict(m, coco_tiny / 'images' / IMG, [[5000, 5000, 50, 100]], image_size=(48, 64))
    P.predict(m, coco_tiny / 'images' / IMG, [[-10, -10, 50, 100]], image_size=(48, 64))       # partly inside: fine

# --- input sizes: one minimum, in parse_size -----------------------------------------------------------------------
def test_parse_size_minimum():
    for s in ('4x4', '8x8', '28x32', '32x16'):
        with pytest.raises(UserError, match='at least 32'): parse_size(s)
    assert parse_size('32x32') == (32, 32) and parse_size('64x48') == (48, 64)

# --- losses ---------------------------------------------------------------------------------------------------------
def test_nan_in_a_masked_joint_gives_zero_gradient():
    torch.manual_seed(0)
    s, t, tg = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    s[0, 1], t[1, 2, 3] = float('nan'), float('inf')
    s.requires_grad_(); t.requires_grad_()
    tw = torch.ones(2, 3); tw[0, 1] = tw[1, 2] = 0
    for T in (1., 2.):
        r = decoupled_kd(s, t, tg, tw, T=T)
        gs, gt = torch.autograd.grad(sum(v.sum() for v in r.values()), (s, t))
        assert all(v.isfinite().all() for v in r.values()) and gs.isfinite().all() and gt.isfinite().all()
        assert (gs[0, 1] == 0).all() and (gt[1, 2] == 0).all() and (gs[0, 0] != 0).any()
        clean_s, clean_t = s.detach().clone(), t.detach().clone()
        clean_s[0, 1], clean_t[1, 2] = 0, 0
        ref = decoupled_kd(clean_s.requires_grad_(), clean_t, tg, tw, T=T)
        torch.testing.assert_close(torch.autograd.grad(sum(v.sum() for v in ref.values()), clean_s)[0], gs)

@pytest.mark.parametrize('hw', [(1, 1), (2, 2), (3, 4), (4, 4)])
@pytest.mark.parametrize('faithful', [False, True])
def test_adpd_trains_on_one_sample_with_tiny_heatmaps(hw, faithful):
    loss = ADPDLoss(3, faithful=faithful).train()
    s = torch.rand(1, 3, *hw, requires_grad=True)
    out = loss(s, torch.rand(1, 3, *hw), torch.rand(1, 3, *hw), torch.ones(1, 3))
    out.backward()
    assert out.isfinite() and s.grad.isfinite().all() and all(p.grad is None or p.grad.isfinite().all() for p in loss.parameters())

def test_run_layer_weights_flags_name_the_nan_file(files):
    "`adpd_train --teacher-weights/--student-weights` read through `load_pose_checkpoint`: the file and tensor are named."
    from adpd.recipes import load_weights
    from adpd.run import TrainError
    with pytest.raises(TrainError, match=f'--teacher-weights: checkpoint .*{NAN_MSG}'): load_weights(create_pose_model('tiny'), files / 'teacher.pth', 'teacher', 'tiny')

def test_a_flipped_bit_in_a_run_file_is_refused_by_every_reader(tmp_path):
    "A weight file whose folder lists its sha256 (as `adpd.run.save_checked` writes `best.pth`/`final.pth`) is refused once changed."
    import json, torch
    from adpd.core import sha256
    from adpd.models import CHECKSUMS, CheckpointError, create_pose_model, load_pose_model
    torch.manual_seed(0)
    f = tmp_path / 'best.pth'
    torch.save(create_pose_model('tiny-w8').state_dict(), f)
    (tmp_path / CHECKSUMS).write_text(json.dumps({'best.pth': [sha256(f)]}))
    assert load_pose_model(f, arch='tiny-w8').K == 17                       # intact: loads
    raw = bytearray(f.read_bytes()); raw[len(raw) // 2] ^= 0x10; f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r'best.pth: does not match its sha256 in checksums.json'):
        load_pose_model(f, arch='tiny-w8')


def test_predict_checks_every_image_before_writing_anything(files, coco_tiny, tmp_path, capsys):
    "A bad image among good ones: one line naming it, and no drawing of the good ones left behind."
    (tmp_path / 'empty.jpg').write_bytes(b''); (tmp_path / 'notes.jpg').write_text('not an image')
    for bad, why in (('empty.jpg', 'empty image file'), ('notes.jpg', 'not an image file')):
        out = tmp_path / f'o-{bad}'
        assert P.main([str(coco_tiny / 'images' / IMG), str(tmp_path / bad), '--model', str(files / 'good.pth'), '--arch', 'tiny',
                       '--out', str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f'adpd_predict: error: {tmp_path / bad}: {why}' + err[err.index(why) + len(why):] and err.count('\n') == 1, err
        assert not out.exists()

@pytest.mark.parametrize('cats', ['5', '[{"keypoints": 5}]', '[{"name": "x", "keypoints": ["a", "b"], "skeleton": 3}]'])
def test_a_bad_spec_file_is_one_line(cats, tmp_path):
    f = tmp_path / 'spec.json'; f.write_text('{"categories": %s}' % cats)
    with pytest.raises(UserError, match=str(f)): P.parse_spec(f)

def test_export_refuses_a_format_the_name_contradicts_and_an_exported_model(files, tmp_path, capsys):
    good = files / 'good.pth'
    for fmt, name in (('torchscript', 'm.onnx'), ('onnx', 'm.pt')):
        assert X.main([str(good), '--arch', 'tiny', '--format', fmt, '--out', str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'adpd_export: error: --out {tmp_path / name}: ') and err.count('\n') == 1 and not list(tmp_path.glob('m.*'))
    ts = X.export_student(create_pose_model('tiny').eval(), tmp_path / 'e.pt', 'torchscript', image_size=(48, 64))
    assert X.main([str(ts), '--out', str(tmp_path / 'again.onnx')]) == 2
    assert 'already an exported model' in capsys.readouterr().err and not (tmp_path / 'again.onnx').exists()

"Export: ONNX and TorchScript heatmaps equal PyTorch's on random and real crops, the kit's decode gives the same keypoints, the `adpd_export` CLI."
import json, warnings
from pathlib import Path
import numpy as np, pytest, torch
from adpd.data import CocoKeypoints
from adpd.evaluate import predict_keypoints
from adpd.export import ExportedModel, FORMATS, export_student, main, parity
from adpd.models import create_pose_model
from adpd.predict import load_student, predict
from adpd.transforms import to_input
from conftest import quiet

ANN = 'person_keypoints_tiny.json'
SIZE = (96, 128)
EXT = dict(onnx='onnx', torchscript='pt')

def need(fmt):
    if fmt == 'onnx':
        pytest.importorskip('onnx', reason="ONNX export needs onnx: pip install -e '.[deploy]'")
        pytest.importorskip('onnxruntime', reason="reading .onnx needs onnxruntime: pip install -e '.[deploy]'")

def rel(a, b): return float((a - b).abs().max() / b.abs().max())

@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    out = {n: create_pose_model(n).eval() for n in ('tiny', 'resnet_18-d32')}     # resnet_*: BGR weights, converted in the graph
    with torch.no_grad(): out['tiny'].final_layer.bias.uniform_(-.1, .1)
    return out

@pytest.fixture
def val(coco_tiny): return quiet(CocoKeypoints, coco_tiny / ANN, coco_tiny / 'images', train=False, image_size=SIZE, heatmap_size=(24, 32))

@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('name', ['tiny', 'resnet_18-d32'])
def test_parity_random_and_real_crops(models, val, tmp_path, fmt, name):
    need(fmt)
    m = models[name]
    em = ExportedModel(quiet(export_student, m, tmp_path / f'm.{EXT[fmt]}', fmt, image_size=SIZE))
    torch.manual_seed(1)
    crops = torch.stack([val[i][0] for i in range(len(val))])           # real person crops of coco_tiny, uint8 RGB
    for x in (torch.randn(3, 3, SIZE[1], SIZE[0]), to_input(crops)):    # a batch size other than the traced one
        with torch.no_grad(): ref = m(x)
        out = em(x)
        assert out.shape == ref.shape and rel(out, ref) < 1e-4, (name, fmt, rel(out, ref))
    assert m.color == ('bgr' if name.startswith('resnet') else 'rgb')

@pytest.mark.parametrize('fmt', FORMATS)
def test_decode_on_exported_heatmaps_gives_the_same_keypoints(models, val, tmp_path, fmt):
    need(fmt)
    m = models['tiny']
    em = ExportedModel(quiet(export_student, m, tmp_path / f'm.{EXT[fmt]}', fmt, image_size=SIZE))
    kp, mv = predict_keypoints(m, val)
    kpe, mve = predict_keypoints(em, val)
    np.testing.assert_allclose(kpe, kp, atol=1e-3)        # pixels: the same peaks and the same quarter-pixel shifts
    np.testing.assert_allclose(mve, mv, rtol=1e-4, atol=1e-6)
    assert np.abs(kp - kp.mean(0)).max() > 1              # the keypoints vary, so the comparison means something

def test_exported_onnx_model_knows_its_input_size(models, coco_tiny, tmp_path):
    need('onnx')
    m = models['tiny']
    em = ExportedModel(quiet(export_student, m, tmp_path / 'm.onnx', image_size=SIZE))
    assert em.image_size == SIZE
    f, box = coco_tiny / 'images' / '000000000785.jpg', [[270, 40, 230, 340]]
    kp, mv = predict(em, f, box)                          # the ONNX input size, the spec by K
    kp0, mv0 = predict(m, f, box, image_size=SIZE)
    np.testing.assert_allclose(kp, kp0, atol=1e-3); np.testing.assert_allclose(mv, mv0, rtol=1e-4, atol=1e-6)

def test_exported_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='none.onnx: exported model not found'): ExportedModel(tmp_path / 'none.onnx')
    with pytest.raises(ValueError, match='format must be one of'): export_student(create_pose_model('tiny'), tmp_path / 'x', 'tflite')

# --- the CLI ---------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, models):
    d = tmp_path / 'run'; d.mkdir()
    torch.save(models['tiny'].state_dict(), d / 'final.pth')
    (d / 'config.json').write_text(json.dumps(dict(cmd='coco', student='tiny', image_size='128x96')))
    return d

@pytest.mark.parametrize('fmt', FORMATS)
def test_cli_exports_a_run_with_parity(run_dir, tmp_path, models, capsys, fmt):
    need(fmt)
    out = tmp_path / f'student.{EXT[fmt]}'
    assert main([str(run_dir), '--format', fmt, '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert str(out) in text and 'max relative difference' in text and '(B, 3, 128, 96)' in text
    em = ExportedModel(out)
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad(): assert rel(em(x), models['tiny'](x)) < 1e-4
    assert main([str(run_dir / 'final.pth'), '--format', fmt, '--out', str(tmp_path / f'small.{EXT[fmt]}'), '--image-size', '64x48']) == 0
    if fmt == 'onnx': assert ExportedModel(tmp_path / 'small.onnx').image_size == (48, 64)

def test_cli_default_output_name(run_dir, tmp_path, monkeypatch, capsys):
    need('onnx')
    monkeypatch.chdir(tmp_path)
    assert main([str(run_dir)]) == 0 and (tmp_path / 'tiny.onnx').is_file()

def test_cli_shipped_student_fp16(tmp_path, capsys):
    "The shipped student (stored in fp16, a timm backbone) exports in float32 with parity."
    need('onnx')
    from adpd.recipes import WEIGHTS
    assert main([str(WEIGHTS / 'student.pth'), '--out', str(tmp_path / 's.onnx')]) == 0
    st = load_student(WEIGHTS)
    assert parity(st.model, ExportedModel(tmp_path / 's.onnx'), st.image_size) < 1e-4

def test_parity_can_fail(models, tmp_path):
    "`parity` measures: another model's file is far off."
    m, other = models['tiny'], create_pose_model('tiny').eval()
    em = ExportedModel(export_student(other, tmp_path / 'o.pt', 'torchscript', image_size=SIZE))
    assert parity(m, em, SIZE) > 1e-2

def test_cli_errors(tmp_path, capsys):
    def error(argv, what):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith('adpd_export: error: ') and err.count('\n') == 1 and what in err, err
    torch.save(create_pose_model('tiny').state_dict(), tmp_path / 'plain.pth')
    error([str(tmp_path / 'plain.pth'), '--format', 'torchscript'], 'plain.pth: a checkpoint without a run config')
    error([str(tmp_path / 'missing.pth')], 'missing.pth: no such file')
    torch.save({'fc.weight': torch.zeros(3, 3)}, tmp_path / 'cls.pth')
    error([str(tmp_path / 'cls.pth'), '--arch', 'tiny', '--format', 'torchscript'], 'cls.pth: not the weights of a tiny pose model')
    (tmp_path / 'x.pth').write_text('hello')
    error([str(tmp_path / 'x.pth'), '--arch', 'tiny'], "x.pth: not a PyTorch checkpoint")
    for argv in (['--format', 'tflite'], ['--image-size', '10x7']):
        with pytest.raises(SystemExit) as e: main([str(tmp_path / 'plain.pth'), *argv])
        assert e.value.code == 2

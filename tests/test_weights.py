"Model-zoo weights: the colour order a checkpoint was trained on travels with the model; broken weight files give one clear error."
import copy, io, pickle, zipfile
from pathlib import Path
import numpy as np, pytest, torch
from torch import nn
from adpd.models import create_pose_model, load_pose_checkpoint, read_state_dict, set_color
from adpd.transforms import to_input, IMAGENET_MEAN, IMAGENET_STD
from adpd.synthetic import make_synthetic_coco
from adpd.train import main

# ---------------------------------------------------------------- colour order
def official_bgr_input(rgb):
    "What the official SimpleBaseline code feeds its network: the BGR image, ImageNet mean/std applied to B, G, R as they are."
    bgr = rgb.flip(1).float()
    m, s = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (bgr - m) / s

def lively(model):
    "Weights large enough that a channel swap changes the heatmaps a lot (the zoo init makes them ~1e-4)."
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)): nn.init.normal_(m.weight, std=(2 / m.weight[0].numel()) ** .5)
    return model.eval()

@pytest.fixture(scope='module')
def rgb():
    torch.manual_seed(1)
    return torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)

def test_resnet_sees_kit_rgb_as_the_official_bgr(rgb):
    "A SimpleBaseline model fed the kit's input computes what the official code computes from its BGR input."
    m = lively(create_pose_model('resnet_18'))
    assert m.color == 'bgr'
    with torch.no_grad():
        kit, official = m(to_input(rgb)), m.forward(official_bgr_input(rgb))     # `forward` alone: the raw network
        torch.testing.assert_close(kit, official, rtol=1e-5, atol=1e-5)
        assert (m.forward(to_input(rgb)) - official).abs().max() > 1e-2           # the swap matters for these weights
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m)), torch.jit.trace(m, to_input(rgb))):
            torch.testing.assert_close(other(to_input(rgb)), kit, rtol=1e-5, atol=1e-5)
        raw = set_color(copy.deepcopy(m), 'rgb')
        assert raw.color == 'rgb'
        torch.testing.assert_close(raw(official_bgr_input(rgb)), official, rtol=0, atol=0)

@pytest.mark.parametrize('name', ['hrnet_w18', 'tiny', 'mobilenet_v2'])
def test_rgb_models_are_unchanged(name, rgb):
    m = lively(create_pose_model(name))
    assert m.color == 'rgb'
    x = to_input(rgb)
    with torch.no_grad(): torch.testing.assert_close(m(x), m.forward(x), rtol=0, atol=0)

def test_color_argument_and_checkpoints(tmp_path, rgb):
    "`color=` overrides the name's default; `load_pose_checkpoint(color=)` sets it; mmpose checkpoints (trained on RGB) set 'rgb'."
    assert create_pose_model('resnet_18', color='rgb').color == 'rgb' and create_pose_model('tiny', color='bgr').color == 'bgr'
    assert create_pose_model('resnet_18-d64').color == 'bgr'
    with pytest.raises(ValueError, match="color must be 'rgb' or 'bgr', not 'hsv'"): create_pose_model('tiny', color='hsv')
    t = lively(create_pose_model('tiny', color='bgr'))
    x = to_input(rgb)
    with torch.no_grad(): torch.testing.assert_close(t(x), t.forward(official_bgr_input(rgb)), rtol=1e-5, atol=1e-5)
    sd = create_pose_model('resnet_18').state_dict()
    assert load_pose_checkpoint(create_pose_model('resnet_18'), sd).color == 'bgr'              # official / adpd layout: kept
    assert load_pose_checkpoint(create_pose_model('resnet_18'), sd, color='rgb').color == 'rgb'
    mm = {'backbone.' + k if not k.startswith(('deconv', 'final')) else 'keypoint_head.' + k: v for k, v in sd.items()}
    assert load_pose_checkpoint(create_pose_model('resnet_18'), mm).color == 'rgb'             # mmpose trains on RGB
    assert load_pose_checkpoint(create_pose_model('resnet_18'), mm, color='bgr').color == 'bgr'
    torch.save(sd, tmp_path / 'r18.pth')
    assert create_pose_model('resnet_18', pretrained=tmp_path / 'r18.pth').color == 'bgr'
    assert create_pose_model('resnet_18', pretrained=tmp_path / 'r18.pth', color='rgb').color == 'rgb'
    assert 'BGR' in load_pose_checkpoint.__doc__ and 'RGB' in load_pose_checkpoint.__doc__

# ---------------------------------------------------------------- broken weight files
def good_bytes(legacy=False):
    buf = io.BytesIO()
    torch.save(create_pose_model('tiny-w8').state_dict(), buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()

def not_a_checkpoint_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z: z.writestr('readme.txt', 'hello'); z.writestr('w/weights.bin', b'\0' * 64)
    return buf.getvalue()

BROKEN = {
    'empty': (lambda: b'', r'empty file \(0 bytes\)'),
    'truncated': (lambda: good_bytes()[:3000], r'truncated or corrupt zip archive'),
    'truncated-legacy': (lambda: good_bytes(legacy=True)[:3000], r'truncated or corrupt'),
    'text': (lambda: b'version https://git-lfs.github.com/spec/v1\noid sha256:abc\n', r"not a PyTorch checkpoint \(starts with text 'version https"),
    'zip': (not_a_checkpoint_zip, r'a zip archive but not a PyTorch checkpoint \(no data.pkl'),
    'jpeg': (lambda: b'\xff\xd8\xff\xe0\x00\x10JFIF\x00' + bytes(range(256)) * 4, r'not a PyTorch checkpoint \(starts with JPEG bytes\)'),
}

@pytest.mark.parametrize('kind', BROKEN)
def test_broken_weight_files_give_one_clear_error(kind, tmp_path):
    make, msg = BROKEN[kind]
    f = tmp_path / f'{kind}.pth'
    f.write_bytes(make())
    for fn in (read_state_dict, lambda p: load_pose_checkpoint(create_pose_model('tiny-w8'), p),
               lambda p: create_pose_model('tiny-w8', pretrained=p)):
        with pytest.raises(ValueError, match=f'checkpoint {f}: {msg}'): fn(f)

def test_good_files_still_load(tmp_path):
    for legacy in (False, True):
        (tmp_path / 'g.pth').write_bytes(good_bytes(legacy))
        assert read_state_dict(tmp_path / 'g.pth').keys() == create_pose_model('tiny-w8').state_dict().keys()

def mmpose_checkpoint(numpy1_names=False):
    "An mmpose-style checkpoint whose `meta` holds numpy values (arrays, np.float64), as mmpose's runner saves it."
    sd = {('backbone.' if k.startswith('body') else 'keypoint_head.') + k: v for k, v in create_pose_model('tiny-w8').state_dict().items()}
    obj = dict(meta=dict(epoch=210, hook_msgs=dict(best_score=np.float64(0.7412), best_ckpt='best.pth'),
                         mean=np.array([123.675, 116.28, 103.53]), flip_pairs=np.array([[1, 2], [3, 4]], dtype=np.int64),
                         scale=np.float32(1.25)), state_dict=sd)
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not numpy1_names)
    b = buf.getvalue()
    return b.replace(b'numpy._core.multiarray', b'numpy.core.multiarray') if numpy1_names else b   # as numpy 1.x pickled it

@pytest.mark.parametrize('numpy1_names', [False, True])
def test_mmpose_meta_with_numpy_values_loads_safely(numpy1_names, tmp_path):
    f = tmp_path / 'mmpose.pth'
    f.write_bytes(mmpose_checkpoint(numpy1_names))
    m = load_pose_checkpoint(create_pose_model('tiny-w8'), f)
    torch.testing.assert_close(m.final_layer.weight, torch.load(f, weights_only=False)['state_dict']['keypoint_head.final_layer.weight'])
    # still weights_only: a file that needs arbitrary code is refused
    import argparse
    torch.save({'state_dict': m.state_dict(), 'cfg': argparse.Namespace(a=1)}, tmp_path / 'cfg.pth')
    with pytest.raises(ValueError, match='cannot be read with weights_only=True'): read_state_dict(tmp_path / 'cfg.pth')

# ---------------------------------------------------------------- the same from the command line
@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    make_synthetic_coco(root, n_images=16, seed=0)
    return root

@pytest.mark.parametrize('kind, role', [('empty', 'teacher'), ('jpeg', 'teacher'), ('truncated', 'student'), ('zip', 'student')])
def test_cli_names_the_broken_weight_file(kind, role, synth, tmp_path, capsys):
    make, msg = BROKEN[kind]
    f = tmp_path / f'{kind}.pth'
    f.write_bytes(make())
    good = tmp_path / 'teacher.pth'
    torch.save(create_pose_model('tiny-w16').state_dict(), good)
    out = tmp_path / 'run'
    args = ['coco', '--data-root', str(synth), '--train-split', 'train', '--val-split', 'val', '--student', 'tiny-w8', '--teacher', 'tiny-w16',
            '--teacher-weights', str(f if role == 'teacher' else good), '--kd', 'adpd', '--epochs', '1', '--bs', '4', '--image-size', '64x48',
            '--eval-every', '0', '--no-bar', '--threads', '1', '--out', str(out)]
    if role == 'student': args += ['--student-weights', str(f)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith('adpd_train: error: ') and f'--{role}-weights' in err and str(f) in err and 'Traceback' not in err, err
    import re
    assert re.search(msg, err), err
    assert 'does not fit' not in err

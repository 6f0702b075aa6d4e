"Pose models: model-zoo names and shapes, checkpoint loading, cost, every model's shapes, training step and precision."
import argparse, json, warnings
import pytest, torch, torch.nn as nn, torchvision
from adpd.core import shared_data
from adpd.models import (POSE_MODELS, create_pose_model, load_pose_checkpoint, load_imagenet_weights, read_state_dict,
                         model_stats, joint_params, pose_hrnet, init_pose_weights)
from adpd.core import last_heatmaps
from adpd.transforms import encode_heatmaps

ALL = [*POSE_MODELS, 'timm:mobilenetv3_small_100']
ZOO = ['hrnet_w32', 'hrnet_w48', 'resnet_50', 'resnet_152']   # the model-zoo manifests

@pytest.fixture(scope='module')
def manifests():
    d = shared_data('checkpoint_keys')
    if d is None or not d.exists():
        pytest.skip("shared fixture 'checkpoint_keys' not found (set ADPD_SHARED_DATA or put shared/data beside the checkout)")
    return {n: [tuple(r) for r in json.loads((d / f'hrnet_official_pose_{n}_256x192.json').read_text())] for n in ZOO}

def from_manifest(rows):
    "Random tensors with the manifest's keys, shapes and dtypes."
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) if d == 'float32' else torch.randint(0, 9, s, generator=g) for k, s, d in rows}

def to_mmpose(sd, head):
    "mmpose layout: `backbone.*`, and `deconv_layers`/`final_layer` under `head` (`head.` in 1.x, `keypoint_head.` in 0.x)."
    return {'meta': {'mmpose_version': '1.3.0'},
            'state_dict': {(head if k.split('.')[0] in ('deconv_layers', 'final_layer') else 'backbone.') + k: v for k, v in sd.items()}}

def same_state(model, sd):
    msd = model.state_dict()
    return all(torch.equal(msd[k], v) for k, v in sd.items())

def n_params(m): return sum(p.numel() for p in m.parameters())

# --- the model zoo -------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ZOO)
def test_names_shapes_dtypes_equal_manifest(manifests, name):
    with torch.device('meta'): m = create_pose_model(name)
    assert [(k, list(v.shape), str(v.dtype)[6:]) for k, v in m.state_dict().items()] == [(k, list(s), d) for k, s, d in manifests[name]]

@pytest.mark.parametrize('name', ZOO)
def test_manifest_checkpoint_loads_in_every_wrapping(manifests, name, tmp_path):
    sd = from_manifest(manifests[name])
    m = create_pose_model(name)
    wrapped = [sd, {'state_dict': {'module.' + k: v for k, v in sd.items()}}, to_mmpose(sd, 'head.'), to_mmpose(sd, 'keypoint_head.'),
               {'best_state_dict': sd, 'model': 'pose_hrnet', 'epoch': 3}]
    for ck in wrapped:
        with torch.no_grad():
            for v in m.state_dict().values(): v.zero_()
        with warnings.catch_warnings():
            warnings.simplefilter('error')           # strict: not even a warning
            load_pose_checkpoint(m, ck)
        assert same_state(m, sd)
    # num_batches_tracked are optional (SimpleBaseline files lack them); nothing else is
    no_nbt = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    assert len(no_nbt) < len(sd)
    load_pose_checkpoint(m, no_nbt)
    k_drop = [k for k in no_nbt if k.endswith('running_var')][-1]
    with pytest.raises(ValueError, match=f"missing keys \\(1\\): {k_drop}"):
        load_pose_checkpoint(m, {k: v for k, v in no_nbt.items() if k != k_drop})
    # a tensor with a wrong shape is refused, naming the key and both shapes
    k = [k for k in sd if k.endswith('conv2.weight')][3]
    s = tuple(sd[k].shape)
    shapes = f"checkpoint \\({s[0]}, {s[1] + 1}, {s[2]}, {s[3]}\\) vs model \\({s[0]}, {s[1]}, {s[2]}, {s[3]}\\)"
    with pytest.raises(ValueError, match=f"{k}: {shapes}"):
        load_pose_checkpoint(m, {**sd, k: torch.zeros(s[0], s[1] + 1, *s[2:])})

def test_param_counts_match_the_paper():
    paper = dict(hrnet_w32=28.5, hrnet_w48=63.6, resnet_50=34.0, resnet_152=68.6)
    for name, mio in paper.items():
        with torch.device('meta'): m = create_pose_model(name)
        assert abs(n_params(m) / 1e6 - mio) <= .01 * mio, (name, n_params(m))

def test_macs_at_256x192(manifests):
    "MACs (FlopCounterMode / 2, 10⁹): HRNet within 10% of the paper, all equal to the manifest README; the papers' counter gives theirs."
    readme = dict(hrnet_w32=7.65, hrnet_w48=15.69, resnet_50=5.43, resnet_152=12.70)
    paper = dict(hrnet_w32=7.1, hrnet_w48=14.6, resnet_50=8.9, resnet_152=15.7)
    for name in ZOO:
        with torch.device('meta'): st = model_stats(create_pose_model(name), (192, 256))
        assert abs(st['gmacs'] - readme[name]) <= .005 * readme[name], (name, st)
        assert abs(st['gflops_paper'] - paper[name]) <= .011 * paper[name], (name, st)
        if name.startswith('hrnet'): assert abs(st['gmacs'] - paper[name]) <= .10 * paper[name], (name, st)

def test_mac_counting_by_hand():
    toy = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.Linear(16, 5))
    st = model_stats(toy, (8, 8), n_runs=2)   # 8×8 → 8×8 → 8×8 → 16×16 → linear on 4·16 rows
    conv, grouped, deconv, lin = 8 * 3 * 9 * 64, 8 * 2 * 9 * 64, 8 * 64 * 4 * 16, 4 * 16 * 16 * 5
    assert st['gmacs'] * 1e9 == pytest.approx(conv + grouped + deconv + lin)
    assert st['gflops_paper'] * 2 ** 30 == pytest.approx(conv + grouped + 4 * deconv + lin)
    assert st['params'] == n_params(toy) and st['latency_ms'] > 0 and toy.training

def test_stats_on_cpu_equal_meta():
    m = create_pose_model('hrnet_w18')
    with torch.device('meta'): mm = create_pose_model('hrnet_w18')
    a, b = model_stats(m, (96, 128), n_runs=1), model_stats(mm, (96, 128))
    assert a['gmacs'] == pytest.approx(b['gmacs']) and a['params'] == b['params'] and b['latency_ms'] is None and a['latency_ms'] > 0

# --- every model ---------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ALL)
def test_output_shapes(name):
    m = create_pose_model(name).eval()
    for h, w in ((256, 192), (256, 256)):
        with torch.inference_mode(): out = m(torch.randn(1, 3, h, w))
        outs = out if name.startswith('hourglass') else [out]
        if name.startswith('hourglass'): assert isinstance(out, list) and len(out) == int(name.split('_')[1])
        assert [o.shape for o in outs] == [(1, 17, h // 4, w // 4)] * len(outs)

@pytest.mark.parametrize('name', ALL)
def test_training_step_decreases_mse(name):
    "One Adam step (lr 1e-4) on a fixed batch of 64×64 crops lowers the MSE to gaussian targets (all stacks for the hourglass)."
    torch.manual_seed(0)
    m = create_pose_model(name).train()
    x = torch.randn(2, 3, 64, 64)
    hm, tw = encode_heatmaps(torch.rand(2, 17, 2) * 15, torch.ones(2, 17), (16, 16), sigma=1)
    mse = lambda out: sum(((o - hm) ** 2).mean() for o in (out if isinstance(out, list) else [out]))
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    l0 = mse(m(x)); l0.backward(); opt.step()
    assert all(p.grad is not None for p in m.parameters())
    with torch.no_grad(): l1 = mse(m(x))
    assert l1 < l0 * .995, (l0.item(), l1.item())

@pytest.mark.parametrize('name', ALL)
def test_channels_last_autocast_inference_mode(name):
    m = create_pose_model(name).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    for dt in (torch.bfloat16, torch.float16):
        with torch.inference_mode(), torch.autocast('cpu', dtype=dt): y = last_heatmaps(m(x))
        assert y.shape == (2, 17, 16, 16) and y.dtype == dt and torch.isfinite(y).all(), (dt, y.dtype)

@pytest.mark.parametrize('name', ['hrnet_w18', 'resnet_18', 'shufflenet_v2_x1_0', 'mobilenet_v2', 'hourglass_4', 'timm:mobilenetv3_small_100'])
def test_autocast_training_step(name):
    "Forward and backward under bf16 and fp16 autocast with channels_last, in train mode: finite loss and gradients (one model per family)."
    m = create_pose_model(name).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    for dt in (torch.bfloat16, torch.float16):
        m.zero_grad()
        with torch.autocast('cpu', dtype=dt):
            out = m(x)
            loss = sum((o.float() - .1).pow(2).mean() for o in (out if isinstance(out, list) else [out]))
        loss.backward()
        assert last_heatmaps(out).dtype == dt and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)

# --- loading: messages, adaptation, files --------------------------------------------------------
def test_missing_and_unexpected_in_one_message():
    src = pose_hrnet(18).state_dict()
    bad = {k: v for k, v in src.items() if not k.startswith('final_layer')} | {'head.extra.weight': torch.zeros(2)}
    msg = r"missing keys \(2\): final_layer.bias, final_layer.weight \| unexpected keys \(1\): head.extra.weight"
    with pytest.raises(ValueError, match=msg):
        load_pose_checkpoint(pose_hrnet(18), bad)
    m = pose_hrnet(18)
    with pytest.warns(UserWarning, match='missing keys'): load_pose_checkpoint(m, bad, strict=False)
    assert same_state(m, {k: v for k, v in bad.items() if k in src})

def test_other_number_of_joints_only_if_asked():
    src = pose_hrnet(18)
    with torch.no_grad(): src.final_layer.weight.normal_()
    sd = src.state_dict()
    msg = r"final_layer.weight: checkpoint \(17, 18, 1, 1\) vs model \(16, 18, 1, 1\) \(another number of joints"
    with pytest.raises(ValueError, match=msg):
        load_pose_checkpoint(pose_hrnet(18, 16), sd)
    m = pose_hrnet(18, 16)
    fresh = m.final_layer.weight.detach().clone()
    load_pose_checkpoint(m, sd, adapt_final=True)
    assert torch.equal(m.final_layer.weight, fresh) and torch.equal(m.layer1[0].conv1.weight, sd['layer1.0.conv1.weight'])
    idx = [16 - i for i in range(16)]
    load_pose_checkpoint(m, sd, adapt_final=idx)
    assert torch.equal(m.final_layer.weight, sd['final_layer.weight'][idx]) and torch.equal(m.final_layer.bias, sd['final_layer.bias'][idx])
    with pytest.raises(ValueError, match=r'indices must lie in \[0, 17\)'): load_pose_checkpoint(m, sd, adapt_final=[17] * 16)

def test_hourglass_joint_layers_adapt_on_both_axes():
    src = create_pose_model('hourglass_4', num_joints=17)
    assert joint_params(src)['merge_heatmaps.2.weight'] == 1 and joint_params(src)['final_layers.3.bias'] == 0
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    m = load_pose_checkpoint(create_pose_model('hourglass_4', num_joints=3), sd, adapt_final=[5, 0, 16])
    assert torch.equal(m.merge_heatmaps[1].weight, sd['merge_heatmaps.1.weight'][:, [5, 0, 16]])
    assert torch.equal(m.final_layers[3].weight, sd['final_layers.3.weight'][[5, 0, 16]])

def test_files_wrappers_and_own_students(tmp_path):
    # fastai's Learner.save layout ({'model', 'opt'}) of a timm student, through a file
    s = create_pose_model('timm:mobilenetv3_small_100')
    with torch.no_grad(): s.final_layer.weight.normal_()
    torch.save({'model': s.state_dict(), 'opt': {'lr': 1e-3}}, tmp_path / 'student.pth')
    m = load_pose_checkpoint(create_pose_model('timm:mobilenetv3_small_100'), tmp_path / 'student.pth')
    assert same_state(m, s.state_dict())
    # a file needing arbitrary unpickling is refused unless trusted
    torch.save({'state_dict': s.state_dict(), 'cfg': argparse.Namespace(a=1)}, tmp_path / 'cfg.pth')
    with pytest.raises(ValueError, match='cfg.pth: cannot be read with weights_only=True'): read_state_dict(tmp_path / 'cfg.pth')
    assert read_state_dict(tmp_path / 'cfg.pth', weights_only=False).keys() == s.state_dict().keys()
    with pytest.raises(FileNotFoundError, match='nope.pth: no such file'): load_pose_checkpoint(m, tmp_path / 'nope.pth')
    with pytest.raises(TypeError, match=r"entries \['epoch'\] are not tensors"): read_state_dict({'w': torch.zeros(1), 'epoch': 3})
    both = {'state_dict': {'a': torch.zeros(1)}, 'best_state_dict': {'a': torch.ones(1)}}
    assert read_state_dict(both)['a'] == 0 and read_state_dict(both, key='best_state_dict')['a'] == 1
    assert list(read_state_dict({'module.module.x': torch.zeros(1)})) == ['x']

# --- creation, ImageNet weights, init ------------------------------------------------------------
def test_create_errors():
    with pytest.raises(ValueError, match="unknown model 'hrnet_w40'; known: hrnet_w18, hrnet_w32"): create_pose_model('hrnet_w40')
    with pytest.raises(ValueError, match='num_joints must be a positive int'): create_pose_model('resnet_18', num_joints=0)
    with pytest.raises(ValueError, match='nothing is downloaded'): create_pose_model('resnet_18', pretrained=True)
    with pytest.raises(ValueError, match='no ImageNet backbone'): create_pose_model('hourglass_4', pretrained={'x': torch.zeros(1)})

def test_imagenet_weights_from_local_files(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / 'resnet18.pth')
    m = create_pose_model('resnet_18', pretrained=tmp_path / 'resnet18.pth')
    assert same_state(m, {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')})
    assert m.final_layer.weight.std() < .002 and m.deconv_layers[0].weight.std() < .002   # the head keeps the HRNet-family init
    # a torchvision light student
    mb = torchvision.models.mobilenet_v2(weights=None)
    m = create_pose_model('mobilenet_v2', pretrained=mb.state_dict())
    assert torch.equal(m.backbone.features[3].conv[1][0].weight, mb.features[3].conv[1][0].weight)
    # an HRNet-Image-Classification file: classifier and last-unit fusion extras are ignored
    ref = pose_hrnet(18)
    with torch.no_grad():
        for v in ref.state_dict().values(): v.normal_() if v.is_floating_point() else None
    inet = {k: v for k, v in ref.state_dict().items() if not k.startswith('final_layer')}
    inet |= {'final_layer.0.weight': torch.zeros(2048, 1024, 1, 1), 'classifier.weight': torch.zeros(1000, 2048),
             'stage4.2.fuse_layers.1.0.0.weight': torch.zeros(36, 72, 1, 1), 'incre_modules.0.0.conv1.weight': torch.zeros(32, 18, 1, 1)}
    m = pose_hrnet(18)
    rep = load_imagenet_weights(m, inet)
    assert same_state(m, {k: v for k, v in inet.items() if k in m.state_dict()}) and rep['missing'] == []
    assert sorted(rep['ignored']) == ['classifier.weight', 'final_layer.0.weight', 'incre_modules.0.0.conv1.weight',
                                      'stage4.2.fuse_layers.1.0.0.weight']
    bad = {**inet, 'layer1.0.conv1.weight': torch.zeros(64, 64, 3, 3)}
    with pytest.raises(ValueError, match=r'layer1.0.conv1.weight: checkpoint \(64, 64, 3, 3\) vs model \(64, 64, 1, 1\)'):
        load_imagenet_weights(m, bad)
    with pytest.raises(ValueError, match='no key matches the backbone'): load_imagenet_weights(m, {'foo.weight': torch.zeros(1)})

def test_timm_imagenet_and_pose_checkpoint_as_pretrained():
    import timm
    cls = timm.create_model('mobilenetv3_small_100')
    m = create_pose_model('timm:mobilenetv3_small_100', pretrained=cls.state_dict())
    assert torch.equal(m.backbone.conv_stem.weight, cls.conv_stem.weight)
    assert torch.equal(m.backbone.blocks[2][0].conv_pw.weight, cls.blocks[2][0].conv_pw.weight)
    # a whole pose checkpoint given as `pretrained` loads completely
    src = pose_hrnet(18)
    with torch.no_grad(): src.final_layer.weight.normal_()
    m = create_pose_model('hrnet_w18', pretrained={'state_dict': {'module.' + k: v for k, v in src.state_dict().items()}})
    assert same_state(m, src.state_dict())

def test_hrnet_family_init():
    m = create_pose_model('hrnet_w18')
    convs = [c.weight for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert all(abs(w.std().item() - .001) < 3e-4 for w in convs if w.numel() > 1000)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) and not b.bias.any() for b in bns)
    s = create_pose_model('shufflenet_v2_x1_0')   # students: library init in the backbone, HRNet init in the head
    assert s.backbone.conv1[0].weight.std() > .01 and s.deconv_layers[3].weight.std() < .002 and not s.final_layer.bias.any()
    assert init_pose_weights(nn.Conv2d(3, 3, 1)).weight.std() < .01

def test_any_input_size_and_timm_kwargs():
    m = create_pose_model('hrnet_w18').eval()
    with torch.no_grad(): assert m(torch.randn(1, 3, 80, 60)).shape == (1, 17, 20, 15)   # not a multiple of 32
    v = create_pose_model('timm:vit_tiny_patch16_224', num_joints=5, img_size=(64, 48)).eval()   # stride 16: two deconvs
    assert len(v.deconv_layers) == 6
    with torch.no_grad(): assert v(torch.randn(1, 3, 64, 48)).shape == (1, 5, 16, 12)
    for n in ('resnet_18', 'mobilenet_v2'):
        with pytest.raises(ValueError, match='input 64×48 is not a multiple of its backbone stride 32'):
            create_pose_model(n)(torch.randn(1, 3, 64, 48))

def test_from_scratch_backbones_keep_the_standard_init():
    "N(0, 0.001) where the HRNet family uses it (the whole HRNet, every head); Kaiming in from-scratch ResNet and timm backbones."
    r = create_pose_model('resnet_18')
    assert .02 < r.conv1.weight.std() and .02 < r.layer3[0].conv1.weight.std()           # torchvision's kaiming_normal_
    assert r.deconv_layers[0].weight.std() < .002 and r.final_layer.weight.std() < .002
    f = create_pose_model('fpn:resnet10t', fpn_channels=32)
    assert f.backbone.conv1[0].weight.std() > .02 and f.final_layer.weight.std() < .002
    with torch.no_grad(): assert f.eval()(torch.zeros(1, 3, 64, 48)).shape == (1, 17, 16, 12)

def test_fpn_names_and_errors():
    with pytest.raises(ValueError, match=r'known: .*timm:<any timm model>, fpn:<timm model>'): create_pose_model('fpn-resnet18')
    with pytest.raises(ValueError, match='no stride-4 stage'): create_pose_model('fpn:vit_tiny_patch16_224')

@pytest.mark.parametrize('name', ['tiny', 'tiny-w8', 'resnet_18', 'hrnet_w18', 'mobilenet_v2'])
def test_every_family_marks_its_joint_layer(name):
    "A checkpoint of another K can be adapted (and a K mismatch explained) only if the joint layer is known."
    m = create_pose_model(name, num_joints=5)
    jp = joint_params(m)
    sd = m.state_dict()
    assert jp and all(sd[k].shape[ax] == 5 for k, ax in jp.items())

"The model card: written by every producer, read by one `load_pose_model` (run folders old and new, shipped weights, ONNX, TorchScript, zoo files); `adpd_predict` says when a model has only seen synthetic people."
import json, shutil, warnings
from pathlib import Path
import pytest, torch
from adpd.core import COCO17, MPII16, UserError, sha256
from adpd.models import (CARD_FILE, CARD_VERSION, CardError, InputError, ModelCard, WEIGHTS, create_pose_model, data_provenance,
                         load_pose_model, read_card, write_card)
from adpd.export import export_student, main as export_main
from adpd.predict import main as predict_main
from adpd.train import main as train_main
from conftest import quiet

FIELDS = ('arch', 'image_size', 'heatmap_size', 'color', 'mean', 'std', 'data', 'command', 'version', 'metrics')

def same_card(a:ModelCard, b:ModelCard):
    assert {f: getattr(a, f) for f in FIELDS} == {f: getattr(b, f) for f in FIELDS}
    assert (a.spec.name, a.spec.names, a.spec.flip_pairs, a.spec.skeleton) == (b.spec.name, b.spec.names, b.spec.flip_pairs, b.spec.skeleton)
    assert a.spec.sigmas.tolist() == b.spec.sigmas.tolist()

@pytest.fixture(scope='module')
def coco_run(tmp_path_factory):
    "A one-epoch `adpd_train coco` run of a tiny student on the shared COCO fixture (real photographs), in the COCO folder layout."
    from conftest import fixture_dir
    src, tmp = fixture_dir('coco_tiny'), tmp_path_factory.mktemp('coco')
    root = tmp / 'coco'
    (root / 'annotations').mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (root / 'annotations' / f'person_keypoints_{split}.json').symlink_to(src / 'person_keypoints_tiny.json')
        (root / split).symlink_to(src / 'images', target_is_directory=True)
    out = tmp / 'run'
    assert quiet(train_main, ['coco', '--data-root', str(root), '--student', 'tiny-w8', '--kd', 'none', '--epochs', '1', '--bs', '4',
                              '--image-size', '64x48', '--eval-every', '0', '--no-bar', '--threads', '1', '--out', str(out)]) == 0
    return out

# --- the card itself ----------------------------------------------------------------------------

def test_card_json_round_trip_and_version(tmp_path):
    c = ModelCard('tiny-w8', (48, 64), MPII16, data=data_provenance('mpii-train'), command='adpd_train mpii', metrics=dict(PCKh=.5))
    same_card(read_card(write_card(c, tmp_path / 'c.json')), c)
    assert read_card(tmp_path / 'c.json').spec is MPII16 and c.heatmap_size == (12, 16) and not c.synthetic
    d = c.to_dict()
    assert d['format'] == 'adpd-model-card' and d['version'] == CARD_VERSION
    (tmp_path / 'new.json').write_text(json.dumps({**d, 'version': CARD_VERSION + 1}))
    with pytest.raises(CardError, match=rf"new.json: model card version {CARD_VERSION + 1}; .*upgrade adpd"): read_card(tmp_path / 'new.json')

def test_data_provenance_hashes_the_annotation_file(tmp_path):
    (tmp_path / 'ann.json').write_text('{"images": []}')
    d = data_provenance('mine', tmp_path / 'ann.json')
    assert d == dict(name='mine', synthetic=False, path=str((tmp_path / 'ann.json').resolve()), sha256=sha256(tmp_path / 'ann.json'))

@pytest.mark.parametrize('content, what', [('{"format": "adpd-model-card"', 'not valid json'),
                                           (json.dumps(dict(model='tiny')), 'not an adpd model card'),
                                           (json.dumps(dict(format='adpd-model-card', version=1, arch='tiny')), 'without image_size, spec'),
                                           ('__CARD__bgra', "color must be 'rgb' or 'bgr'")])
def test_a_bad_card_names_the_file(tmp_path, content, what, capsys):
    run = tmp_path / 'run'; run.mkdir()
    torch.save(create_pose_model('tiny').state_dict(), run / 'best.pth')
    if content.startswith('__CARD__'):
        content = json.dumps({**ModelCard('tiny', (48, 64), COCO17).to_dict(), 'color': content[8:]})
    (run / CARD_FILE).write_text(content)
    with pytest.raises(CardError, match=what) as e: load_pose_model(run)
    assert str(run / CARD_FILE) in str(e.value) and isinstance(e.value, UserError)
    import cv2, numpy as np
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.zeros((32, 32, 3), np.uint8))            # a good image: the card is what fails
    assert predict_main([str(tmp_path / 'a.jpg'), '--model', str(run), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('adpd_predict: error: ') and str(run / CARD_FILE) in err and err.count('\n') == 1

# --- one reader of every saved model -------------------------------------------------------------

def test_train_export_load_round_trip(coco_run, tmp_path, capsys):
    "The card `adpd_train` writes is the card of the run folder, of each of its weight files, and of the ONNX and TorchScript exports."
    assert (coco_run / CARD_FILE).is_file()
    card = read_card(coco_run / CARD_FILE)
    assert (card.arch, card.image_size, card.K, card.synthetic) == ('tiny-w8', (48, 64), 17, False)
    assert card.data['sha256'] == sha256(coco_run.parent / 'coco' / 'annotations' / 'person_keypoints_train2017.json')
    assert card.command.startswith('adpd_train coco')
    for p in (coco_run, *(coco_run / n for n in ('best.pth', 'final.pth') if (coco_run / n).is_file())):
        same_card(load_pose_model(p).card, card)
    same_card(load_pose_model(coco_run / 'checkpoint.pth').card.replace(metrics=card.metrics), card)   # its own card: before the final scores
    assert torch.load(coco_run / 'checkpoint.pth', weights_only=True)['card']['arch'] == 'tiny-w8'
    st = load_pose_model(coco_run)
    for fmt, ext in (('onnx', 'onnx'), ('torchscript', 'pt')):
        assert quiet(export_main, [str(coco_run), '--format', fmt, '--out', str(tmp_path / f'm.{ext}')]) == 0
        ex = load_pose_model(tmp_path / f'm.{ext}')
        same_card(ex.card, card)
        x = torch.randn(2, 3, 64, 48)
        with torch.no_grad(): torch.testing.assert_close(ex.model(x), st.model(x), rtol=1e-4, atol=1e-5)
    same_card(read_card(tmp_path / 'm.card.json'), card)                 # TorchScript: the card beside the file too
    assert 'card: tiny-w8' in capsys.readouterr().out

def test_shipped_weights_carry_a_synthetic_card():
    for role, f in (('student', WEIGHTS), ('student', WEIGHTS / 'student.pth'), ('teacher', WEIGHTS / 'teacher.pth')):
        pm = load_pose_model(f)
        info = json.loads((WEIGHTS / f'{role}.json').read_text())
        assert pm.path == WEIGHTS / f'{role}.pth' and pm.arch == info['model'] and pm.image_size == (96, 128)
        assert pm.card.synthetic and pm.spec is COCO17 and next(pm.model.parameters()).dtype == torch.float32
        if 'card' in info: same_card(pm.card, read_card(WEIGHTS / f'{role}.json'))

def test_shipped_weights_are_sha256_checked(tmp_path):
    for f in ('student.pth', 'student.json'): shutil.copy(WEIGHTS / f, tmp_path / f)
    assert load_pose_model(tmp_path).card.synthetic
    b = bytearray((tmp_path / 'student.pth').read_bytes()); b[-100] ^= 1
    (tmp_path / 'student.pth').write_bytes(bytes(b))
    with pytest.raises(InputError, match=r'student.pth: sha256 .* does not match .* recorded in student.json'): load_pose_model(tmp_path)

def test_zoo_and_mmpose_files_with_arch(tmp_path):
    torch.manual_seed(0)
    net = create_pose_model('resnet_18-d32')
    torch.save(dict(state_dict=net.state_dict()), tmp_path / 'official.pth')                        # the official training wrapper
    torch.save(dict(meta=dict(mmpose_version='1.3.0'), state_dict={('head.' if k.startswith(('deconv', 'final')) else 'backbone.') + k: v
                                                                    for k, v in net.state_dict().items()}), tmp_path / 'mmpose.pth')
    with pytest.raises(InputError, match='official.pth: a checkpoint without a run config or model card beside it.*--arch'):
        load_pose_model(tmp_path / 'official.pth')
    for f, color in (('official.pth', 'bgr'), ('mmpose.pth', 'rgb')):            # SimpleBaseline trained on BGR, mmpose on RGB
        pm = load_pose_model(tmp_path / f, arch='resnet_18-d32')
        assert (pm.arch, pm.image_size, pm.spec, pm.card.color, pm.card.data, pm.card.synthetic) == ('resnet_18-d32', (192, 256), COCO17, color, {}, False)
        assert torch.equal(pm.model.final_layer.weight, net.final_layer.weight)
    pm = load_pose_model(tmp_path / 'mmpose.pth', arch='resnet_18-d32', image_size=(96, 128))
    assert pm.image_size == (96, 128) and pm.card.heatmap_size == (24, 32)

def test_onnx_without_a_card_loads_with_unknown_provenance(tmp_path):
    f = quiet(export_student, create_pose_model('tiny', num_joints=16), tmp_path / 'm.onnx', image_size=(48, 64))
    pm = load_pose_model(f)
    assert (pm.image_size, pm.spec, pm.card.data, pm.card.synthetic) == ((48, 64), MPII16, {}, False)

# --- run folders written before cards ------------------------------------------------------------

def test_old_run_folders_load(tmp_path, coco_tiny):
    torch.manual_seed(0)
    root = tmp_path / 'data'; (root / 'annotations').mkdir(parents=True)
    cat = dict(id=1, name='hand', keypoints=['wrist', 'thumb', 'index', 'middle', 'ring'], skeleton=[[1, 2]])
    (root / 'annotations' / 'person_keypoints_val2017.json').write_text(json.dumps(dict(images=[], annotations=[], categories=[cat])))
    shapes = {'coco': (dict(cmd='coco', student='tiny', image_size='64x48', data_root=str(root), kd='adpd'), 5),
              'mpii': (dict(cmd='mpii', student='tiny', image_size='64x64'), 16),
              'demo': (dict(kd='adpd', seed=0, student=json.loads((WEIGHTS / 'student.json').read_text())['sha256'], teacher='0' * 64), None)}
    for name, (cfg, K) in shapes.items():
        run = tmp_path / name; run.mkdir()
        (run / 'config.json').write_text(json.dumps(cfg))
        if K is None: shutil.copy(WEIGHTS / 'student.pth', run / 'final.pth')
        else: torch.save(create_pose_model('tiny', num_joints=K).state_dict(), run / 'best.pth')
    c = load_pose_model(tmp_path / 'coco').card
    assert (c.arch, c.image_size, c.spec.name, c.K, c.data['name'], c.synthetic) == ('tiny', (48, 64), 'hand', 5, 'coco', False)
    c = load_pose_model(tmp_path / 'mpii').card
    assert (c.image_size, c.spec, c.synthetic) == ((64, 64), MPII16, False)
    c = load_pose_model(tmp_path / 'demo').card
    assert (c.arch, c.image_size, c.synthetic) == ('fpn:mobilenetv3_small_050-d32', (96, 128), True)
    legacy = {k: v for k, v in json.loads((WEIGHTS / 'student.json').read_text()).items() if k != 'card'}   # shipped, before cards
    (tmp_path / 'old').mkdir(); shutil.copy(WEIGHTS / 'student.pth', tmp_path / 'old' / 'student.pth')
    (tmp_path / 'old' / 'student.json').write_text(json.dumps(legacy))
    c = load_pose_model(tmp_path / 'old').card
    assert (c.arch, c.image_size, c.synthetic, c.metrics['AP']) == (legacy['model'], (96, 128), True, legacy['metrics']['AP'])

# --- adpd_predict tells the user what the model has seen -----------------------------------------

def test_predict_warns_for_a_synthetic_model_only(coco_run, coco_tiny, tmp_path, capsys):
    img = str(coco_tiny / 'images' / '000000000785.jpg')
    assert predict_main([img, '--model', str(WEIGHTS), '--out', str(tmp_path / 'a')]) == 0
    out, err = capsys.readouterr()
    assert 'card: fpn:mobilenetv3_small_050-d32' in out and 'synthetic people' in out
    assert err.count('warning:') == 1 and 'only ever seen the synthetic benchmark' in err and 'adpd_train coco' in err
    assert predict_main([img, '--model', str(coco_run), '--out', str(tmp_path / 'b')]) == 0
    out, err = capsys.readouterr()
    assert 'card: tiny-w8' in out and 'coco' in out and 'warning' not in err

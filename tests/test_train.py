"The `adpd_train` command: the quick demo end to end, exact resume, atomic checkpoints, two-process training, COCO and MPII layouts, clear errors."
import json, os, re, shutil, socket, subprocess, sys
from pathlib import Path
import pytest, torch
from adpd.train import main, make_parser, config_from_args
from conftest import coco_args
from adpd.run import load_checkpoint
from adpd.recipes import SHIPPED
from adpd.models import create_pose_model as build_model
from adpd.models import load_pose_checkpoint, read_card

ENV = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore')
BIN = Path(sys.executable).parent

def adpd_train(*args, launcher=(sys.executable, '-m', 'adpd.train'), timeout=240, cwd=None):
    "Run the command in a fresh process; the CompletedProcess (stdout and stderr as text)."
    return subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)

def sd_equal(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], msg=lambda m: f'{k}: {m}', **tol)

# ---------------------------------------------------------------- demo
KINDS = ('none', 'fpd', 'kl', 'dkd', 'adpd')

def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / 'demo'
    r = adpd_train('demo', '--quick', '--no-bar', '--threads', '1', '--data-root', 'data', '--out', 'demo', cwd=tmp_path)   # relative paths
    assert r.returncode == 0, r.stderr[-3000:]
    table = [l for l in r.stdout.splitlines() if l.startswith('| ')]
    assert table[0].startswith('| run | model | params (M) | epochs | speed-up (b1 / b32) | latency, ms/crop (b1 / b32) | AP | AP50 | PCK | seeds |')
    assert [l.split('|')[1].strip() for l in table[1:]] == ['teacher (shipped)', 'student (shipped, before fine-tuning)',
                                                            'student, no KD', 'student + FPD', 'student + KL', 'student + DKD', 'student + ADPD']
    assert all(re.search(r'\| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| 2 \|$', l) for l in table[3:]), table
    for pair in ('FPD − no KD', 'KL − no KD', 'DKD − no KD', 'ADPD − no KD', 'ADPD − DKD'): assert f'{pair}: AP' in r.stdout, pair
    assert 'paired over 2 seeds' in r.stdout and 'ADPD, over every epoch of every seed: weights' in r.stdout
    assert (out / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    assert len((out / 'results.csv').read_text().splitlines()) == 1 + 2 + 2 * len(KINDS)
    assert (out / 'results.md').read_text().startswith(table[0])
    # one cohort per seed: one run folder, one folder per member
    res = {s: json.loads((out / f'seed{s}' / 'results.json').read_text()) for s in (0, 1)}
    assert all(list(r['members']) == list(KINDS) and all(0 <= m['metrics']['AP'] <= 1 for m in r['members'].values()) for r in res.values())
    assert 'adpd_w_NAD' in (out / 'seed0' / 'log.csv').read_text().splitlines()[0]
    # the saved students are plain state dicts a fresh model loads, equal to the cohort's checkpoint
    name = SHIPPED['student']['model']
    ck = load_checkpoint(out / 'seed1' / 'checkpoint.pth')['model']
    for k in ('none', 'dkd', 'adpd'):
        m = load_pose_checkpoint(build_model(name), out / 'seed1' / k / 'final.pth')
        sd_equal(m.state_dict(), {n[len(f'members.{k}.'):]: v for n, v in ck.items() if n.startswith(f'members.{k}.')}, rtol=0, atol=0)
    # the same command again is refused (it would overwrite the run); with --resume each finished cohort is finished again
    args = ['demo', '--quick', '--no-bar', '--threads', '1', '--data-root', str(tmp_path / 'data'), '--out', str(out)]
    capsys.readouterr()
    assert main(args) == 2 and 'pass --resume' in capsys.readouterr().err
    assert main(args + ['--resume']) == 0
    again = [l for l in capsys.readouterr().out.splitlines() if l.startswith('| ')]
    strip = lambda t: [l.split('|')[:5] + l.split('|')[7:] for l in t]      # same numbers, measured speed and latency aside
    assert strip(again) == strip(table)

def test_demo_flags(capsys):
    "--detach/--no-detach and --faithful reach the run config; bad seeds and kinds are refused in one line."
    p = make_parser()
    cfg = lambda *a: config_from_args(p.parse_args(['demo', *a]))[0]
    assert cfg().detach is True and cfg('--no-detach').detach is False
    assert cfg().bound is True and cfg('--no-bound').bound is False
    assert p.parse_args(['coco', '--data-root', '.', '--faithful']).faithful is True
    assert p.parse_args(['coco', '--data-root', '.', '--kd', 'dkd', '--dkd-weights', '1,0.5,2']).dkd_weights == (1., .5, 2.)
    assert p.parse_args(['demo']).kd is None and p.parse_args(['demo', '--kd', 'none,dkd']).kd == ('none', 'dkd')
    for args, msg in ((['--seeds', 'a,b'], "argument --seeds: 'a,b': comma-separated integers"), (['--kd', 'adpd,mse'], "unknown ['mse']")):
        with pytest.raises(SystemExit) as e: main(['demo', '--quick', *args])
        assert e.value.code == 2 and msg in capsys.readouterr().err

@pytest.mark.parametrize('args, msg', [
    (['--train-teacher', '--T', '2'], '--T does not apply'), (['--train-student', '--epochs', '3'], '--epochs does not apply'),
    (['--train-teacher', '--kd', 'adpd', '--seeds', '1'], '--kd, --seeds do not apply'), (['--train-teacher', '--quick'], '--quick does not apply'),
    (['--train-teacher', '--no-bound', '--faithful'], '--bound, --faithful do not apply'), (['--seed', '3'], '--seed does not apply'),
    (['--teacher-epochs', '3'], '--teacher-epochs applies only with --train-teacher')])
def test_demo_refuses_flags_it_would_not_use(args, msg, tmp_path, capsys):
    "Every flag the demo is given is used or refused (exit 2, one line) before any work: none is dropped silently."
    out = tmp_path / 'run'
    assert main(['demo', '--no-bar', '--out', str(out), '--data-root', str(tmp_path / 'data'), *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count('\n') == 1 and not out.exists() and not (tmp_path / 'data').exists(), err

def test_demo_train_teacher_takes_the_run_flags():
    "--train-teacher/--train-student honour --seed, --precision, --lr, --bs, --n-images and --teacher-epochs."
    cs, _ = config_from_args(make_parser().parse_args(['demo', '--train-teacher', '--train-student', '--seed', '3', '--precision', 'bf16',
                                                       '--lr', '1e-3', '--bs', '8', '--n-images', '40', '--teacher-epochs', '2']))
    assert [(c.role, c.seed, c.precision, c.lr, c.bs, c.n_images, c.epochs) for c in cs] == [
        ('teacher', 3, 'bf16', 1e-3, 8, 40, 2), ('student', 3, 'bf16', 1e-3, 8, 40, 2)]
    c, _ = config_from_args(make_parser().parse_args(['demo', '--precision', 'fp16', '--T', '2']))
    assert (c.precision, c.T) == ('fp16', 2.)

@pytest.mark.parametrize('flag, value, msg', [('--epochs', '-1', 'must be an integer ≥ 1'), ('--epochs', '0', '≥ 1'), ('--bs', '0', '≥ 1'),
    ('--workers', '-2', '≥ 0'), ('--threads', '0', '≥ 1'), ('--image-size', '0x0', 'positive multiples of 4'),
    ('--image-size', '255x192', 'multiples of 4'), ('--lr-steps', 'abc', 'comma-separated integers'), ('--stop-after', '0', '≥ 1'),
    ('--T', '0', 'must be > 0'), ('--thr', '1', 'in (0, 1)'), ('--alpha', '1.5', 'in [0, 1]'), ('--lr', 'nan', 'must be > 0'),
    ('--lr', '-1', '> 0'), ('--weight-lr', 'inf', '> 0'), ('--dkd-weights', '1,1', 'three comma-separated'),
    ('--dkd-weights', '1,-1,1', 'numbers ≥ 0'), ('--dkd-weights', '1,nan,1', 'numbers ≥ 0'), ('--eval-every', 'x', 'not an integer')])
def test_cli_values_are_checked_at_parse_time(tmp_path, capsys, flag, value, msg):
    "A bad value stops at parse time (exit 2, the flag named) before any work: no run folder is left to refuse the corrected run."
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as e:
        main(['coco', '--data-root', str(tmp_path), '--student', 'tiny', '--kd', 'none', '--out', str(out), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f'argument {flag}' in err and msg in err, err
    assert not out.exists()

def test_console_script():
    exe = BIN / 'adpd_train'
    if not exe.exists(): pytest.skip(f"console script not installed in {BIN} (pip install -e . creates it)")
    r = adpd_train('demo', '--help', launcher=(str(exe),))
    assert r.returncode == 0 and '--quick' in r.stdout and '--teacher-epochs' in r.stdout

# ---------------------------------------------------------------- resume
def run_state(out):
    ck = load_checkpoint(out / 'checkpoint.pth')
    return ck['model'], ck['callbacks']['distill']['kd_loss'], ck['opt']['state']

def test_resume_is_exact(synth, finished, tmp_path):
    out = tmp_path / 'killed'
    assert main(coco_args(synth, out, '--stop-after', '1')) == 0
    ck = load_checkpoint(out / 'checkpoint.pth')
    assert ck['epoch'] == 1 and not (out / 'final.pth').exists()
    assert main(coco_args(synth, out, '--resume')) == 0
    (m1, w1, o1), (m2, w2, o2) = run_state(finished), run_state(out)
    sd_equal(m1, m2); sd_equal(w1, w2)                      # student, weight net (with its BN statistics)
    for a, b in zip(o1, o2): sd_equal(a, b)                  # optimizer state of both parameter groups
    sd_equal(torch.load(finished / 'final.pth'), torch.load(out / 'final.pth'))
    log = (out / 'log.csv').read_text().splitlines()
    assert len(log) == 3 and log[0] == (finished / 'log.csv').read_text().splitlines()[0]
    r1, r2 = (json.loads((o / 'results.json').read_text()) for o in (finished, out))
    assert r1['metrics'] == pytest.approx(r2['metrics'])
    assert [h['valid_loss'] for h in r1['history']] == pytest.approx([h['valid_loss'] for h in r2['history']])
    card = read_card(out / 'card.json')                      # the card: what started the run, the final metrics
    assert '--stop-after 1' in card.command and '--resume' not in card.command and card.metrics == pytest.approx(r2['metrics'])
    assert card.arch == 'tiny-w8' and card.image_size == (48, 64) and card.data['path'].endswith('person_keypoints_train.json')

def test_a_run_written_before_a_new_flag_resumes(synth, tmp_path, capsys):
    "A run folder whose config predates a flag (no key for it) resumes while the flag keeps its default; another value is refused."
    out = tmp_path / 'old'
    assert main(coco_args(synth, out, '--stop-after', '1')) == 0
    cfg = json.loads((out / 'config.json').read_text()); del cfg['bound']
    (out / 'config.json').write_text(json.dumps(cfg))
    ck = load_checkpoint(out / 'checkpoint.pth'); del ck['config']['bound']   # written before the flag (and before checksums.json)
    torch.save(ck, out / 'checkpoint.pth'); (out / 'checksums.json').unlink()
    assert main(coco_args(synth, out, '--resume')) == 0 and load_checkpoint(out / 'checkpoint.pth')['epoch'] == 2
    capsys.readouterr()
    assert main(coco_args(synth, out, '--resume', '--no-bound')) == 2 and 'bound: True → False' in capsys.readouterr().err

def test_crash_while_writing_keeps_the_good_checkpoint(synth, finished, tmp_path, monkeypatch):
    out = tmp_path / 'crash'
    assert main(coco_args(synth, out, '--stop-after', '1')) == 0
    good = (out / 'checkpoint.pth').read_bytes()
    real_save = torch.save
    def half_save(obj, f, *a, **k):          # write half a checkpoint, then die
        if isinstance(obj, dict) and obj.get('format') == 'adpd-run':
            f.write(b'PK\x03\x04 half a checkpoint'); raise RuntimeError('simulated crash during write')
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', half_save)
    with pytest.raises(RuntimeError, match='simulated crash'): main(coco_args(synth, out, '--resume'))
    assert (out / 'checkpoint.pth').read_bytes() == good and load_checkpoint(out / 'checkpoint.pth')['epoch'] == 1
    assert not list(out.glob('.*.tmp'))
    monkeypatch.setattr(torch, 'save', real_save)
    (out / '.checkpoint.pth.x1y2.tmp').write_bytes(b'left by a kill -9')      # what a hard kill leaves
    assert main(coco_args(synth, out, '--resume')) == 0
    assert not list(out.glob('.*.tmp'))
    sd_equal(run_state(finished)[0], run_state(out)[0])

def test_run_folder_is_never_overwritten(synth, finished, capsys):
    before = (finished / 'checkpoint.pth').read_bytes()
    for extra, msg in ((['--seed', '1'], 'holds another run'), (['--seed', '1', '--resume'], 'seed: 0 → 1'), ([], 'pass --resume')):
        assert main(coco_args(synth, finished, *extra)) == 2
        assert msg in capsys.readouterr().err
    (finished.parent / 'mine').mkdir(); (finished.parent / 'mine' / 'thesis.tex').write_text('precious')
    assert main(coco_args(synth, finished.parent / 'mine')) == 2 and 'holds no adpd run' in capsys.readouterr().err
    assert (finished / 'checkpoint.pth').read_bytes() == before

# ---------------------------------------------------------------- two processes
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_two_process_gloo(tmp_path):
    launcher = (str(BIN / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_free_port()), '-m', 'adpd.train')
    if not (BIN / 'accelerate').exists(): pytest.skip(f'accelerate launcher not found in {BIN}')
    out = tmp_path / 'ddp'
    r = adpd_train('demo', '--quick', '--n-images', '40', '--no-bar', '--kd', 'adpd', '--seeds', '0', '--threads', '1', '--data-root', tmp_path / 'data', '--out', out,
                   launcher=launcher, timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    lines = re.findall(r'rank (\d)/2: (.+?) student (\w+) weight net (\S+)(?: \(initially (\w+)\))?', r.stdout)
    got = {(rank, name): (s, w, w0) for rank, name, s, w, w0 in lines}
    assert {k[0] for k in got} == {'0', '1'}, r.stdout                  # both processes trained
    name = 'cohort (seed 0) adpd'
    assert got[('0', name)] == got[('1', name)], (name, got)               # DDP student, and the all-reduced weight net
    s, w, w0 = got[('0', name)]
    assert w != '-' and w != w0, got                                      # the weight net trained (so equality means synchronised)
    assert sum(l.startswith('| teacher') for l in r.stdout.splitlines()) == 1   # only rank 0 prints the table
    ck = out / 'seed0' / 'checkpoint.pth'
    assert load_checkpoint(ck)['epoch'] == 1
    rng = load_checkpoint(ck)['rng']
    assert len(rng) == 2                                                  # each process's RNG states, for an exact resume

# ---------------------------------------------------------------- real layouts
def coco_layout(tmp_path, src):
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (root / 'annotations' / f'person_keypoints_{split}.json').symlink_to(src / 'person_keypoints_tiny.json')
        (root / split).symlink_to(src / 'images', target_is_directory=True)
    torch.manual_seed(0)
    torch.save(build_model('tiny-w16').state_dict(), tmp_path / 'teacher.pth')
    return root, src / 'person_detection_results_tiny.json'

def test_coco_layout_one_epoch_and_evaluation(tmp_path, coco_tiny):
    root, det = coco_layout(tmp_path, coco_tiny)
    out = tmp_path / 'run'
    assert main(['coco', '--data-root', str(root), '--student', 'tiny-w8', '--teacher', 'tiny-w16', '--teacher-weights',
                 str(tmp_path / 'teacher.pth'), '--kd', 'adpd', '--epochs', '1', '--bs', '4', '--image-size', '64x48',
                 '--det-file', str(det), '--eval-every', '1', '--no-bar', '--threads', '1', '--out', str(out)]) == 0
    res = json.loads((out / 'results.json').read_text())
    assert 0 <= res['metrics']['AP'] <= 1 and res['epochs'] == 1
    dets = json.loads((out / 'keypoints_val_results.json').read_text())        # final evaluation on the detection boxes
    assert dets and {d['image_id'] for d in dets} <= {d['image_id'] for d in json.loads(det.read_text())}
    head, row = (out / 'log.csv').read_text().splitlines()
    assert 'AP' in head.split(',') and (out / 'best.pth').exists()            # AP with GT boxes during training
    assert json.loads((out / 'config.json').read_text())['image_size'] == '64x48'

def test_mpii_layout_one_epoch_and_pckh(tmp_path, mpii_tiny):
    src = mpii_tiny
    root = tmp_path / 'mpii'
    (root / 'annot').mkdir(parents=True)
    for split in ('train', 'valid'): (root / 'annot' / f'{split}.json').symlink_to(src / 'mpii_tiny.json')
    (root / 'images').symlink_to(src / 'images', target_is_directory=True)
    out = tmp_path / 'run'
    assert main(['mpii', '--data-root', str(root), '--student', 'tiny-w8', '--kd', 'none', '--epochs', '1', '--bs', '4',
                 '--image-size', '64x64', '--no-bar', '--threads', '1', '--out', str(out)]) == 0
    m = json.loads((out / 'results.json').read_text())['metrics']
    assert 0 <= m['PCKh'] <= 100 and m['PCKh'] == m['Mean'] and {'Head', 'Shoulder', 'Ankle', 'Mean@0.1'} <= m.keys()

# ---------------------------------------------------------------- clear errors
def test_clear_errors(tmp_path, synth, capsys):
    def err(args):
        assert main(args) == 2
        return capsys.readouterr().err
    base = ['--student', 'tiny-w8', '--kd', 'none', '--epochs', '1', '--out', str(tmp_path / 'x')]
    assert f'--data-root {tmp_path / "nope"}: no such folder' in err(['coco', '--data-root', str(tmp_path / 'nope'), *base])
    (tmp_path / 'empty').mkdir()
    assert 'person_keypoints_train2017.json: annotation file not found' in err(['coco', '--data-root', str(tmp_path / 'empty'), *base])
    assert 'annot/train.json: annotation file not found' in err(['mpii', '--data-root', str(tmp_path / 'empty'), *base])
    torch.save(build_model('tiny-w24').state_dict(), tmp_path / 'wide.pth')
    e = err(coco_args(synth, tmp_path / 'y', '--teacher-weights', str(tmp_path / 'wide.pth')))
    assert 'teacher checkpoint does not fit tiny-w16' in e and 'shape mismatch' in e
    assert 'none.pth: no such file' in err(coco_args(synth, tmp_path / 'y', '--teacher-weights', str(tmp_path / 'none.pth')))
    assert 'needs the trained teacher' in err(coco_args(synth, tmp_path / 'y', teacher_weights=False))
    assert 'detection file not found' in err(coco_args(synth, tmp_path / 'y', '--det-file', str(tmp_path / 'dets.json')))
    assert "model 'resnet_7'" in err(coco_args(synth, tmp_path / 'y', '--student', 'resnet_7', '--kd', 'none'))
    assert not (tmp_path / 'y').exists() or not any((tmp_path / 'y').glob('**/checkpoint.pth'))

def test_coco_recipe_with_dkd(synth, tmp_path):
    "`--kd dkd` trains with the fixed-weight decoupled terms; `--dkd-weights` reaches the run config and the loss."
    out = tmp_path / 'dkd'
    assert main(coco_args(synth, out, '--kd', 'dkd', '--dkd-weights', '1,2,0', '--epochs', '1')) == 0
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['kd'] == 'dkd' and cfg['dkd_weights'] == [1., 2., 0.]
    head = (out / 'log.csv').read_text().splitlines()[0].split(',')
    assert {'train_kd', 'kd_grad', 'BiKD', 'KAD', 'NAD'} <= set(head) and not any(h.startswith('w_') for h in head)

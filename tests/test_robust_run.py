"Run folders under stress: broken or missing checkpoints on --resume, a full disk, a non-finite loss, a finished run resumed with files missing."
import errno, json, re, shutil
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from adpd.run import FitConfig, TrainError, fit_run, paper_adam, load_checkpoint, atomic_save, MemberBest
from adpd.learner import distill_learner, DistillCallback
from adpd.models import TinyPoseNet, create_pose_model
from adpd.testing import synth_dls
from adpd.train import main
from conftest import coco_args

# ---------------------------------------------------------------- the `finished` run of conftest, copied per test
def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}

def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst

# ---------------------------------------------------------------- broken or missing checkpoint.pth with --resume
@pytest.mark.parametrize('kind, msg', [('empty', r'empty file \(0 bytes\)'), ('truncated', 'truncated or corrupt')])
def test_resume_from_a_broken_checkpoint_says_so(kind, msg, synth, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / 'run')
    (out / 'results.json').unlink()                      # an unfinished run: --resume reads checkpoint.pth
    ck = out / 'checkpoint.pth'
    ck.write_bytes(b'' if kind == 'empty' else ck.read_bytes()[:2000])
    before = snapshot(out)
    capsys.readouterr()
    assert main(coco_args(synth, out, '--resume')) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and str(ck) in err and re.search(msg, err) and 'best.pth' in err and 'untouched' in err, err
    assert snapshot(out) == before
    with pytest.raises(TrainError, match=msg): load_checkpoint(ck)

def test_resume_needs_a_run_to_resume(synth, finished, tmp_path, capsys):
    missing = tmp_path / 'nothing'
    capsys.readouterr()
    assert main(coco_args(synth, missing, '--resume')) == 2
    assert f'{missing}: no such run folder' in capsys.readouterr().err and not missing.exists()
    out = copy_run(finished, tmp_path / 'run')
    for f in ('checkpoint.pth', 'results.json', 'final.pth'): (out / f).unlink()
    before = snapshot(out)
    assert main(coco_args(synth, out, '--resume')) == 2
    err = capsys.readouterr().err
    assert f'{out} has best.pth, card.json, config.json, keypoints_val_results.json, log.csv but no checkpoint.pth; nothing to resume' in err, err
    assert snapshot(out) == before                       # best.pth not overwritten by a fresh start

def test_demo_resume_needs_a_run_to_resume(tmp_path, capsys):
    for extra in (['--quick'], ['--train-teacher']):
        out = tmp_path / f'demo{extra[0]}'
        capsys.readouterr()
        assert main(['demo', '--no-bar', '--data-root', str(tmp_path / 'data'), '--out', str(out), '--resume', *extra]) == 2
        assert f'{out}: no such run folder' in capsys.readouterr().err and not out.exists()

# ---------------------------------------------------------------- a full disk
@pytest.mark.parametrize('error', [OSError(errno.ENOSPC, 'No space left on device'),
                                   RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 3456 vs 3400')])
def test_full_disk_keeps_the_previous_checkpoint(error, tmp_path, monkeypatch):
    f = tmp_path / 'checkpoint.pth'
    atomic_save({'epoch': 1, 'w': torch.ones(3)}, f)
    good = f.read_bytes()
    def full(obj, fh, *a, **k):
        fh.write(b'PK\x03\x04 a part'); raise error
    monkeypatch.setattr(torch, 'save', full)
    with pytest.raises(TrainError, match=re.escape(f'no space left writing {f}; the previous checkpoint is intact')):
        atomic_save({'epoch': 2, 'w': torch.zeros(3)}, f)
    assert f.read_bytes() == good and not list(tmp_path.glob('.*.tmp'))
    with pytest.raises(TrainError, match=re.escape(f'no space left writing {tmp_path / "new.pth"}; nothing was written')):
        atomic_save({'epoch': 2}, tmp_path / 'new.pth')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pth']

def test_full_disk_from_the_command_line(synth, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'run'
    assert main(coco_args(synth, out, '--stop-after', '1')) == 0
    before = snapshot(out)
    def full(obj, fh, *a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full)
    capsys.readouterr()
    assert main(coco_args(synth, out, '--resume')) == 2
    err = capsys.readouterr().err
    assert 'no space left writing' in err and 'Traceback' not in err, err
    after = snapshot(out)
    assert {k: after[k] for k in ('checkpoint.pth', 'best.pth', 'config.json')} == {k: before[k] for k in ('checkpoint.pth', 'best.pth', 'config.json')}

# ---------------------------------------------------------------- a non-finite loss
class Poison(Callback):
    "Make one term of the loss NaN at (epoch, batch): 'kd' through the teacher's heatmaps, 'pose' through the target."
    order = DistillCallback.order + .5   # after_pred: once DistillCallback has the teacher's heatmaps
    def __init__(self, epoch, batch, term): self.at, self.term = (epoch, batch), term
    def hit(self): return self.training and (self.epoch, self.iter) == self.at
    def before_batch(self):
        if self.hit() and self.term == 'pose': self.learn.yb = (torch.full_like(self.yb[0], float('nan')), *self.yb[1:])
    def after_pred(self):
        if self.hit() and self.term == 'kd': self.learn.distill.t_out = torch.full_like(self.learn.distill.t_out, float('nan'))

class BreakWeights(Callback):
    "Make a weight of the student NaN after the last step of an epoch (the losses of that epoch stay finite)."
    order = 100
    def __init__(self, epoch): self.epoch_ = epoch
    def after_train(self):
        if self.epoch == self.epoch_:
            with torch.no_grad(): self.learn.model.final_layer.weight[0, 0, 0, 0] = float('nan')

def tiny_fit(d, cfg, cbs=()):
    set_seed(cfg.seed)
    learn = distill_learner(synth_dls(d / 'data', n_images=16, bs=4), TinyPoseNet(width=8), TinyPoseNet(width=8), kd=None if cfg.kd == 'none' else cfg.kd,
                            lr=cfg.lr, opt_func=paper_adam)
    if cfg.kd != 'none': learn.distill.teacher.eval()
    best = MemberBest({'student': (learn.model, d / 'run')})           # best.pth, as a `Run` keeps it
    with learn.no_bar(), learn.no_logging(): return fit_run(learn, d / 'run', cfg, cbs=[best, *cbs])

@pytest.mark.parametrize('kd, term, name', [('adpd', 'kd', 'the KD term'), ('fpd', 'pose', 'the ground-truth MSE term'),
                                            ('none', 'pose', 'the ground-truth MSE term')])
def test_non_finite_loss_stops_the_run(kd, term, name, tmp_path):
    cfg = FitConfig(kd=kd, epochs=3, seed=0)
    run = tmp_path / 'run'
    with pytest.raises(TrainError) as e:
        tiny_fit(tmp_path, cfg, cbs=[Poison(1, 2, term), Snap(run)])
    msg = str(e.value)
    assert re.search(r'non-finite training loss \(nan\) in epoch 2/3, batch 3/\d+', msg), msg
    assert f'{name} ({term}) is nan' in msg, msg
    if kd != 'none': assert ('the ground-truth MSE term (pose) is ' if term == 'kd' else 'the KD term (kd) is ') in msg
    assert load_checkpoint(run / 'checkpoint.pth')['epoch'] == 1
    assert snapshot(run)['checkpoint.pth'] == Snap.files['checkpoint.pth'] and snapshot(run)['best.pth'] == Snap.files['best.pth']

class Snap(Callback):
    "Remember the run folder's files at the start of the second epoch."
    order, files = 100, {}
    def __init__(self, run): self.run = run
    def before_epoch(self):
        if self.epoch == 1: Snap.files = snapshot(self.run)

def test_checkpoint_writer_refuses_non_finite_weights(tmp_path):
    run = tmp_path / 'run'
    with pytest.raises(TrainError, match=r'refusing to write .*checkpoint.pth: the model has non-finite values \(final_layer.weight\)'):
        tiny_fit(tmp_path, FitConfig(kd='none', epochs=3, seed=0), cbs=[BreakWeights(1), Snap(run)])
    assert snapshot(run)['checkpoint.pth'] == Snap.files['checkpoint.pth'] and snapshot(run)['best.pth'] == Snap.files['best.pth']
    assert torch.isfinite(load_checkpoint(run / 'checkpoint.pth')['model']['final_layer.weight']).all()

def test_nan_teacher_from_the_command_line(synth, tmp_path, capsys):
    "A teacher checkpoint full of NaNs: the first batch stops the run, exit 2, the message names the KD term."
    sd = create_pose_model('tiny-w16').state_dict()
    sd['final_layer.weight'][:] = float('nan')
    torch.save(sd, synth / 'nan_teacher.pth')
    out = tmp_path / 'run'
    capsys.readouterr()
    assert main(coco_args(synth, out, teacher='nan_teacher.pth')) == 2
    err = capsys.readouterr().err
    assert re.search(r'non-finite training loss \(nan\) in epoch 1/2, batch 1/\d+: the KD term \(kd\) is nan', err) and 'Traceback' not in err, err
    assert not (out / 'checkpoint.pth').exists() and not (out / 'final.pth').exists()

# ---------------------------------------------------------------- a finished run resumed
@pytest.mark.parametrize('damage', ['final.pth missing', 'final.pth empty', 'results.json corrupt', 'results.json a list', 'results.json missing'])
def test_finished_run_resumed_is_finished_again(damage, synth, finished, tmp_path):
    "A finished run resumed loads its last checkpoint, has no epoch left, and writes its final model and results again: nothing is read back."
    out = copy_run(finished, tmp_path / 'run')
    f = out / damage.split()[0]
    if damage.endswith('missing'): f.unlink()
    else: f.write_text({'final.pth empty': '', 'results.json corrupt': '{"name": "x", "hist', 'results.json a list': '[1, 2]'}[damage])
    assert main(coco_args(synth, out, '--resume')) == 0
    ref, sd = (torch.load(d / 'final.pth', weights_only=True) for d in (finished, out))
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    r0, r1 = (json.loads((d / 'results.json').read_text()) for d in (finished, out))
    assert r1['epochs'] == 2 and r1['history'] == r0['history'] and r1['metrics'] == pytest.approx(r0['metrics'])

"Run folders under stress: broken or missing checkpoints on --resume, a full disk, a non-finite loss, a finished run resumed with files missing."
import errno, json, os, re, shutil
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
    assert f'{out} has best.pth, card.json, checksums.json, config.json, keypoints_val_results.json, log.csv but no checkpoint.pth; nothing to resume' in err, err
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
    with pytest.raises(TrainError, match=r"refusing to write .*checkpoint.pth: the model's tensor final_layer.weight has"):
        tiny_fit(tmp_path, FitConfig(kd='none', epochs=3, seed=0), cbs=[BreakWeights(1), Snap(run)])
    assert snapshot(run)['checkpoint.pth'] == Snap.files['checkpoint.pth'] and snapshot(run)['best.pth'] == Snap.files['best.pth']
    assert torch.isfinite(load_checkpoint(run / 'checkpoint.pth')['model']['final_layer.weight']).all()

def test_nan_teacher_from_the_command_line(synth, tmp_path, capsys):
    "A teacher checkpoint full of NaNs is refused when read (before any training), exit 2, one line naming the flag and the file."
    sd = create_pose_model('tiny-w16').state_dict()
    sd['final_layer.weight'][:] = float('nan')
    torch.save(sd, synth / 'nan_teacher.pth')
    out = tmp_path / 'run'
    capsys.readouterr()
    assert main(coco_args(synth, out, teacher='nan_teacher.pth')) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adpd_train: error: --teacher-weights: checkpoint {synth / 'nan_teacher.pth'}: ") and 'NaN' in err, err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err       # the run layer passes the loader's error on as it is
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

# ---------------------------------------------------------------- a run folder that cannot be written
@pytest.mark.parametrize('how', ['chmod', 'read-only file system'])
def test_unwritable_run_folder_is_one_line(how, synth, tmp_path, capsys, monkeypatch):
    ro = tmp_path / 'ro'
    ro.mkdir()
    out = ro / 'run'
    if how == 'chmod':
        if os.geteuid() == 0: pytest.skip('running as root: chmod 0o555 does not stop root writing (the EROFS case covers it)')
        ro.chmod(0o555)
    else:
        import adpd.core
        def erofs(*a, **k): raise OSError(errno.EROFS, 'Read-only file system', str(out))
        monkeypatch.setattr(adpd.core.tempfile, 'mkstemp', erofs)
    try:
        capsys.readouterr()
        assert main(coco_args(synth, out)) == 2
    finally: ro.chmod(0o755)
    err = capsys.readouterr().err
    strerror = 'Permission denied' if how == 'chmod' else 'Read-only file system'
    assert err == f"adpd_train: error: {out}: cannot write there ({strerror}); choose another --out\n", err

def test_resume_on_a_read_only_file_system_is_one_line(synth, finished, tmp_path, capsys, monkeypatch):
    "A run folder that became read-only (a mount remounted ro): --resume stops before training, naming it; nothing changes."
    import adpd.core
    out = copy_run(finished, tmp_path / 'run')
    (out / 'results.json').unlink()
    before = snapshot(out)
    def erofs(*a, **k): raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(adpd.core.tempfile, 'mkstemp', erofs)
    capsys.readouterr()
    assert main(coco_args(synth, out, '--resume')) == 2
    assert capsys.readouterr().err == f"adpd_train: error: {out}: cannot write there (Read-only file system); choose another --out\n"
    assert snapshot(out) == before

# ---------------------------------------------------------------- Ctrl-C
def ctrl_c_at(monkeypatch, epoch, batch):
    "Make the training loop raise KeyboardInterrupt at (epoch, batch), as Ctrl-C does."
    from adpd.run import FiniteLossGuard
    real = FiniteLossGuard.after_loss
    def after_loss(self):
        if self.training and (self.epoch, self.iter) == (epoch, batch): raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(FiniteLossGuard, 'after_loss', after_loss)

def test_ctrl_c_is_one_line_and_the_run_resumes_exactly(synth, finished, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'run'
    ctrl_c_at(monkeypatch, 1, 1)
    capsys.readouterr()
    assert main(coco_args(synth, out)) == 130
    err = capsys.readouterr().err
    assert err == (f"adpd_train: interrupted after epoch 1/2; the last checkpoint ({out / 'checkpoint.pth'}) is intact; "
                   "continue with --resume\n"), err
    assert load_checkpoint(out / 'checkpoint.pth')['epoch'] == 1 and not list(out.glob('.*.tmp')) and not (out / 'final.pth').exists()
    monkeypatch.undo()
    assert main(coco_args(synth, out, '--resume')) == 0
    ref, sd = (torch.load(d / 'final.pth', weights_only=True) for d in (finished, out))
    assert all(torch.equal(sd[k], ref[k]) for k in ref)

def test_ctrl_c_before_the_first_checkpoint_and_while_writing_one(synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'run'
    ctrl_c_at(monkeypatch, 0, 1)
    capsys.readouterr()
    assert main(coco_args(synth, out)) == 130
    assert capsys.readouterr().err == ("adpd_train: interrupted in epoch 1/2, before the first checkpoint; nothing to resume: "
                                       "run the command again to start\n")
    monkeypatch.undo()
    assert main(coco_args(synth, out, '--stop-after', '1')) == 0        # the folder holds config and log only: the run starts
    good, real_save = (out / 'checkpoint.pth').read_bytes(), torch.save
    def ctrl_c_in_save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get('format') == 'adpd-run': f.write(b'PK\x03\x04 part'); raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', ctrl_c_in_save)
    assert main(coco_args(synth, out, '--resume')) == 130
    assert 'interrupted after epoch 1/2; the last checkpoint' in capsys.readouterr().err
    assert (out / 'checkpoint.pth').read_bytes() == good and not list(out.glob('.*.tmp'))

# ---------------------------------------------------------------- --workers on resume
def test_resume_with_another_worker_count_is_refused(synth, tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(coco_args(synth, out, '--stop-after', '1')) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(coco_args(synth, out, '--resume', '--workers', '1')) == 2
    err = capsys.readouterr().err
    assert err == (f"adpd_train: error: {out / 'checkpoint.pth'}: the run was trained with --workers 0, this one has 1; resume with "
                   "--workers 0 (the augmentations depend on the number of loader processes)\n"), err
    assert snapshot(out) == before
    assert main(coco_args(synth, out, '--resume', '--workers', '0')) == 0

# ---------------------------------------------------------------- --resume auto (requeued jobs)
def test_resume_auto_starts_continues_and_finishes_again(synth, finished, tmp_path, capsys):
    out = tmp_path / 'run'
    job = coco_args(synth, out, '--resume', 'auto', '--stop-after', '1')        # the same command line every time
    capsys.readouterr()
    assert main(job) == 0 and load_checkpoint(out / 'checkpoint.pth')['epoch'] == 1
    assert f'--resume auto: nothing to resume, starting the run in {out}' in capsys.readouterr().out
    assert main(job) == 0 and (out / 'results.json').is_file()
    assert f'--resume auto: continuing the run in {out}' in capsys.readouterr().out
    ref, sd = (torch.load(d / 'final.pth', weights_only=True) for d in (finished, out))
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    (out / 'final.pth').unlink()
    assert main(job) == 0 and (out / 'final.pth').is_file()          # finished: finished again from its checkpoint

# ---------------------------------------------------------------- a checkpoint damaged after it was written
def test_flipped_bytes_in_a_checkpoint_are_caught(synth, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / 'run')
    (out / 'results.json').unlink()
    ck = out / 'checkpoint.pth'
    w = load_checkpoint(ck)['model']['final_layer.weight']
    raw = bytearray(ck.read_bytes()); i = raw.find(w.numpy().tobytes())
    assert i > 0
    raw[i + 5] ^= 0x40; ck.write_bytes(raw)
    assert not torch.equal(torch.load(ck, weights_only=True)['model']['final_layer.weight'], w)    # it still loads
    before = snapshot(out)
    capsys.readouterr()
    assert main(coco_args(synth, out, '--resume')) == 2
    err = capsys.readouterr().err
    assert f'{ck}: does not match its sha256 in checksums.json' in err and 'untouched' in err and 'Traceback' not in err, err
    assert len(err.strip().splitlines()) == 1 and snapshot(out) == before

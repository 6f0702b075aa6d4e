"Distillation with fastai: the teacher stays frozen and outside, the weight net learns, fastai's tools keep working."
import math, pickle, warnings
import numpy as np, pytest, torch
from fastai.callback.core import Callback
from fastai.callback.training import GradientAccumulation
from fastai.callback.tracker import SaveModelCallback
from fastai.callback.progress import CSVLogger
from fastai.learner import load_learner
from adpd.learner import distill_learner, distill_cohort, pose_learner, DistillCallback, with_eval
from adpd.losses import KDConfig
from adpd.evaluate import coco_evaluate
from adpd.models import load_pose_checkpoint
from adpd.models import TinyPoseNet
from adpd.testing import synth_dls, GroupLRs

@pytest.fixture(scope='module')
def dls(tmp_path_factory): return synth_dls(tmp_path_factory.mktemp('synth'), n_images=16, bs=8)

def quiet_fit(learn, n=1, method='fit', **kw):
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        getattr(learn, method)(n, **kw)

def snapshot(m): return {k: v.detach().clone() for k, v in m.state_dict().items()}

@pytest.mark.parametrize('kd', ['adpd', 'fpd', 'kl'])
def test_distillation_epoch(dls, tmp_path, kd):
    torch.manual_seed(0)
    teacher, student = TinyPoseNet(width=24), TinyPoseNet()
    t0, s0 = snapshot(teacher), snapshot(student)
    learn = distill_learner(dls, student, teacher, kd=kd, lr=1e-3, path=tmp_path)
    w0 = snapshot(learn.distill.kd_loss)
    quiet_fit(learn)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items()), 'teacher changed'
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not all(torch.equal(v, student.state_dict()[k]) for k, v in s0.items()), 'student did not move'
    if kd == 'adpd':
        w1 = learn.distill.kd_loss.state_dict()
        assert not torch.equal(w0['weight_net.fc2.bias'], w1['weight_net.fc2.bias']), 'weight net did not move'
        assert not torch.equal(w0['weight_net.fc1.weight'], w1['weight_net.fc1.weight'])
        names = ['kd_grad', 'BiKD', 'KAD', 'NAD', 'w_BiKD', 'w_KAD', 'w_NAD']
    else: names = ['kd_grad', 'KL'] if kd == 'kl' else ['kd_grad']
    cols = learn.recorder.metric_names[1:-1]
    assert cols[:5] == ['train_loss', 'valid_loss', 'pck', 'train_pose', 'train_kd'] and cols[5:] == names
    assert all(v is not None and math.isfinite(v) for v in learn.recorder.values[-1])
    # the teacher is in no optimizer group and not in the saved student
    opt_params = {id(p) for g in learn.opt.param_groups for p in g['params']}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    f = learn.save('student')                       # model + optimizer state, as fastai saves a run
    fresh = load_pose_checkpoint(TinyPoseNet(), f, weights_only=False)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert set(torch.load(f, weights_only=False)['model']) == set(student.state_dict())
    f = learn.save('student_only', with_opt=False)   # a bare state dict: loads with weights_only
    fresh = load_pose_checkpoint(TinyPoseNet(), f)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in fresh.state_dict().items())

def test_kd_stays_out_of_valid_loss(dls):
    torch.manual_seed(1)
    s = TinyPoseNet()
    a = distill_learner(dls, s, TinyPoseNet(), kd='adpd')
    b = pose_learner(dls, s)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with a.no_bar(), b.no_bar(): va, vb = a.validate(), b.validate()
    assert va[0] == pytest.approx(vb[0], rel=1e-6)

def test_export_carries_no_teacher(dls, tmp_path):
    teacher = TinyPoseNet(width=64)
    learn = distill_learner(dls, TinyPoseNet(), teacher, kd='adpd', path=tmp_path)
    quiet_fit(learn)
    learn.export('exp.pkl')
    new = load_learner(tmp_path / 'exp.pkl', cpu=True)
    assert new.distill.teacher is None and learn.distill.teacher is teacher
    assert not any(k.startswith('teacher') for k in new.model.state_dict())
    with pytest.raises(ValueError, match='no teacher'): new.fit(1)

def test_fastai_tools_keep_working(dls, tmp_path):
    torch.manual_seed(2)
    learn = distill_learner(dls, TinyPoseNet(), TinyPoseNet(width=24), kd='adpd', path=tmp_path, weight_lr_mult=3.)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = learn.lr_find(num_it=6, show_plot=False)
        assert math.isfinite(res.valley)
        learn.fit_one_cycle(2, cbs=[GradientAccumulation(16), SaveModelCallback(fname='best'), CSVLogger(fname='log.csv')])
    assert learn.opt.hypers[-1]['lr'] == pytest.approx(3 * learn.opt.hypers[0]['lr'])
    assert (tmp_path / 'models' / 'best.pth').exists()
    log = (tmp_path / 'log.csv').read_text().splitlines()
    assert log[0].split(',')[:4] == ['epoch', 'train_loss', 'valid_loss', 'pck'] and 'w_NAD' in log[0] and len(log) == 3

@pytest.mark.parametrize('precision', ['to_fp16', 'to_bf16'])
def test_mixed_precision_switches(dls, precision):
    learn = getattr(distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='adpd'), precision)()
    quiet_fit(learn)
    assert all(v is not None and math.isfinite(v) for v in learn.recorder.values[-1])

def test_distrib_ctx_single_process(dls):
    learn = distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='adpd')
    with learn.distrib_ctx(): quiet_fit(learn)
    assert isinstance(learn.model, TinyPoseNet)

def test_faithful_weight_net_trains_only_its_last_bias(dls):
    torch.manual_seed(3)
    # no weight decay: it would move every weight, gradient or not
    learn = distill_learner(dls, TinyPoseNet(), TinyPoseNet(width=24), kd='adpd', faithful=True, lr=1e-2, wd=0.)
    w0 = snapshot(learn.distill.kd_loss.weight_net)
    quiet_fit(learn)
    w1 = learn.distill.kd_loss.weight_net.state_dict()
    moved = {k for k in w0 if not torch.equal(w0[k], w1[k]) and 'running' not in k and 'num_batches' not in k}
    assert moved == {'fc2.bias'}

def test_unknown_kd_and_plain_training(dls):
    with pytest.raises(ValueError, match="kd='mse'"): distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='mse')
    learn = distill_learner(dls, TinyPoseNet(), None, kd=None)
    assert not hasattr(learn, 'distill') and [m.name for m in learn.metrics] == ['pck']

def test_weight_lr_follows_the_schedule(dls):
    "The weight net's lr is `weight_lr_mult` times the student's at every step, through the one-cycle schedule and after it."
    learn = distill_learner(dls, TinyPoseNet(), TinyPoseNet(width=24), kd='adpd', weight_lr_mult=.01, lr=1e-3)
    np.testing.assert_allclose(learn.lr, [1e-3, 1e-5])                    # one lr per parameter group
    rec = GroupLRs()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, cbs=rec)
    lrs = np.array(rec.lrs)
    assert len(lrs) > 2 and np.ptp(lrs[:, 0]) > 1e-4                      # the student's lr moved with the schedule
    np.testing.assert_allclose(lrs[:, -1], .01 * lrs[:, 0], rtol=1e-9)      # and the weight net's followed it

def test_adpd_options_reach_the_loss(dls):
    "detach and bound are ADPD's defaults; faithful turns both off; each can be turned off alone."
    kd = lambda **kw: distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='adpd', **kw).distill.kd_loss
    assert (kd().bound, kd().weight_net.detach) == (True, True)
    assert (kd(bound=False).bound, kd(bound=False).weight_net.detach) == (False, True)
    assert (kd(detach=False).bound, kd(detach=False).weight_net.detach) == (True, False)
    f = kd(faithful=True)
    assert (f.bound, f.weight_net.detach, f.weight_net.faithful) == (False, False, True)

def test_kd_settings_are_one_object(dls):
    "The documented call works; its keywords become one `KDConfig` (defaults from it), which the callback exposes as `learn.distill.cfg`."
    learn = distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='adpd', alpha=0.5, T=1., thr=0.5, lr=1e-3)
    assert isinstance(learn.distill, DistillCallback) and learn.distill.cfg == KDConfig()
    kl = distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='kl', cfg=KDConfig(T=2., thr=.3), alpha=.25).distill
    assert kl.cfg == KDConfig(T=2., thr=.3, alpha=.25) and (kl.kd_loss.T, kl.kd_loss.alpha) == (2., .25)
    w = distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='adpd', cfg=KDConfig(weight_lr=1e-5), lr=1e-3)
    np.testing.assert_allclose(w.lr, [1e-3, 1e-5])                         # the config's weight-net lr, as a second group
    c = distill_cohort(dls, TinyPoseNet(), {'a': (TinyPoseNet(), 'dkd'), 'b': (TinyPoseNet(), {'kd': 'kl', 'T': 4.})}, T=2.)
    assert c.distill.cfg.T == 2. and [f.cfg.T for f in c.distill.kd_loss.losses.values()] == [2., 4.]

def test_evaluator_runs_its_function_at_the_epochs_asked(dls):
    "with_eval(fn, every=2) over 3 epochs calls fn after epochs 2 and 3 (the last), on the unwrapped model; NaN in the other rows."
    calls = []
    def fn(m): calls.append(type(m).__name__); return dict(AP=len(calls) / 10, AP50=1.)
    learn = with_eval(pose_learner(dls, TinyPoseNet()), fn, every=2)
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    assert calls == ['TinyPoseNet'] * 2
    ap = [v[learn.recorder.metric_names[1:-1].index('AP')] for v in learn.recorder.values]
    assert math.isnan(ap[0]) and ap[1:] == [.1, .2]
    learn.validate(); learn.get_preds()
    assert len(calls) == 2                                                  # no evaluation outside a training epoch

"The run layer: imports without side effects, no private fastai API, config identity, the checkpoint of every stateful callback, per-group lr schedules."
import dataclasses, json, re, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest, torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from adpd.run import FitConfig, Runtime, TrainError, open_run, fit_run, paper_adam, load_checkpoint
from adpd.learner import distill_learner
from adpd.models import TinyPoseNet
from adpd.testing import synth_dls, GroupLRs
from adpd.train import make_parser, config_from_args
from adpd.recipes import demo_cohort

ROOT = Path(__file__).resolve().parents[1]

def test_imports_change_no_global_state():
    "Importing adpd's modules leaves the environment, the warnings filters and fastai's classes as they were; adpd.train does not even load torch."
    code = textwrap.dedent('''
        import os, sys, warnings, json
        import adpd.train
        assert 'torch' not in sys.modules, 'importing adpd.train loaded torch'
        import torch, cv2, timm, pycocotools.coco, fastai.data.load, fastai.learner, fastai.callback.all, fastai.distributed, matplotlib.pyplot   # third-party imports' own effects
        D, Lr = fastai.data.load.DataLoader, fastai.learner.Learner
        before = (dict(os.environ), list(warnings.filters), dict(vars(D)), dict(vars(Lr)))
        import adpd.core, adpd.data, adpd.models, adpd.losses, adpd.evaluate, adpd.testing, adpd.learner, adpd.viz, adpd.run, adpd.recipes
        after = (dict(os.environ), list(warnings.filters), dict(vars(D)), dict(vars(Lr)))
        for what, a, b in zip(('environment', 'warnings filters', 'DataLoader', 'Learner'), before, after):
            assert a == b, (what, set(b) ^ set(a) if isinstance(a, dict) else (a, b))
        print('unchanged')''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and 'unchanged' in r.stdout, r.stderr[-3000:]

def test_no_private_fastai_api_and_a_thin_cli():
    bad = re.compile(r'\._do_fit|_broadcast|_wrap_dl|_write_line|_with_events|\blearn\._\w+|self\.learn\._\w+|from fastai\S* import _')
    hits = [f'{p.name}:{i}: {l.strip()}' for p in (ROOT / 'adpd').glob('*.py') if p.name != '_modidx.py'
            for i, l in enumerate(p.read_text().splitlines(), 1) if bad.search(l)]
    assert not hits, hits
    assert len((ROOT / 'adpd' / 'train.py').read_text().splitlines()) <= 250

def test_demo_faithful_changes_the_run(tmp_path):
    p = make_parser()
    plain, _ = config_from_args(p.parse_args(['demo', '--quick']))
    faithful, _ = config_from_args(p.parse_args(['demo', '--quick', '--faithful']))
    assert faithful.faithful and not plain.faithful and faithful.differs(plain.to_dict()) == 'faithful: False → True'
    assert demo_cohort(faithful, 0).faithful                          # and reaches every seed's cohort
    open_run(tmp_path / 'demo', plain)
    with pytest.raises(TrainError, match='faithful: False → True'): open_run(tmp_path / 'demo', faithful)

class Counter(Callback):
    "A stateful callback: counts the training epochs it has seen."
    def __init__(self): self.n = 0
    def after_train(self): self.n += 1      # (fastai calls after_epoch for the epochs fit(start_epoch=) skips too)
    def state_dict(self): return dict(n=self.n)
    def load_state_dict(self, sd): self.n = sd['n']

def tiny_run(d, cfg, stop_after=None, resume=False, cbs=()):
    set_seed(cfg.seed)
    learn = distill_learner(synth_dls(d / 'data', n_images=16, bs=4), TinyPoseNet(width=8), TinyPoseNet(width=8), kd=cfg.kd, lr=cfg.lr,
                            weight_lr_mult=cfg.weight_lr and cfg.weight_lr / cfg.lr, opt_func=paper_adam)
    with learn.no_bar(), learn.no_logging():
        ck = fit_run(learn, d / 'run', cfg, d / 'run' / 'checkpoint.pth' if resume else None, stop_after, cbs=cbs)
    return learn, ck

def test_weight_net_lr_follows_the_step_schedule(tmp_path):
    "Through fit_run's step schedule the weight net's lr keeps its ratio to the student's at every step, across both decays."
    rec = GroupLRs()
    tiny_run(tmp_path, FitConfig(kd='adpd', epochs=3, lr=1e-3, weight_lr=1e-4, lr_steps=(1, 2), seed=0), cbs=[rec])
    lrs = np.array(rec.lrs)
    np.testing.assert_allclose(lrs[:, 1], .1 * lrs[:, 0], rtol=1e-12)
    assert sorted({round(v, 9) for v in lrs[:, 0]}) == [1e-5, 1e-4, 1e-3]          # both milestones applied to every group

def test_every_stateful_callback_is_checkpointed(tmp_path):
    "A callback with state_dict/load_state_dict is saved with the run and restored on resume, with no code for it in adpd.run."
    cfg = FitConfig(kd='adpd', epochs=3, lr_steps=(2,), seed=1)
    c1, c2 = Counter(), Counter()
    tiny_run(tmp_path / 'a', cfg, cbs=[c1])
    _, ck = tiny_run(tmp_path / 'b', cfg, stop_after=1, cbs=[c2])
    assert ck.stopped and load_checkpoint(tmp_path / 'b' / 'run' / 'checkpoint.pth')['callbacks']['counter'] == dict(n=1)
    c3 = Counter()
    tiny_run(tmp_path / 'b', cfg, resume=True, cbs=[c3])
    assert c1.n == c3.n == 3
    with pytest.raises(TrainError, match=r"callbacks \['counter', 'distill'\], this run has \['distill'\]"):
        tiny_run(tmp_path / 'b', cfg, resume=True)

"Live curves (`--log tensorboard|wandb`): every column of log.csv, per epoch, in the event file or the wandb run; a resumed run continues them."
import csv, math, sys, types
from pathlib import Path
import pytest, torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from adpd.core import COCO17
from adpd.models import TinyPoseNet, ModelCard
from adpd.run import CohortConfig, Runtime, Run
from adpd.testing import synth_dls
from adpd.train import main
from conftest import coco_args

def csv_rows(run):
    "log.csv as `{epoch: {column: value}}`, the finite values only (an epoch without evaluation has AP nan)."
    rows = list(csv.DictReader((Path(run) / 'log.csv').open()))
    return {int(r['epoch']): {k: float(v) for k, v in r.items() if k not in ('epoch', 'time') and v and not math.isnan(float(v))} for r in rows}

def tb_scalars(run):
    "`{tag: [(step, value), ...]}` of the TensorBoard event files in `run/tb`."
    ea = EventAccumulator(str(Path(run) / 'tb'), size_guidance={'scalars': 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()['scalars']}

def assert_same_curves(rows, got):
    "Every CSV column's value of every epoch is in `got` (`{tag: [(step, value)]}`) at that step, once."
    cols = {k for r in rows.values() for k in r}
    assert cols <= set(got), cols - set(got)
    for k in cols:
        want = [(e, r[k]) for e, r in sorted(rows.items()) if k in r]
        assert [s for s, _ in got[k]] == [e for e, _ in want], k
        assert [v for _, v in got[k]] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-7), k

def test_tensorboard_has_every_column_of_the_log(synth, tmp_path):
    out = tmp_path / 'run'
    assert main(coco_args(synth, out, '--log', 'tensorboard', '--eval-every', '2')) == 0
    rows, got = csv_rows(out), tb_scalars(out)
    assert {'train_loss', 'valid_loss', 'pck', 'train_kd', 'kd_grad', 'w_BiKD', 'w_KAD', 'w_NAD', 'AP', 'AP50'} <= set(rows[1]), rows[1]
    assert 'AP' not in rows[0]                                   # evaluated every 2 epochs: AP at epoch 1 only
    assert_same_curves(rows, got)

def test_a_resumed_run_continues_the_curves_without_doubles(synth, tmp_path):
    "Stopped after epoch 1, a killed attempt's stray event for epoch 2, then --resume: one value per epoch, the resumed run's."
    out = tmp_path / 'run'
    assert main(coco_args(synth, out, '--log', 'tensorboard', '--stop-after', '1')) == 0
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(out / 'tb')) as w: w.add_scalar('train_loss', 123., 1)   # written, then killed before its checkpoint
    assert main(coco_args(synth, out, '--log', 'tensorboard', '--resume')) == 0
    assert_same_curves(csv_rows(out), tb_scalars(out))

def test_cohort_curves_per_member(tmp_path):
    c = CohortConfig(members=(('plain', 'none'), ('adpd', 'adpd')), epochs=2, lr=2e-3, seed=0, bs=4)
    torch.manual_seed(0); teacher = TinyPoseNet(width=16)
    rt = Runtime(out=str(tmp_path / 'run'), bar=False, log=('tensorboard',))
    Run(c, tmp_path / 'run', rt, lambda: synth_dls(tmp_path / 'data', n_images=16, bs=4), lambda: {n: TinyPoseNet(width=8) for n in ('plain', 'adpd')},
        teacher, name='cohort', card=ModelCard(arch='tiny-w8', image_size=(48, 64), spec=COCO17)).train()
    rows, got = csv_rows(tmp_path / 'run'), tb_scalars(tmp_path / 'run')
    assert {'plain_valid_loss', 'adpd_valid_loss', 'adpd_w_KAD', 'adpd_kd_grad', 'plain_pck'} <= set(rows[0])
    assert_same_curves(rows, got)

def test_missing_extra_is_one_line(synth, tmp_path, capsys, monkeypatch):
    for kind in ('tensorboard', 'wandb'):          # tensorboard first: a machine with wandb skips only its half
        if kind == 'tensorboard': monkeypatch.setitem(sys.modules, 'tensorboard', None)     # import tensorboard → ImportError
        elif 'wandb' in sys.modules or any(Path(p, 'wandb').exists() for p in sys.path if p): pytest.skip('wandb is installed')
        capsys.readouterr()
        assert main(coco_args(synth, tmp_path / kind, '--log', kind)) == 2
        err = capsys.readouterr().err
        assert err == f"adpd_train: error: --log {kind} needs {kind}: pip install -e '.[log]' (or pip install {kind})\n", err
        assert not (tmp_path / kind).exists()                   # refused before any work

def test_unknown_logger_at_parse_time(capsys):
    with pytest.raises(SystemExit) as e: main(['demo', '--log', 'visdom'])
    assert e.value.code == 2 and "invalid choice: 'visdom' (choose from 'tensorboard', 'wandb')" in capsys.readouterr().err

class FakeWandb(types.ModuleType):
    "A stand-in for `wandb`: records `init`'s arguments and every `log`."
    def __init__(self):
        super().__init__('wandb'); self.inits, self.logs = [], []
    def init(self, **kw):
        self.inits.append(kw); fake = self
        class R:
            def log(self, values, step): fake.logs.append((step, dict(values)))
            def finish(self): fake.inits[-1]['finished'] = True
        return R()

def test_wandb_logs_every_column_and_resumes_the_same_run(synth, tmp_path, monkeypatch):
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, 'wandb', wandb)
    out = tmp_path / 'run'
    assert main(coco_args(synth, out, '--log', 'wandb', '--stop-after', '1')) == 0
    assert main(coco_args(synth, out, '--log', 'wandb', '--resume')) == 0
    a, b = wandb.inits
    assert a['id'] == b['id'] == (out / 'wandb' / 'id').read_text() and a['resume'] == 'allow' and a['finished'] and b['finished']
    assert a['dir'] == str(out / 'wandb') and a['config']['kd'] == 'adpd'
    got = {}
    for step, vals in wandb.logs:
        for k, v in vals.items(): got.setdefault(k, []).append((step, v))
    assert_same_curves(csv_rows(out), got)

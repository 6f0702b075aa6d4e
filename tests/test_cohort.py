"A cohort trains each member exactly as it would train alone, saves each as a standalone student and resumes exactly."
import json, warnings
import numpy as np, pytest, torch
from fastai.callback.training import ShortEpochCallback
from fastai.torch_core import set_seed
from adpd.learner import distill_cohort, distill_learner
from adpd.losses import DKDLoss, make_kd_loss, KD_KINDS
from adpd.core import COCO17, sha256
from adpd.models import TinyPoseNet, ModelCard
from adpd.run import CohortConfig, Runtime, Run
from adpd.testing import synth_dls
from adpd.predict import load_student, predict, InputError
from adpd import train as train_cli

STEPS = 5

@pytest.fixture(scope='module')
def data(tmp_path_factory): return tmp_path_factory.mktemp('cohort-data')

def fit_steps(make_learner, data, steps=STEPS, lr=3e-3):
    "Seed, build a learner on the fixture (same batches every call), train `steps` batches of one epoch."
    set_seed(0)
    learn = make_learner(synth_dls(data, n_images=16, bs=4, seed=0))
    set_seed(1)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1, lr, cbs=ShortEpochCallback(steps / len(learn.dls.train), short_valid=False))
    return learn

@pytest.fixture(scope='module')
def pair():
    torch.manual_seed(1); teacher = TinyPoseNet(width=24)
    torch.manual_seed(2); init = TinyPoseNet().state_dict()
    def student():
        m = TinyPoseNet(); m.load_state_dict(init); return m
    return teacher, init, student

SPECS = {'none': 'none', 'fpd': 'fpd', 'kl': 'kl', 'dkd': 'dkd', 'dkd_w': {'kd': 'dkd', 'dkd_weights': (.5, 2., 1.)},
         'adpd': 'adpd', 'adpd_published': {'kd': 'adpd', 'faithful': True}, 'adpd_T2': {'kd': 'adpd', 'T': 2., 'thr': .4}}

def _opts(spec): return dict(kd=spec) if isinstance(spec, str) else dict(spec)

def test_cohort_equals_separate_runs(pair, data):
    "Every member, ADPD ones included (their weight nets initialised alike), ends where its separate run ends: 1e-5 relative."
    teacher, init, student = pair
    wn_init = {}                                   # one weight-net initialisation per ADPD member, used by both ways of training
    for n, s in SPECS.items():
        o = _opts(s)
        if o.pop('kd') == 'adpd':
            torch.manual_seed(3)
            wn_init[n] = make_kd_loss('adpd', 17, **o).state_dict()
    def alone(n):
        o = _opts(SPECS[n]); kd = o.pop('kd'); m = student()
        def make(dls):
            learn = distill_learner(dls, m, teacher, kd=None if kd == 'none' else kd, **o)
            if n in wn_init: learn.distill.kd_loss.load_state_dict(wn_init[n])
            return learn
        return m, fit_steps(make, data)
    separate = {n: alone(n) for n in SPECS}
    together = {n: student() for n in SPECS}
    def cohort(dls):
        learn = distill_cohort(dls, teacher, {n: (together[n], s) for n, s in SPECS.items()})
        for n, sd in wn_init.items(): learn.distill.kd_loss.losses[n].load_state_dict(sd)
        return learn
    learn = fit_steps(cohort, data)
    for n in SPECS:
        a, b = separate[n][0].state_dict(), together[n].state_dict()
        assert not all(torch.equal(a[k], init[k]) for k in a), f'{n} did not train'
        for k in a: torch.testing.assert_close(b[k].float(), a[k].float(), rtol=1e-5, atol=1e-7, msg=lambda m: f'{n} {k}: {m}')
        if n in wn_init:
            wa, wb = separate[n][1].distill.kd_loss.state_dict(), learn.distill.kd_loss.losses[n].state_dict()
            assert not all(torch.equal(wa[k], wn_init[n][k]) for k in wa), f'{n}: weight net did not train'
            for k in wa: torch.testing.assert_close(wb[k].float(), wa[k].float(), rtol=1e-5, atol=1e-7, msg=lambda m: f'{n} {k}: {m}')
    # the members' columns: own PCK and valid loss, own KD values, own weights
    cols = learn.recorder.metric_names
    for n in SPECS: assert f'{n}_pck' in cols and f'{n}_valid_loss' in cols and f'{n}_train_pose' in cols
    assert {'adpd_w_BiKD', 'adpd_kd_grad', 'dkd_KAD', 'kl_KL', 'adpd_published_w_NAD'} <= set(cols)
    # a member's columns are what its separate run recorded: training values, then validation (PCK, valid loss)
    vals = dict(zip(cols[1:-1], learn.recorder.values[-1]))
    def validate(l):
        with l.no_bar(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return dict(zip(['valid_loss'] + [m.name for m in l.metrics], l.validate()))
    cv = validate(learn)
    for n in ('adpd', 'kl', 'none'):
        sep, sv = dict(zip(separate[n][1].recorder.metric_names[1:-1], separate[n][1].recorder.values[-1])), validate(separate[n][1])
        for k in ('train_kd', 'kd_grad') if n != 'none' else ():
            assert vals[f'{n}_{k}'] == pytest.approx(sep[k], rel=1e-4), (n, k)
        assert cv[f'{n}_pck'] == pytest.approx(sv['pck'], rel=1e-5) and cv[f'{n}_valid_loss'] == pytest.approx(sv['valid_loss'], rel=1e-5)

def test_teacher_runs_once_per_batch(pair, data):
    teacher, init, student = pair
    calls = []
    h = teacher.register_forward_hook(lambda *a: calls.append(1))
    try: learn = fit_steps(lambda dls: distill_cohort(dls, teacher, {k: (student(), k) for k in KD_KINDS}), data, steps=3)
    finally: h.remove()
    assert len(calls) == learn.train_iter >= 3
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not {id(p) for p in teacher.parameters()} & {id(p) for g in learn.opt.param_groups for p in g['params']}

def test_bad_members(pair, data):
    teacher, init, student = pair
    dls = synth_dls(data, n_images=16, bs=4, seed=0)
    m = student()
    with pytest.raises(ValueError, match='shares its model'): distill_cohort(dls, teacher, {'a': (m, 'none'), 'b': (m, 'fpd')})
    with pytest.raises(ValueError, match='member name'): distill_cohort(dls, teacher, {'a.b': (student(), 'none')})
    with pytest.raises(ValueError, match=r"unknown settings \['beta'\]"): distill_cohort(dls, teacher, {'a': (student(), {'kd': 'adpd', 'beta': 1})})
    with pytest.raises(ValueError, match='kd=.mse.'): distill_cohort(dls, teacher, {'a': (student(), 'mse')})
    with pytest.raises(ValueError, match='a teacher is needed'): distill_cohort(dls, None, {'a': (student(), 'none')})
    with pytest.raises(ValueError, match='weights must be three'): distill_cohort(dls, teacher, {'a': (student(), {'kd': 'dkd', 'dkd_weights': (1, 1)})})

def test_kd_kinds_agree():
    "The CLI offers exactly the losses' KD kinds, to the recipes and to the demo."
    p = train_cli.make_parser()
    kd = next(a for a in p._subparsers._group_actions[0].choices['coco']._actions if a.dest == 'kd')
    assert tuple(kd.choices) == KD_KINDS and p.parse_args(['demo', '--kd', ','.join(KD_KINDS)]).kd == KD_KINDS
    assert isinstance(make_kd_loss('dkd', 17, dkd_weights=(1, 0, 2)), DKDLoss) and make_kd_loss('none', 17) is None

def cohort_run(d, data, stop_after=None, resume=False, epochs=2):
    c = CohortConfig(members=(('plain', 'none'), ('dkd', 'dkd'), ('adpd', 'adpd')), epochs=epochs, lr=2e-3, seed=0, bs=4)
    torch.manual_seed(0); teacher = TinyPoseNet(width=16)
    make = lambda: {n: TinyPoseNet(width=8) for n in ('plain', 'dkd', 'adpd')}
    rt = Runtime(out=str(d), bar=False, stop_after=stop_after, resume=resume)
    run = Run(c, d, rt, lambda: synth_dls(data, n_images=16, bs=4), make, teacher, name='cohort',
              card=ModelCard(arch='tiny-w8', image_size=(48, 64), spec=COCO17), evaluate=lambda m: dict(AP=.5))
    return run, run.train()

def test_cohort_run_resumes_exactly_and_saves_standalone_students(tmp_path, data):
    straight, rs = cohort_run(tmp_path / 'straight', data)
    _, stopped = cohort_run(tmp_path / 'killed', data, stop_after=1)
    assert stopped.stopped and not (tmp_path / 'killed' / 'adpd' / 'final.pth').exists()
    resumed, rr = cohort_run(tmp_path / 'killed', data, resume=True)
    for n in ('plain', 'dkd', 'adpd'):
        a, b = straight.models[n].state_dict(), resumed.models[n].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), n
        assert rs.members[n].best == rr.members[n].best and rs.members[n].metrics == dict(AP=.5)
        d = tmp_path / 'straight' / n
        assert sorted(p.name for p in d.iterdir()) == ['best.pth', 'card.json', 'checksums.json', 'final.pth']
        assert json.loads((d / 'checksums.json').read_text()) == {f: [sha256(d / f)] for f in ('best.pth', 'final.pth')}
        card = json.loads((d / 'card.json').read_text())
        assert card['arch'] == 'tiny-w8' and card['metrics'] == dict(AP=.5)
        s = load_student(d / 'final.pth')                     # a standalone student: load, predict
        assert all(torch.equal(v, a[k]) for k, v in s.model.state_dict().items())
        kp, sc = predict(s.model, np.zeros((64, 48, 3), np.uint8), image_size=s.image_size)
        assert kp.shape[1:] == (17, 2)
    with pytest.raises(InputError, match=r'a cohort run of 3 students; pass one member.s folder: .*straight/plain'): load_student(tmp_path / 'straight')
    wa, wb = (r.learn.distill.kd_loss.state_dict() for r in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h['epoch'] for h in rr.history] == [0, 1] and [h['adpd_valid_loss'] for h in rr.history] == [h['adpd_valid_loss'] for h in rs.history]
    ck = torch.load(tmp_path / 'straight' / 'checkpoint.pth', weights_only=True)       # the checkpoint carries every member's card
    assert ck['card'] is None and set(ck['member_cards']) == {'plain', 'dkd', 'adpd'}
    # the log has one line per epoch, the killed one's first line kept
    lines = lambda d: (tmp_path / d / 'log.csv').read_text().splitlines()
    assert len(lines('straight')) == len(lines('killed')) == 3
    # finished: --resume finishes it again from its checkpoint, the same members
    again, _ = cohort_run(tmp_path / 'straight', data, resume=True)
    assert all(torch.equal(v, straight.models['adpd'].state_dict()[k]) for k, v in again.models['adpd'].state_dict().items())

def test_cohort_member_exports(tmp_path, data):
    pytest.importorskip('onnxruntime', reason='onnxruntime is in the [deploy] extra')
    from adpd.export import export_student, ExportedModel
    cohort_run(tmp_path / 'run', data, epochs=1)
    s = load_student(tmp_path / 'run' / 'adpd' / 'final.pth')
    f = export_student(s.model, tmp_path / 'adpd.onnx', image_size=s.image_size)
    x = torch.randn(2, 3, 64, 48)
    torch.testing.assert_close(ExportedModel(f)(x), s.model.eval()(x), rtol=1e-4, atol=1e-5)

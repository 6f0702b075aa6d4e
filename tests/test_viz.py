"Visualisation: pose batches and results in fastai, the decoupling figure and the heatmap inspector show the numbers the loss uses."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, pytest, torch
from fastai.data.load import DataLoader
from adpd.core import COCO17
from adpd.losses import TERMS, WeightNet, pose_kl, decoupled_kd, decoupled_distributions, joint_mean
from adpd.transforms import encode_heatmaps, decode_heatmaps, to_input
from adpd.learner import pose_learner, distill_learner
from adpd.models import TinyPoseNet
from adpd.testing import synth_dls
from adpd.viz import (DECOUPLING_PANELS, HeatmapInspector, DecouplingSource, Decoupling, compute_decoupling, draw_decoupling,
                      distill_settings, denormalize, show_decoupling, _plain_item)

@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    return synth_dls(tmp_path_factory.mktemp('synth'), n_images=16, bs=6, image_size=(48, 64))

@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close('all')

class Counted(torch.nn.Module):
    "A model that counts its forward calls."
    def __init__(self, m): super().__init__(); self.m, self.calls = m, 0
    def forward(self, x): self.calls += 1; return self.m(x)

def models(seed=0):
    torch.manual_seed(seed)
    return Counted(TinyPoseNet()), Counted(TinyPoseNet(width=24)), WeightNet(17)

def perturbed(wn, seed=1):
    "A weight net whose weights are not all 1, so a wrong sample or wrong inputs would show."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (wn.fc2.weight, wn.fc2.bias): p.copy_(torch.randn(p.shape, generator=g) * .3)
    return wn

def run_eval(m, x):
    mode = m.training
    with torch.no_grad(): out = m.eval()(x)
    m.train(mode)
    return out

def reference(ds, i, student, teacher, joint, T, thr, wn=None):
    "The terms (and weights) computed here from scratch: the models on the crop, the target from the joints."
    img, joints = _plain_item(ds, i)
    x = to_input(img[None])
    s, t = run_eval(student.m, x), run_eval(teacher.m, x)
    H, W = s.shape[-2:]
    tg, tw = encode_heatmaps(joints[None, :, :2], joints[None, :, 2], (W, H))
    r = decoupled_kd(s, t, tg, tw, T=T, thr=thr)
    out = {n: float(r[n][0, joint]) for n in TERMS}
    out.update({f'mean_{n}': float(joint_mean(r[n], tw)[0]) for n in TERMS})
    if wn is not None:
        mode = wn.training
        with torch.no_grad(): w = getattr(wn.eval(), 'weights', wn)(s, t, r)[0]     # a WeightNet, or an ADPDLoss (bounded weights)
        wn.train(mode)
        out.update({f'w_{n}': float(v) for n, v in zip(TERMS, w)})
    return out, s, t, tg

def panels(fig): return {a.get_label(): a for a in fig.axes}

def image_data(ax, i=0): return np.ma.asarray(ax.images[i].get_array())

# --- show_batch / show_results -------------------------------------------------------------

def limbs(tw_row):
    return sum(bool(tw_row[a] > 0 and tw_row[b] > 0) for a, b in COCO17.skeleton)

def test_show_batch_draws_skeletons_and_targets(dls):
    b = dls.one_batch()
    x, hm, tw = b
    dls.train.show_batch(b, max_n=4, ncols=2)
    fig = plt.gcf()
    assert len(fig.axes) == 8
    p = panels(fig)
    kp, _ = decode_heatmaps(hm.float())
    stride = x.shape[-1] / hm.shape[-1]
    for i in range(4):
        ax = p[f'pose {i}']
        assert len(ax.lines) == limbs(tw[i]) > 0
        a, c = next((a, c) for a, c in COCO17.skeleton if tw[i, a] > 0 and tw[i, c] > 0)
        drawn = np.concatenate([l.get_xydata() for l in ax.lines])
        assert np.isclose(drawn, (kp[i, a] * stride).numpy(), atol=1e-4).all(1).any(), 'a limb end is not at its target joint'
        np.testing.assert_array_equal(ax.images[0].get_array(), denormalize(x[i:i + 1])[0].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(image_data(p[f'targets {i}'], 1), hm[i].amax(0).numpy())
    plt.close('all')
    dls.show_batch(max_n=3, heatmaps=False)               # through DataLoaders → train, a fresh batch
    assert len(plt.gcf().axes) == 3 and all(len(a.lines) > 0 for a in plt.gcf().axes)

def test_pose_loaders_draw_and_fastai_is_untouched(dls):
    "pose_dls returns PoseDL loaders (they draw); fastai's own DataLoader gains nothing."
    assert all(type(dl).__name__ == 'PoseDL' for dl in dls.loaders) and not hasattr(DataLoader, 'show_batch')
    with pytest.raises(AttributeError): DataLoader(list(range(8)), bs=4).show_batch()

def test_show_results(dls):
    torch.manual_seed(0)
    learn = pose_learner(dls, TinyPoseNet())
    learn.show_results(max_n=4, ncols=2)
    fig = plt.gcf()
    assert len(fig.axes) == 12
    p = panels(fig)
    for i in range(4):
        assert len(p[f'prediction {i}'].lines) == len(p[f'target {i}'].lines) > 0
    plt.close('all')
    b = dls.valid.one_batch()
    with torch.no_grad(): out = learn.model.eval()(b[0])
    dls.valid.show_results(b, out, max_n=2)
    p = panels(plt.gcf())
    pk, _ = decode_heatmaps(out)
    stride = b[0].shape[-1] / out.shape[-1]
    drawn = np.concatenate([l.get_xydata() for l in p['prediction 0'].lines])
    lab = [k for k in range(17) if b[2][0, k] > 0 and any(k in e for e in COCO17.skeleton)]
    for k in lab:                                          # every labelled joint's predicted position is a limb end
        assert np.isclose(drawn, (pk[0, k] * stride).numpy(), atol=1e-4).all(1).any()
    np.testing.assert_allclose(image_data(p['heatmaps 0'], 1), out[0].amax(0).numpy(), rtol=1e-6)

# --- show_decoupling ----------------------------------------------------------------------------

def made_up(seed=0):
    "Target (1, 3, 32, 24) and a teacher/student that differ from it and from each other."
    g = torch.Generator().manual_seed(seed)
    tg, tw = encode_heatmaps(torch.tensor([[[6., 8.], [15., 20.], [10., 26.]]]), torch.ones(1, 3), (24, 32))
    blur = lambda h, k: torch.nn.functional.avg_pool2d(h, k, 1, k // 2) * 2.
    t = blur(tg.roll(1, -1), 3) + .02 * torch.randn(tg.shape, generator=g)
    s = blur(tg.roll((2, -1), (-2, -1)), 5) + .05 * torch.randn(tg.shape, generator=g)
    return s, t, tg, tw

@pytest.mark.parametrize('T,thr,joint', [(1., .5, 1), (3., .3, 2)])
def test_show_decoupling_panels_and_data(T, thr, joint):
    s, t, tg, tw = made_up()
    tw[0, 0] = 0                                           # an unlabelled joint changes the means
    wn = perturbed(WeightNet(3))
    src = DecouplingSource.from_heatmaps(s[0], t[0], tg[0], target_weight=tw, T=T, thr=thr, weight_net=wn)
    fig = show_decoupling(src, joint=joint, dpi=50)
    p = panels(fig)
    assert set(DECOUPLING_PANELS) <= set(p)
    ref = decoupled_kd(s, t, tg, tw, T=T, thr=thr)
    dd = decoupled_distributions(s, t, tg, T=T, thr=thr)
    area = dd['area'][0, joint].numpy()
    # heatmaps, difference and target, each outlined at thr
    np.testing.assert_allclose(image_data(p['teacher']), t[0, joint].numpy())
    np.testing.assert_allclose(image_data(p['student']), s[0, joint].numpy())
    np.testing.assert_allclose(image_data(p['difference']), (s - t)[0, joint].numpy(), rtol=1e-6)
    np.testing.assert_allclose(image_data(p['target']), tg[0, joint].numpy())
    np.testing.assert_allclose(image_data(p['image']), t[0, joint].numpy())    # default view: teacher, no crop
    for n in ('teacher', 'student', 'difference', 'target'): assert list(p[n].collections[-1].levels) == [thr]
    # two-way masses, inside (masked outside the area) and outside (masked inside)
    for c, who in zip(p['BiKD'].containers, 'ts'):
        np.testing.assert_allclose([r.get_height() for r in c], dd[f'mass_{who}'][0, joint].numpy(), rtol=1e-5)
    for who in 'ts':
        name = 'teacher' if who == 't' else 'student'
        a = image_data(p[f'KAD {name}'])
        assert (a.mask == ~area).all()
        np.testing.assert_allclose(a.compressed(), dd[f'in_{who}'][0, joint].numpy()[area], rtol=1e-6)
        a = image_data(p[f'NAD {name}'])
        assert (a.mask == area).all() and p[f'NAD {name}'].images[0].norm.__class__.__name__ == 'LogNorm'
        np.testing.assert_allclose(a.compressed(), dd[f'out_{who}'][0, joint].numpy()[~area], rtol=1e-6)
    # term values of this joint and their means over labelled joints, as decoupled_kd gives them
    jv, mv = p['terms'].containers
    np.testing.assert_allclose([r.get_height() for r in jv], [float(ref[n][0, joint]) for n in TERMS], rtol=1e-6)
    np.testing.assert_allclose([r.get_height() for r in mv], [float(joint_mean(ref[n], tw)[0]) for n in TERMS], rtol=1e-6)
    title = fig._suptitle.get_text()
    for n in TERMS: assert f'{n} = {float(ref[n][0, joint]):.3g}' in title
    assert f'T = {T:g}' in title and f'thr = {thr:g}' in title
    with torch.no_grad(): w = wn.eval()(s, t, ref)[0]
    np.testing.assert_allclose([r.get_height() for r in p['weights'].containers[0]], w.numpy(), rtol=1e-6)
    assert not np.allclose(w.numpy(), 1.)
    assert fig.decoupling.terms == pytest.approx({n: float(ref[n][0, joint]) for n in TERMS}, rel=1e-6)
    assert fig.decoupling.adaptive and fig.decoupling.name == f'joint {joint}'     # no spec given: joints by number

def test_show_decoupling_views_edge_cases_and_errors():
    s, t, tg, tw = made_up()
    src = DecouplingSource.from_heatmaps(s[0], t[0], tg[0])
    fig = show_decoupling(src, joint=1, view='difference', dpi=50)
    np.testing.assert_allclose(image_data(panels(fig)['image']), (s - t)[0, 1].numpy(), rtol=1e-6)
    assert 'no weight net' in [x.get_text() for x in panels(fig)['weights'].texts]
    fig = show_decoupling(DecouplingSource.from_heatmaps(s[0], t[0], tg[0] * .4), joint=1, thr=.5, dpi=50)   # no pixel above thr
    d = fig.decoupling.terms                    # all pixels are outside: NAD is the whole KL
    assert d['BiKD'] == d['KAD'] == 0 and d['NAD'] == pytest.approx(float(pose_kl(s, t)[0, 1]), rel=1e-5)
    assert 'empty keypoint area' in [x.get_text() for x in panels(fig)['KAD teacher'].texts]
    tw[0, 1] = 0
    fig = show_decoupling(DecouplingSource.from_heatmaps(s[0], t[0], tg[0], target_weight=tw), joint=1, dpi=50)
    assert 'not labelled' in fig._suptitle.get_text() and fig.decoupling.terms['KAD'] == 0
    with pytest.raises(IndexError, match='out of range'): show_decoupling(src, joint=3)
    with pytest.raises(IndexError, match='out of range'): show_decoupling(src, sample=1)
    with pytest.raises(ValueError, match='view must be'): show_decoupling(src, view='both')
    with pytest.raises(ValueError, match='one sample'): compute_decoupling(torch.cat([s, s]), t, tg)
    with pytest.raises(ValueError, match='differ'): DecouplingSource.from_heatmaps(torch.cat([s, s]), t, tg)
    with pytest.raises(TypeError, match='DecouplingSource'): show_decoupling(s[0], t[0], tg[0])
    with pytest.raises(TypeError, match='DecouplingSource'): HeatmapInspector(s[0])

def test_show_decoupling_from_learner_and_from_file(dls):
    student, teacher, _ = models()
    learn = distill_learner(dls, student, teacher, kd='adpd', T=2., thr=.4)
    perturbed(learn.distill.kd_loss.weight_net)
    ds = dls.valid.dataset
    src = DecouplingSource.from_learner(learn)
    assert (src.T, src.thr, src.spec) == (2., .4, ds.spec) and len(src) == len(ds)
    fig = show_decoupling(src, 1, joint=5, dpi=50)
    d = fig.decoupling
    assert (d.T, d.thr, d.name) == (2., .4, COCO17.names[5])
    ref, s, t, tg = reference(ds, 1, student, teacher, 5, 2., .4, learn.distill.kd_loss)   # the weights the loss applies
    assert d.terms == pytest.approx({n: ref[n] for n in TERMS}, rel=1e-5, abs=1e-9)
    assert d.weights == pytest.approx({n: ref[f'w_{n}'] for n in TERMS}, rel=1e-5)
    np.testing.assert_allclose(image_data(panels(fig)['student']), s[0, 5].numpy(), rtol=1e-5, atol=1e-6)
    assert panels(fig)['image'].images[0].get_array().shape == (64, 48, 3)          # the crop under the heatmap
    item = _plain_item(ds, 1)                                                       # an item (a list of items is a dataset) gives the same
    d1 = show_decoupling(DecouplingSource.from_learner(learn, ds=[item]), joint=5, dpi=50).decoupling
    assert d1.terms == d.terms and d1.name == COCO17.names[5]
    assert show_decoupling(src, 1, joint=5, T=3.).decoupling.T == 3.               # the source's settings unless given
    with pytest.raises(ValueError, match='no teacher'): DecouplingSource.from_learner(pose_learner(dls, TinyPoseNet()))
    # an image file and two models: the area is where the teacher peaks
    fig = show_decoupling(DecouplingSource.from_image(ds.db.file[0], student, teacher, image_size=(48, 64)), joint=3, dpi=50)
    d = fig.decoupling
    assert d.student.shape == (16, 12) and d.tw == 1.
    peak = np.unravel_index(d.teacher.argmax(), d.teacher.shape)
    assert d.area[peak] and d.target[peak] == 1.

def test_compute_then_draw():
    "Computing and drawing are apart: a record drawn alone gives the figure show_decoupling gives."
    s, t, tg, tw = made_up()
    d = compute_decoupling(s[0], t[0], tg[0], joint=2, T=2., thr=.3, target_weight=tw)
    assert isinstance(d, Decoupling) and d.weights is None and d.img is None
    ref = decoupled_kd(s, t, tg, tw, T=2., thr=.3)
    assert d.terms == pytest.approx({n: float(ref[n][0, 2]) for n in TERMS}, rel=1e-6)
    a = draw_decoupling(d, dpi=50)
    b = show_decoupling(DecouplingSource.from_heatmaps(s, t, tg, target_weight=tw, T=2., thr=.3), joint=2, dpi=50)
    for n in ('student', 'NAD teacher'): np.testing.assert_array_equal(image_data(panels(a)[n]), image_data(panels(b)[n]))
    assert a._suptitle.get_text() == b._suptitle.get_text()
    fig = plt.figure()
    assert draw_decoupling(d, fig) is fig and len(fig.axes) == len(DECOUPLING_PANELS)      # into a given figure
    # N samples at once, with crops: sample i is row i
    img = torch.randint(0, 255, (2, 3, 128, 96), dtype=torch.uint8)
    src = DecouplingSource.from_heatmaps(torch.cat([s, s.flip(-1)]), torch.cat([t, t]), torch.cat([tg, tg]), img=img)
    np.testing.assert_array_equal(src.decoupling(1, 0).student, s.flip(-1)[0, 0].numpy())
    assert panels(show_decoupling(src, 1, dpi=50))['image'].images[0].get_array().shape == (128, 96, 3)

def test_weights_shown_fixed_or_adaptive():
    "DKD's fixed weights and a weight net's adaptive ones are two arguments, never both."
    s, t, tg, _ = made_up()
    d = compute_decoupling(s, t, tg, fixed_weights=(1., .5, 2.))
    assert d.weights == dict(BiKD=1., KAD=.5, NAD=2.) and not d.adaptive
    assert panels(draw_decoupling(d, dpi=50))['weights'].get_title() == 'fixed weights (DKD)'
    with pytest.raises(ValueError, match='not both'): compute_decoupling(s, t, tg, weight_net=WeightNet(3), fixed_weights=(1, 1, 1))
    with pytest.raises(ValueError, match='not both'): DecouplingSource.from_heatmaps(s, t, tg, weight_net=WeightNet(3), fixed_weights=(1, 1, 1))
    with pytest.raises(ValueError, match='three numbers'): compute_decoupling(s, t, tg, fixed_weights=(1., 2.))

def test_settings_are_asked_of_the_distill_callback(dls):
    "T, thr and the weights come from the learner's DistillCallback (`learn.distill.cfg`): DKD's fixed weights, a cohort's member."
    learn = distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='dkd', T=3., thr=.6, dkd_weights=(1., .5, 2.))
    p = distill_settings(learn)
    assert (p['T'], p['thr'], p['fixed_weights'], p['weight_net']) == (3., .6, (1., .5, 2.), None)
    assert p['student'] is learn.model and p['teacher'] is learn.distill.teacher
    d = show_decoupling(DecouplingSource.from_learner(learn), joint=2, dpi=50).decoupling
    assert d.weights == dict(BiKD=1., KAD=.5, NAD=2.) and not d.adaptive and (d.T, d.thr) == (3., .6)
    fpd = distill_settings(distill_learner(dls, TinyPoseNet(), TinyPoseNet(), kd='fpd'))     # FPD weighs no terms
    assert fpd['weight_net'] is None and fpd['fixed_weights'] is None and (fpd['T'], fpd['thr']) == (1., .5)
    from adpd.learner import distill_cohort
    a, b = TinyPoseNet(), TinyPoseNet()
    cohort = distill_cohort(dls, TinyPoseNet(), {'a': (a, 'adpd'), 'b': (b, dict(kd='dkd', T=2.))})
    with pytest.raises(ValueError, match='member= one of a, b'): distill_settings(cohort)
    with pytest.raises(ValueError, match='not a cohort'): distill_settings(learn, member='a')
    pa, pb = distill_settings(cohort, 'a'), distill_settings(cohort, 'b')
    assert pa['student'] is a and pa['weight_net'] is not None and pb['student'] is b and pb['T'] == 2.
    assert show_decoupling(DecouplingSource.from_learner(cohort, member='b'), dpi=50).decoupling.T == 2.

def test_data_layer_draws_only_through_viz():
    "adpd.data imports no viz: PoseDL's drawing is attached when adpd.viz is imported, and says so before."
    import subprocess, sys
    code = ("import adpd.data, sys\n"
            "assert 'adpd.viz' not in sys.modules\n"
            "try: adpd.data.PoseDL([]).show_batch(b=(1, 2, 3))\n"
            "except NotImplementedError as e: assert 'import adpd.viz' in str(e), e\n"
            "else: raise AssertionError('show_batch drew without adpd.viz')\n"
            "import adpd.viz\n"
            "assert adpd.data.PoseDL.show_batch is not None and adpd.data.PoseDL.show_batch.__module__ == 'adpd.viz'\n"
            "assert adpd.data.PoseDL.show_results.__module__ == 'adpd.viz'\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]

# --- the inspector ------------------------------------------------------------------------------

def check(insp, ds, student, teacher, wn):
    "The inspector's values are decoupled_kd's (and the weight net's) for its current setting, and so is its figure."
    v = insp.values
    ref, s, t, tg = reference(ds, v['sample'], student, teacher, v['joint'], v['T'], v['thr'], wn)
    for k, x in ref.items(): assert v[k] == pytest.approx(x, rel=1e-5, abs=1e-9), k
    p = panels(insp.fig)
    jv = [r.get_height() for r in p['terms'].containers[0]]
    np.testing.assert_allclose(jv, [ref[n] for n in TERMS], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(image_data(p['student']), s[0, v['joint']].numpy(), rtol=1e-5, atol=1e-6)
    for n in TERMS: assert f">{v[n]:.4g}<" in insp.table.value
    assert insp.image.value[:4] == b'\x89PNG'

def snapshot(insp):
    p = panels(insp.fig)
    return (dict(insp.values), image_data(p['image'], -1).copy(), image_data(p['KAD student']).copy(),
            image_data(p['NAD teacher']).copy(), insp.image.value, insp.table.value)

def changed(a, b):
    "Which parts of two snapshots differ: values, drawn arrays, the PNG, the table."
    diff = lambda x, y: x.shape != y.shape or not np.ma.allequal(x, y) or (x.mask != y.mask).any()
    return dict(values=a[0] != b[0], image=diff(a[1], b[1]), kad=diff(a[2], b[2]), nad=diff(a[3], b[3]),
                png=a[4] != b[4], table=a[5] != b[5])

def test_inspector_widgets_change_drawing_and_values(dls):
    student, teacher, wn = models()
    perturbed(wn)
    ds = dls.valid.dataset
    insp = HeatmapInspector(DecouplingSource.from_models(ds, student, teacher, weight_net=wn), joint=9)
    assert (student.calls, teacher.calls) == (1, 1)
    check(insp, ds, student, teacher, wn)
    w = insp.widgets
    for name, value in [('joint', 10), ('T', 3.), ('thr', .3), ('sample', 2), ('view', 'difference')]:
        before = snapshot(insp)
        w[name].value = value
        after = snapshot(insp)
        assert insp.values[name] == value
        ch = changed(before, after)
        assert ch['png'] and ch['image' if name in ('view', 'sample', 'joint') else 'kad'], (name, ch)
        if name != 'view':
            assert ch['table'] and any(before[0][n] != after[0][n] for n in TERMS), name
        check(insp, ds, student, teacher, wn)
    assert (student.calls, teacher.calls) == (2, 2)          # only the new sample ran the models
    w['sample'].value = 0                                    # back to a cached sample: no run
    assert (student.calls, teacher.calls) == (2, 2)
    check(insp, ds, student, teacher, wn)

def test_inspector_from_learner_no_rerun_on_T_thr(dls):
    student, teacher, _ = models(1)
    learn = distill_learner(dls, student, teacher, kd='adpd', T=2., thr=.5)
    insp = HeatmapInspector(DecouplingSource.from_learner(learn), sample=3, joint=11)
    assert len(insp.src) == len(dls.valid.dataset) and insp.values['T'] == 2. and 'w_KAD' in insp.values
    assert insp.values['joint_name'] == COCO17.names[11] and insp.setting == dict(sample=3, joint=11, T=2., thr=.5, view='teacher')
    n = student.calls, teacher.calls
    for T in (1., 4.):
        for thr in (.2, .7):
            insp.widgets['T'].value, insp.widgets['thr'].value = T, thr
            check(insp, dls.valid.dataset, student, teacher, learn.distill.kd_loss)
    insp.widgets['view'].value = 'student'
    assert (student.calls, teacher.calls) == n
    assert student.m.training, 'the inspector left the student in eval mode'
    bundle = insp._repr_mimebundle_()
    assert 'application/vnd.jupyter.widget-view+json' in bundle

def test_inspector_errors(dls):
    student, teacher, _ = models()
    with pytest.raises(ValueError, match='no teacher'): HeatmapInspector(DecouplingSource.from_learner(pose_learner(dls, TinyPoseNet())))
    with pytest.raises(ValueError, match='give a student and a teacher'): DecouplingSource.from_models(dls.valid.dataset, student, None)
    with pytest.raises(ValueError, match='heatmap_size'):
        HeatmapInspector(DecouplingSource.from_models(dls.valid.dataset, torch.nn.Sequential(TinyPoseNet(), torch.nn.MaxPool2d(2)), teacher))
    with pytest.raises(ValueError, match='no samples'): DecouplingSource.from_models([], student, teacher)

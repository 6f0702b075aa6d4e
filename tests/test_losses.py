"Decoupled KD terms against plain loops, the KL identity, gradients, mixed precision, and the ADPD/FPD/KL losses."
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
import adpd.losses as losses
from adpd.transforms import encode_heatmaps
from adpd.losses import (TERMS, JointsMSELoss, decoupled_kd, decoupled_distributions, pose_kl, joint_mean, WeightNet,
                         ADPDLoss, DKDLoss, FPDLoss, KLPoseLoss)

def make_batch(B=3, K=6, H=16, W=12, seed=0, noise_t=.3, noise_s=.5):
    "Gaussian targets with unlabelled joints, one joint with no keypoint area and one whose area is the whole map."
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(B, K, 2, generator=g) * torch.tensor([W - 1., H - 1.])
    target, tw = encode_heatmaps(kp, torch.ones(B, K), (W, H))
    tw[0, 1] = tw[2, 3] = 0
    target[0, 1] = 0                        # an unlabelled joint has an all-zero target
    target[1, 2] *= .25                     # peak .25 < every thr: empty keypoint area
    target[2, 4] = 1.                       # every pixel in the area: empty non-keypoint area
    teacher = target + noise_t * torch.randn(target.shape, generator=g)
    student = target + noise_s * torch.randn(target.shape, generator=g)
    return student, teacher, target, tw

def reference(s, t, target, tw, T, thr):
    "Per sample and joint, float64, from the definitions: terms (B, K, 3) times T^2 and teacher masses (B, K, 2)."
    B, K = s.shape[:2]
    out, mass = torch.zeros(B, K, 3, dtype=torch.float64), torch.zeros(B, K, 2, dtype=torch.float64)
    kl = lambda p, q: (p * (p.log() - q.log())).sum()
    for b in range(B):
        for k in range(K):
            ps = torch.softmax(s[b, k].double().flatten() / T, 0)
            pt = torch.softmax(t[b, k].double().flatten() / T, 0)
            A = target[b, k].flatten() > thr
            PA, QA, PN, QN = pt[A].sum(), ps[A].sum(), pt[~A].sum(), ps[~A].sum()
            mass[b, k] = torch.stack([PA, PN])
            if tw is not None and tw[b, k] == 0: continue
            if A.any() and (~A).any(): out[b, k, 0] = kl(torch.stack([PA, PN]), torch.stack([QA, QN]))
            if A.any(): out[b, k, 1] = kl(pt[A] / PA, ps[A] / QA)
            if (~A).any(): out[b, k, 2] = kl(pt[~A] / PN, ps[~A] / QN)
    return out * T * T, mass

def stacked(r): return torch.stack([r[n] for n in TERMS], -1)

@pytest.mark.parametrize('T', [.5, 1., 2., 4.])
@pytest.mark.parametrize('thr', [.3, .5, .7])
def test_decoupled_kd_matches_loop_reference_and_kl_identity(T, thr):
    s, t, target, tw = make_batch(seed=int(T * 10 + thr * 10))
    r = decoupled_kd(s, t, target, tw, T=T, thr=thr)
    assert all(r[n].shape == (3, 6) and r[n].dtype == torch.float32 for n in TERMS)
    ref, mass = reference(s, t, target, tw, T, thr)
    torch.testing.assert_close(stacked(r).double(), ref, atol=1e-5, rtol=0)
    # the decoupling is exact: KL = BiKD + P_A KAD + P_N NAD (teacher masses)
    kl = pose_kl(s, t, tw, T).double()
    torch.testing.assert_close(kl, ref[..., 0] + mass[..., 0] * ref[..., 1] + mass[..., 1] * ref[..., 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(kl, (r['BiKD'] + mass[..., 0].float() * r['KAD'] + mass[..., 1].float() * r['NAD']).double(),
                               atol=1e-5, rtol=0)
    # the non-existent terms are exactly 0, not NaN
    assert r['KAD'][1, 2] == 0 and r['BiKD'][1, 2] == 0 and r['NAD'][1, 2] > 0
    assert r['NAD'][2, 4] == 0 and r['BiKD'][2, 4] == 0 and r['KAD'][2, 4] > 0
    assert all(r[n][0, 1] == 0 and r[n][2, 3] == 0 for n in TERMS)

# --- the two ways of computing the terms: small areas read at their pixels (the usual case), any area with masks --------
def usual_batch(B=4, K=6, H=16, W=12, seed=0, noise_t=.3, noise_s=.5):
    "Gaussian targets, some joints unlabelled (zero target, target weight 0), one out of the crop (no area, labelled)."
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(B, K, 2, generator=g) * torch.tensor([W - 1., H - 1.])
    vis = torch.ones(B, K); vis[0, 1] = vis[2, 3] = 0
    target, tw = encode_heatmaps(kp, vis, (W, H))
    target[1, 2] *= .25                     # no pixel above thr, target weight 1
    teacher = target + noise_t * torch.randn(target.shape, generator=g)
    student = target + noise_s * torch.randn(target.shape, generator=g)
    return student, teacher, target, tw

@pytest.fixture
def paths(monkeypatch):
    "Which way each `decoupled_kd` call went: 'small' (the areas read at their pixels) or 'general' (masks)."
    taken, small, general = [], losses._softmaxed, losses._shifted
    def spy_small(*a):
        r = small(*a)
        if r is not None: taken.append('small')
        return r
    def spy_general(*a): taken.append('general'); return general(*a)
    monkeypatch.setattr(losses, '_softmaxed', spy_small); monkeypatch.setattr(losses, '_shifted', spy_general)
    return taken

def general_only(monkeypatch): monkeypatch.setattr(losses, '_softmaxed', lambda *a: None)

@pytest.mark.parametrize('T', [.5, 1., 2.])
def test_small_area_path_matches_the_reference_and_the_general_path(T, paths, monkeypatch):
    s, t, target, tw = usual_batch(seed=int(T * 10))
    sp, tp = s.clone().requires_grad_(), t.clone().requires_grad_()
    wts = torch.rand(4, 6, 3)
    r = decoupled_kd(sp, tp, target, tw, T=T)
    (stacked(r) * wts).sum().backward()
    assert paths == ['small']
    ref, _ = reference(s, t, target, tw, T, .5)
    torch.testing.assert_close(stacked(r).detach().double(), ref, atol=1e-5, rtol=0)
    assert all(r[n][0, 1] == 0 and r[n][2, 3] == 0 for n in TERMS) and r['KAD'][1, 2] == 0 and r['NAD'][1, 2] > 0
    general_only(monkeypatch)
    sg, tg = s.clone().requires_grad_(), t.clone().requires_grad_()
    rg = decoupled_kd(sg, tg, target, tw, T=T)
    (stacked(rg) * wts).sum().backward()
    torch.testing.assert_close(stacked(r), stacked(rg), atol=1e-6, rtol=1e-5)
    for a, b in ((sp.grad, sg.grad), (tp.grad, tg.grad)):   # float32 gradients: differences of two products, to ~1e-6 of their scale
        torch.testing.assert_close(a, b, atol=1e-6 * float(b.abs().max()), rtol=1e-4)
    assert sp.grad[0, 1].abs().max() == 0 and sp.grad.isfinite().all() and tp.grad.isfinite().all()

def test_small_area_path_gradients_match_finite_differences(paths):
    s, t, target, tw = usual_batch(B=3, K=4, H=16, W=12, seed=3)
    s64, t64 = s.double().requires_grad_(), t.double().requires_grad_()
    for T in (.7, 2.):
        assert torch.autograd.gradcheck(lambda a, b: stacked(decoupled_kd(a, b, target, tw, T=T)), (s64, t64), fast_mode=True)
    assert paths and set(paths) == {'small'}

def test_the_general_path_takes_what_the_small_area_path_cannot(paths):
    s, t, target, tw = usual_batch(seed=4)
    for T, area in ((.05, target), (1., target.clamp(min=.6))):   # the area holds most of the mass; every pixel in the area
        r = decoupled_kd(s, t, area, tw, T=T)
        ref, _ = reference(s, t, area, tw, T, .5)
        torch.testing.assert_close(stacked(r).double(), ref, atol=1e-5 * max(1., float(ref.abs().max())), rtol=1e-5)
    assert paths == ['general', 'general']

@pytest.mark.parametrize('size', [(64, 48), (17, 13), (3, 5)])
def test_area_pixels_are_the_pixels_above_thr(size):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, size[0] * size[1], generator=g) ** 8
    x[1, 2] = 0; x[2, 0] = 1
    for thr in (.1, .5, .9):
        torch.testing.assert_close(losses._area_pixels(x, thr), (x > thr).flatten().nonzero().squeeze(1))

def test_bench_sized_batch_reads_the_area_at_its_pixels(paths):
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(32, 17, 2, generator=g) * torch.tensor([47., 63.])
    target, tw = encode_heatmaps(kp, (torch.rand(32, 17, generator=g) > .1).float(), (48, 64))
    decoupled_kd(target + .1 * torch.randn(target.shape, generator=g), target + .05 * torch.randn(target.shape, generator=g), target, tw)
    assert paths == ['small']

def test_without_target_weight_every_joint_counts():
    s, t, target, tw = make_batch()
    r = decoupled_kd(s, t, target)
    ref, _ = reference(s, t, target, None, 1., .5)
    torch.testing.assert_close(stacked(r).double(), ref, atol=1e-5, rtol=0)
    assert r['NAD'][2, 3] > 0                     # a labelled-or-not joint with a target now has its terms

@pytest.mark.parametrize('T', [.5, 1., 3.])
def test_identical_student_and_teacher_give_zero_terms(T):
    s, _, target, tw = make_batch()
    r = decoupled_kd(s, s.clone(), target, tw, T=T)
    assert all(r[n].abs().max() < 1e-6 for n in TERMS)
    assert pose_kl(s, s.clone(), tw, T).abs().max() < 1e-6

def test_gradients_match_finite_differences_for_student_and_teacher():
    s, t, target, tw = make_batch(B=3, K=5, H=8, W=6, seed=3)
    assert not (target[1, 2] > .5).any()          # an empty keypoint area is included
    s64, t64 = s.double().requires_grad_(), t.double().requires_grad_()
    for T in (.7, 2.):
        f = lambda a, b: stacked(decoupled_kd(a, b, target, tw, T=T))
        assert torch.autograd.gradcheck(f, (s64, t64))

def differentiable_reference(s, t, target, T, thr):
    "The terms with plain autograd ops (log_softmax and masked logsumexp), float64, for gradient comparisons."
    ls, lt = F.log_softmax(s.double().flatten(2) / T, -1), F.log_softmax(t.double().flatten(2) / T, -1)
    A = target.flatten(2) > thr
    def part(m):
        lms, lmt = torch.where(m, ls, -1e300).logsumexp(-1, keepdim=True), torch.where(m, lt, -1e300).logsumexp(-1, keepdim=True)
        q, qs = lt - lmt, ls - lms
        return (torch.where(m, q.exp() * (q - qs), 0.)).sum(-1), lmt[..., 0], lms[..., 0]
    kad, at, as_ = part(A); nad, nt, ns = part(~A)
    bikd = at.exp() * (at - as_) + nt.exp() * (nt - ns)
    return torch.stack([bikd, kad, nad], -1) * T * T

def test_float32_gradients_match_a_float64_autograd_reference():
    g = torch.Generator().manual_seed(5)
    target, _ = encode_heatmaps(torch.rand(4, 5, 2, generator=g) * torch.tensor([40., 56]) + 4, torch.ones(4, 5), (48, 64))
    s = (target + .3 * torch.randn(target.shape, generator=g)).requires_grad_()
    t = (target + .1 * torch.randn(target.shape, generator=g)).requires_grad_()
    wts = torch.rand(4, 5, 3, generator=g)
    (stacked(decoupled_kd(s, t, target, T=1.5)) * wts).sum().backward()
    s2, t2 = s.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    (differentiable_reference(s2, t2, target, 1.5, .5) * wts.double()).sum().backward()
    torch.testing.assert_close(s.grad.double(), s2.grad, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(t.grad.double(), t2.grad, atol=1e-7, rtol=1e-4)

def test_empty_areas_and_unlabelled_joints_give_zero_terms_and_finite_gradients():
    s, t, target, tw = make_batch()
    s.requires_grad_()
    r = decoupled_kd(s, t, target, tw)
    sum(v.sum() for v in r.values()).backward()
    assert all(v.isfinite().all() for v in r.values()) and s.grad.isfinite().all()
    assert s.grad[0, 1].abs().max() == 0 and s.grad[2, 3].abs().max() == 0   # unlabelled joints get no gradient
    # everything empty: all joints unlabelled with zero targets
    s0 = torch.randn(2, 3, 8, 6, requires_grad=True)
    r = decoupled_kd(s0, torch.randn(2, 3, 8, 6), torch.zeros(2, 3, 8, 6), torch.zeros(2, 3))
    sum(v.sum() for v in r.values()).backward()
    assert all((v == 0).all() for v in r.values()) and (s0.grad == 0).all()
    loss = ADPDLoss(3)
    s1 = torch.randn(2, 3, 8, 6, requires_grad=True)
    out = loss(s1, torch.randn(2, 3, 8, 6), torch.zeros(2, 3, 8, 6), torch.zeros(2, 3))
    out.backward()
    assert out == 0 and s1.grad.isfinite().all()

@pytest.mark.parametrize('shift', [-100., 100., 5.])
def test_extreme_logits_stay_exact(shift):
    """The keypoint area 200 logits below the rest (its sum underflows), above it (the rest underflows), or 10 above (the rest
    holds < 1e-3 of the mass: no underflow, but outside = total - inside would lose digits)."""
    s, t, target, tw = make_batch(seed=7)
    far = s + shift * (target > .5)
    r = decoupled_kd(far.requires_grad_(), t, target, tw, T=.5)
    sum(v.sum() for v in r.values()).backward()
    assert all(v.isfinite().all() for v in r.values()) and far.grad.isfinite().all()
    ref, _ = reference(far.detach(), t, target, tw, .5, .5)
    torch.testing.assert_close(stacked(r).double(), ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-5)

def test_bf16_autocast_gives_finite_terms_and_gradients():
    s, t, target, tw = make_batch(B=3, K=17, H=64, W=48)
    net = nn.Conv2d(3, 17, 3, padding=1)
    x = torch.randn(3, 3, 64, 48)
    for loss in (ADPDLoss(17), ADPDLoss(17, T=.5, faithful=True), KLPoseLoss(T=2.), FPDLoss()):
        net.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = net(x)
            l = loss(out, t.bfloat16(), target, tw)
        assert out.dtype == torch.bfloat16
        l.backward()
        assert l.isfinite() and all(v.isfinite().all() for v in loss.last.values())
        assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())
        assert all(p.grad is None or p.grad.isfinite().all() for p in loss.weight_params())
    sb = s.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        r = decoupled_kd(sb, t.bfloat16(), target, tw, T=.5)
    sum(v.sum() for v in r.values()).backward()
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in r.values()) and sb.grad.isfinite().all()
    ref, _ = reference(sb.detach().float(), t.bfloat16().float(), target, tw, .5, .5)
    torch.testing.assert_close(stacked(r).double(), ref, atol=1e-5, rtol=0)

def test_joints_mse_matches_per_joint_loop():
    p, g, w = torch.rand(4, 5, 8, 6), torch.rand(4, 5, 8, 6), (torch.rand(4, 5) > .3).float()
    loop = sum(.5 * F.mse_loss(p[:, k].flatten(1) * w[:, k, None], g[:, k].flatten(1) * w[:, k, None]) for k in range(5)) / 5
    torch.testing.assert_close(JointsMSELoss()(p, g, w), loop)
    torch.testing.assert_close(JointsMSELoss()(p, g, w[..., None]), loop)
    assert JointsMSELoss()(p, g, torch.zeros(4, 5)) == 0

def test_joint_mean_averages_over_labelled_joints():
    x, w = torch.tensor([[1., 2, 3], [4, 5, 6], [7, 8, 9]]), torch.tensor([[1., 0, 1], [0, 0, 0], [2, 1, 0]])
    torch.testing.assert_close(joint_mean(x, w), torch.tensor([2., 0., (14 + 8) / 2]))

def test_fpd_and_kl_losses():
    s, t, target, tw = make_batch()
    mse = JointsMSELoss()
    torch.testing.assert_close(FPDLoss(alpha=.3)(s, t, target, tw), .7 * mse(s, target, tw) + .3 * mse(s, t, tw))
    kl = KLPoseLoss(T=2.)
    per_sample = torch.stack([pose_kl(s, t, T=2.)[b][tw[b] > 0].mean() for b in range(3)])
    torch.testing.assert_close(kl(s, t, target, tw), .5 * mse(s, target, tw) + .5 * per_sample.mean())
    assert set(kl.last) == set(KLPoseLoss.names) - {'kd_grad'}        # no graph: no gradient ratio
    out = kl(s.clone().requires_grad_(), t, target, tw)
    assert 'kd_grad' not in kl.last                                   # the backward pass sets it
    out.backward()
    assert set(kl.last) == set(KLPoseLoss.names) and kl.last['kd_grad'] > 0

def test_adpd_starts_at_unit_weights_and_reaches_the_student():
    s, t, target, tw = make_batch()
    loss = ADPDLoss(6, T=2.)
    sp = s.clone().requires_grad_()
    out = loss(sp, t, target, tw)
    out.backward()
    assert all(loss.last[f'w_{n}'] == 1 for n in TERMS)
    r = decoupled_kd(s, t, target, tw, T=2.)
    kd = sum(joint_mean(r[n], tw).mean() for n in TERMS)
    torch.testing.assert_close(loss.last['kd'], kd)
    torch.testing.assert_close(out, .5 * JointsMSELoss()(s, target, tw) + .5 * kd)
    assert sp.grad.abs().sum() > 0 and loss.weight_net.fc2.weight.grad.abs().sum() > 0
    assert set(loss.last) == set(ADPDLoss.names)
    assert {id(p) for p in loss.weight_params()} == {id(p) for p in loss.weight_net.parameters()}

def test_samples_without_labelled_joints_add_nothing_to_kd():
    s, t, target, tw = make_batch()
    loss = ADPDLoss(6)
    loss(s, t, target, tw); kd = loss.last['kd']
    tw2 = torch.cat([tw, torch.zeros(1, 6)]); pad = lambda x: torch.cat([x, torch.randn(1, *x.shape[1:])])
    loss(pad(s), pad(t), torch.cat([target, torch.zeros(1, *target.shape[1:])]), tw2)
    torch.testing.assert_close(loss.last['kd'], kd)

def _train_weight_net(faithful, steps=6, B=6, K=4):
    torch.manual_seed(0)
    loss = ADPDLoss(K, faithful=faithful)
    before = {n: p.detach().clone() for n, p in loss.weight_net.named_parameters()}
    opt = torch.optim.Adam(loss.weight_params(), lr=1e-2)
    target, tw = encode_heatmaps(torch.rand(B, K, 2) * torch.tensor([11., 15]), torch.ones(B, K), (12, 16))
    for _ in range(steps):
        noise = torch.rand(B, 1, 1, 1)
        s, t = target + noise * torch.randn_like(target), target + .1 * torch.randn_like(target)
        opt.zero_grad(); loss(s, t, target, tw).backward(); opt.step()
    with torch.no_grad():
        s = target + torch.rand(B, 1, 1, 1) * torch.randn_like(target)
        w = loss.weight_net(s, target, decoupled_kd(s, target, target, tw))
    moved = {n for n, p in loss.weight_net.named_parameters() if not torch.equal(p, before[n])}
    return w, moved

def test_weights_become_input_dependent():
    w, moved = _train_weight_net(faithful=False)
    assert (w.std(0) > 1e-3 * w.mean(0)).all()          # differ between samples, for every term
    assert {'fc1.weight', 'fc2.weight', 'features.0.weight'} <= moved

def test_faithful_weights_stay_global_and_only_the_last_bias_moves():
    w, moved = _train_weight_net(faithful=True)
    assert moved == {'fc2.bias'}
    assert (w == w[:1]).all() and not (w == 1).all()

def test_detach_keeps_the_weight_net_off_the_student():
    s, t, target, tw = make_batch(K=6)
    for detach, expect in ((False, True), (True, False)):
        net = WeightNet(6, detach=detach)
        nn.init.normal_(net.fc2.weight, std=.1)
        sp = s.clone().requires_grad_()
        terms = decoupled_kd(sp, t, target, tw)
        net(sp, t, terms).sum().backward()
        assert (sp.grad is not None and sp.grad.abs().sum() > 0) == expect

def test_multi_output_student_is_distilled_against_the_teachers_last_output():
    s, t, target, tw = make_batch()
    for loss in (ADPDLoss(6), FPDLoss(), KLPoseLoss()):
        two = loss([s, s * .8], [torch.zeros_like(t), t], target, tw)
        torch.testing.assert_close(two, loss(s, t, target, tw) + loss(s * .8, t, target, tw))
    loss = ADPDLoss(6)
    loss([s, s * .8], t, target, tw); last = dict(loss.last)
    loss(s * .8, t, target, tw)
    torch.testing.assert_close(last['BiKD'], loss.last['BiKD'])   # recorded terms are the last output's

def test_bad_inputs_raise_clear_errors():
    s, t, target, tw = make_batch()
    with pytest.raises(ValueError, match='teacher heatmaps .* differ'): decoupled_kd(s, t[..., :8], target)
    with pytest.raises(ValueError, match='target heatmaps'): decoupled_kd(s, t, target[:, :4])
    with pytest.raises(ValueError, match='target_weight'): decoupled_kd(s, t, target, tw[:, :4])
    with pytest.raises(ValueError, match='T must be a finite number > 0'): decoupled_kd(s, t, target, T=-1)
    with pytest.raises(ValueError, match='\\(B, K, H, W\\)'): decoupled_kd(s[0], t[0], target[0])
    with pytest.raises(ValueError, match='teacher heatmaps'): ADPDLoss(6)(s, t[:, :, :8], target, tw)
    with pytest.raises(ValueError, match='built for 5 joints'): ADPDLoss(5)(s, t, target, tw)
    with pytest.raises(ValueError, match='differ'): JointsMSELoss()(s, target[:, :5], tw)

def test_decoupled_distributions_are_what_the_terms_are_made_of():
    s, t, target, tw = make_batch()
    d = decoupled_distributions(s, t, target, T=2.)
    r = decoupled_kd(s, t, target, T=2.)
    torch.testing.assert_close(d['mass_t'].sum(-1), torch.ones(3, 6))
    kl = lambda p, q: torch.where(p > 0, p * (p.log() - q.log()), 0.).sum((-1, -2)) * 4
    torch.testing.assert_close(kl(d['in_t'], d['in_s']), r['KAD'], atol=1e-5, rtol=0)
    torch.testing.assert_close(kl(d['out_t'], d['out_s']), r['NAD'], atol=1e-5, rtol=0)
    assert d['in_t'][1, 2].sum() == 0 and d['out_t'][2, 4].sum() == 0 and (d['area'] == (target > .5)).all()

# --- kd_grad: read off the real backward pass -------------------------------------------------------------------------
def two_pass_ratio(loss, s, t, target, tw):
    "The definition, as computed before hooks: two extra `autograd.grad` passes through the last output's pose and KD terms."
    s = s.detach().requires_grad_()
    gp = torch.autograd.grad(loss.pose_loss(s, target, tw), s)[0]
    gk = torch.autograd.grad(loss.kd(s, t, target, tw)[0], s)[0]
    return loss.alpha * gk.float().norm() / ((1 - loss.alpha) * gp.float().norm())

@pytest.mark.parametrize('make', [lambda: _perturbed(ADPDLoss(6)), lambda: _perturbed(ADPDLoss(6, detach=False, alpha=.3)),
                                  lambda: _perturbed(ADPDLoss(6, faithful=True)), lambda: FPDLoss(alpha=.7),
                                  lambda: KLPoseLoss(T=2.), lambda: DKDLoss(T=.5, weights=(1., 2., .5))],
                         ids=['adpd', 'adpd-nodetach', 'adpd-faithful', 'fpd', 'kl', 'dkd'])
def test_kd_grad_from_hooks_equals_two_extra_backward_passes(make):
    s, t, target, tw = make_batch(K=6, seed=6)
    loss = make()
    ref = two_pass_ratio(loss, s, t, target, tw)
    first = s * .8 + .1
    sp = s.clone().requires_grad_()
    out = loss([first, sp], t, target, tw)                           # multi-output: the ratio on the last output
    assert 'kd_grad' not in loss.last
    (out * 1024.).backward()                                          # a loss scale (fp16 mixed precision) cancels
    torch.testing.assert_close(loss.last['kd_grad'], ref, rtol=1e-5, atol=0)
    # the hooks do not change the gradients: the same as without tracking
    loss.track_grads = False
    sp2 = s.clone().requires_grad_()
    (loss([first, sp2], t, target, tw) * 1024.).backward()
    torch.testing.assert_close(sp2.grad, sp.grad)
    assert 'kd_grad' not in loss.last

def test_kd_grad_needs_a_graph_and_belongs_to_its_own_forward():
    s, t, target, tw = make_batch(K=6, seed=7)
    loss = KLPoseLoss()
    loss(s, t, target, tw)
    assert 'kd_grad' not in loss.last                                 # no graph: nothing to record
    out = loss(s.clone().requires_grad_(), t, target, tw)
    with torch.no_grad(): loss(s, t, target, tw)                     # e.g. a validation batch before the backward pass
    out.backward()
    assert 'kd_grad' not in loss.last                                 # the late backward writes into its own forward's record

# --- the weight net's pooling ---------------------------------------------------------------------------------------------
def test_weight_net_pools_its_heatmaps_to_a_height_of_at_most_16():
    net = WeightNet(5)
    assert [net.pool_factor(h) for h in (64, 48, 32, 24, 17, 16, 8)] == [4, 3, 2, 2, 2, 1, 1]
    assert WeightNet(5, faithful=True).pool_factor(64) == 1 and WeightNet(5, pool=2).pool_factor(64) == 2
    assert ADPDLoss(5).weight_net.pool_factor(64) == 4 and ADPDLoss(5, pool=1).weight_net.pool_factor(64) == 1
    assert ADPDLoss(5, faithful=True).weight_net.pool_factor(64) == 1
    seen = []
    net.features[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    s, t = torch.rand(2, 5, 64, 48), torch.rand(2, 5, 64, 48)
    terms = {n: torch.rand(2, 5) for n in TERMS}
    nn.init.normal_(net.fc2.weight, std=.1)
    w = net(s, t, terms)
    assert seen == [(2, 10, 16, 12)]
    full = WeightNet(5, pool=1); full.load_state_dict(net.state_dict())     # the same net on heatmaps pooled beforehand
    torch.testing.assert_close(full(F.avg_pool2d(s, 4), F.avg_pool2d(t, 4), terms), w)
    odd = WeightNet(5, pool=3); odd.load_state_dict(net.state_dict())       # a block cut by the border averages what it has
    s7, t7 = torch.rand(2, 5, 17, 13), torch.rand(2, 5, 17, 13)
    torch.testing.assert_close(odd(s7, t7, terms), full(F.avg_pool2d(s7, 3, ceil_mode=True), F.avg_pool2d(t7, 3, ceil_mode=True), terms))

@pytest.mark.parametrize('pool', [0, -1, 2.5, True, 'full', None])
def test_weight_net_rejects_a_bad_pool(pool):
    with pytest.raises(ValueError, match="WeightNet: pool must be 'auto' or an int >= 1"): WeightNet(5, pool=pool)

def test_weight_net_trains_on_a_single_sample_with_tiny_heatmaps():
    net = WeightNet(3).train()
    s = torch.rand(1, 3, 4, 4, requires_grad=True)                          # 4x4 -> 2x2 -> 1x1: one value per channel
    w = net(s, torch.rand(1, 3, 4, 4), {n: torch.rand(1, 3) for n in TERMS})
    w.sum().backward()
    assert w.shape == (1, 3) and w.isfinite().all()

# --- DKD: the decoupled terms with fixed weights ----------------------------------------------------------------------
def test_dkd_is_the_weighted_sum_of_the_term_means_and_fresh_unbounded_adpd():
    s, t, target, tw = make_batch(K=6, seed=5)
    dkd = DKDLoss(T=2.)
    out = dkd(s, t, target, tw)
    assert set(dkd.last) == set(DKDLoss.names) - {'kd_grad'} and DKDLoss.names == ('pose', 'kd', 'kd_grad', *TERMS)
    r = decoupled_kd(s, t, target, tw, T=2.)
    ok = (tw > 0).any(-1)
    means = {n: joint_mean(r[n], tw)[ok].mean() for n in TERMS}
    for n in TERMS: torch.testing.assert_close(dkd.last[n], means[n])
    torch.testing.assert_close(dkd.last['kd'], sum(means.values()))
    torch.testing.assert_close(out, .5 * JointsMSELoss()(s, target, tw) + .5 * sum(means.values()))
    adpd = ADPDLoss(6, T=2., bound=False)
    adpd(s, t, target, tw)
    torch.testing.assert_close(dkd.last['kd'], adpd.last['kd'])
    dkd2 = DKDLoss(T=2., weights=(.5, 0, 3))
    dkd2(s, t, target, tw)
    torch.testing.assert_close(dkd2.last['kd'], .5 * means['BiKD'] + 3 * means['NAD'])
    zero = DKDLoss(weights=(0, 0, 0))
    torch.testing.assert_close(zero(s, t, target, tw), .5 * JointsMSELoss()(s, target, tw))
    assert zero.last['kd'] == 0 and zero.weight_params() == []

@pytest.mark.parametrize('weights', [(1., 1.), (1., 1., 1., 1.), (1., -.1, 1.), (float('nan'), 1., 1.), (float('inf'), 1., 1.),
                                     (True, 1., 1.), ('1', 1, 1), 1., None])
def test_dkd_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match='DKDLoss: weights must be three finite numbers >= 0'): DKDLoss(weights=weights)

def test_dkd_checks_its_ranges():
    with pytest.raises(ValueError, match='DKDLoss: T must be'): DKDLoss(T=0.)
    with pytest.raises(ValueError, match='DKDLoss: thr must be'): DKDLoss(thr=1.)
    with pytest.raises(ValueError, match='DKDLoss: alpha must be'): DKDLoss(alpha=2.)

# --- the bound on ADPD's weights (04_losses derives it) --------------------------------------------
def _perturbed(loss, seed=3):
    "`loss` with a weight net whose outputs depend on its inputs (the last layer is zero at init)."
    torch.manual_seed(seed)
    for p in loss.weight_net.parameters(): nn.init.normal_(p, std=.3) if p.ndim > 1 else None
    return loss

def test_bounded_weights_mean_one_and_kd_never_negative():
    s, t, target, tw = make_batch(K=6, seed=1)
    loss = _perturbed(ADPDLoss(6))
    for _ in range(5):
        loss(s + torch.randn_like(s), t, target, tw)
        terms = decoupled_kd(s, t, target, tw)
        w = loss.weights(s, t, terms)
        torch.testing.assert_close(w.mean(-1), torch.ones(len(w)))
        assert (w > 0).all() and (w <= 3).all() and loss.last['kd'] >= 0
    assert ADPDLoss(6).bound and not ADPDLoss(6, faithful=True).bound and ADPDLoss(6).weight_net.detach
    assert not ADPDLoss(6, faithful=True).weight_net.detach

def test_bounded_gradients_student_sees_constant_weights_net_sees_relative_terms():
    "Student: d/ds sum_i mean_b(w_i·L_i) with w constant. Weight net: d/dθ sum_i mean_b(w_i·L_i/mean_j L_j - log w_i)."
    s, t, target, tw = make_batch(K=6, seed=2)
    loss = _perturbed(ADPDLoss(6, alpha=1.))
    sp = s.clone().requires_grad_()
    loss(sp, t, target, tw).backward()
    g_student = sp.grad.clone()
    g_net = {n: p.grad.clone() for n, p in loss.weight_net.named_parameters()}
    # the two references, from the definitions
    loss.zero_grad(); sp2 = s.clone().requires_grad_()
    terms = decoupled_kd(sp2, t, target, tw)
    L = torch.stack([joint_mean(terms[n], tw) for n in TERMS], -1)
    lw = loss.log_weights(loss.weight_net.log_weights(sp2, t, terms))
    ok = (tw > 0).any(-1)
    ((lw.exp().detach() * L)[ok].mean(0).sum()).backward(retain_graph=True)
    torch.testing.assert_close(sp2.grad, g_student)
    Lr = (L / L.mean(-1, keepdim=True)).detach()
    loss.zero_grad()
    ((lw.exp() * Lr - lw)[ok].mean(0).sum()).backward()
    for n, p in loss.weight_net.named_parameters():
        if p.grad is not None: torch.testing.assert_close(p.grad, g_net[n], msg=n)

def test_no_detach_lets_the_weight_net_push_the_student():
    "Without detaching, -log w sends gradient into the student's heatmaps through the weight net: the published behaviour."
    s, t, target, tw = make_batch(K=6, seed=4)
    grads = {}
    for detach in (True, False):
        loss = _perturbed(ADPDLoss(6, alpha=1., detach=detach))
        sp = s.clone().requires_grad_()
        loss(sp, t, target, tw).backward()
        grads[detach] = sp.grad
    assert not torch.allclose(grads[True], grads[False])

# --- settings are checked when a loss is built; any float dtype goes in ----------------------------------------------
@pytest.mark.parametrize('make, msg', [
    (lambda: ADPDLoss(17, thr=0.), r'ADPDLoss: thr must be a finite number in \(0, 1\), got 0.0'),
    (lambda: ADPDLoss(17, thr=1.5), r'thr must be a finite number in \(0, 1\)'),
    (lambda: ADPDLoss(17, T=0.), r'ADPDLoss: T must be a finite number > 0'),
    (lambda: ADPDLoss(17, T=float('nan')), r'T must be a finite number > 0, got nan'),
    (lambda: ADPDLoss(17, alpha=1.5), r'alpha must be a finite number in \[0, 1\]'),
    (lambda: KLPoseLoss(T=-1.), r'KLPoseLoss: T must be a finite number > 0, got -1.0'),
    (lambda: FPDLoss(alpha=-.1), r'FPDLoss: alpha must be'),
    (lambda: decoupled_kd(*torch.rand(3, 1, 2, 4, 4), thr=1.), r'decoupled_kd: thr must be')])
def test_loss_settings_are_checked_when_built(make, msg):
    with pytest.raises(ValueError, match=msg): make()

@pytest.mark.parametrize('dt', [torch.float16, torch.bfloat16, torch.float64])
def test_adpd_takes_any_float_dtype(dt):
    torch.manual_seed(0)
    s, t, tg = torch.randn(2, 17, 16, 12), torch.randn(2, 17, 16, 12), torch.rand(2, 17, 16, 12)
    ref = ADPDLoss(17)(s, t, tg)
    got = ADPDLoss(17)(s.to(dt), t.to(dt), tg.to(dt))
    assert torch.isfinite(got) and float(got) == pytest.approx(float(ref), rel=.05)

@pytest.mark.parametrize('detach', [True, False])
def test_adpd_takes_a_half_precision_student_with_a_float_teacher(detach):
    "Under mixed precision the student's heatmaps arrive in bf16/fp16 and the teacher's as float32 (cast before the loss)."
    torch.manual_seed(0)
    s, t, tg = torch.randn(2, 17, 64, 48), torch.randn(2, 17, 64, 48), torch.rand(2, 17, 64, 48)
    ref = ADPDLoss(17, detach=detach)(s, t, tg)
    sb = s.bfloat16().requires_grad_()
    loss = ADPDLoss(17, detach=detach)
    got = loss(sb, t, tg)
    got.backward()
    assert float(got) == pytest.approx(float(ref), rel=.05) and sb.grad.dtype == torch.bfloat16 and sb.grad.isfinite().all()
    assert loss.last['kd_grad'].isfinite() and all(p.grad is None or p.grad.isfinite().all() for p in loss.weight_params())

def test_kd_defaults_declared_once():
    "No function of the package declares its own default for a KD setting: every default of alpha, T, thr is `KDConfig`'s."
    import ast
    from pathlib import Path
    import adpd
    OTHER = {'pck_counts', 'PCK.__init__', 'pckh', 'mpii_evaluate',   # other quantities of the same name: PCK(h) thresholds,
             'oks_nms', 'draw_poses', 'show_heatmaps', '_overlay'}     # the OKS-NMS threshold, drawing thresholds and opacities
    bad = []
    for f in sorted(Path(adpd.__file__).parent.rglob('*.py')):
        tree = ast.parse(f.read_text())
        for cls in [None, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
            body = tree.body if cls is None else cls.body
            for fn in [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                name = fn.name if cls is None else f'{cls.name}.{fn.name}'
                a = fn.args
                pos = list(zip(a.args[len(a.args) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
                bad += [f"{f.name}: {name}({p.arg}={ast.unparse(d)})" for p, d in pos
                        if d is not None and p.arg in ('alpha', 'T', 'thr', 'dkd_weights') and name not in OTHER
                        and isinstance(d, (ast.Constant, ast.Tuple)) and not (isinstance(d, ast.Constant) and d.value is None)]
    assert not bad, bad

"Evaluation: OKS-NMS against a loop, rescoring, the COCO metric on oracle keypoints and an oracle model, PCKh."
import json, warnings
from types import SimpleNamespace
import cv2, numpy as np, pytest, torch
from adpd.core import COCO17, KeypointSpec
from adpd.data import CocoKeypoints, MPIIKeypoints, PoseRecords
from adpd.transforms import PIXEL_STD
from adpd.testing import HeatmapOracle
from conftest import quiet
from adpd.evaluate import (COCO_METRICS, rescore, oks_iou, oks_nms, predict_keypoints, gt_keypoints,
                           coco_results, coco_keypoint_eval, coco_evaluate, pckh)

ANN, DET = 'person_keypoints_tiny.json', 'person_detection_results_tiny.json'

def tiny(root, **kw): return quiet(CocoKeypoints, root / ANN, root / 'images', train=False, **kw)

# --- loop references -----------------------------------------------------------

def oks_pair(a, b, area, sigmas, in_vis_thr=None):
    "OKS of two poses `(K, 3)`, one joint at a time."
    sigmas, num, cnt = np.asarray(sigmas, np.float64), 0., 0.
    for k in range(len(sigmas)):
        if in_vis_thr is not None and not (a[k, 2] > in_vis_thr and b[k, 2] > in_vis_thr): continue
        d2 = (a[k, 0] - b[k, 0]) ** 2 + (a[k, 1] - b[k, 1]) ** 2
        num += np.exp(-d2 / (2 * sigmas[k]) ** 2 / (area + np.spacing(1)) / 2); cnt += 1
    return num / cnt if cnt else 0.

def nms_loop(kpts, scores, areas, sigmas, thr, in_vis_thr=None):
    "Greedy OKS-NMS: take the best remaining pose, drop those too similar to it, repeat."
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    while order:
        i = order.pop(0); keep.append(i)
        order = [j for j in order if oks_pair(kpts[i], kpts[j], (areas[i] + areas[j]) / 2, sigmas, in_vis_thr) <= thr]
    return keep

def random_poses(rng, n, people=4, K=17, noise=(.5, 6)):
    "`n` noisy copies of a few random poses, with confidences: duplicates for NMS to find."
    base = rng.uniform(0, 300, (people, K, 2))
    xy = base[rng.integers(0, people, n)] + rng.normal(0, 1, (n, K, 2)) * rng.uniform(*noise, (n, 1, 1))
    return np.concatenate([xy, rng.uniform(0, 1, (n, K, 1))], -1)

# --- OKS and NMS ------------------------------------------------------------------

def test_oks_iou_matches_loop():
    rng = np.random.default_rng(0)
    a, b = random_poses(rng, 5), random_poses(rng, 7)
    area = rng.uniform(1000, 9000, (5, 1))
    for thr in (None, .3):
        got = oks_iou(a, b, area, COCO17.sigmas, thr)
        ref = [[oks_pair(a[i], b[j], area[i, 0], COCO17.sigmas, thr) for j in range(7)] for i in range(5)]
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match='confidence'): oks_iou(a[..., :2], b[..., :2], 1., COCO17.sigmas, .2)

@pytest.mark.parametrize('seed', range(8))
def test_oks_nms_matches_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    k, s, ar = random_poses(rng, n), rng.random(n), rng.uniform(2000, 12000, n)
    for thr, vt in [(.9, None), (.5, None), (.9, .2)]:
        got = oks_nms(k, s, ar, COCO17.sigmas, thr, vt)
        ref = nms_loop(k, s, ar, COCO17.sigmas, thr, vt)
        assert got.tolist() == ref
    assert 1 <= len(oks_nms(k, s, ar, COCO17.sigmas, .5)) <= n

def test_oks_nms_suppresses_and_keeps():
    rng = np.random.default_rng(1)
    p = random_poses(rng, 1, people=1)[0]
    other = p.copy(); other[:, 0] += 200
    k = np.stack([p, p + .1, other, p])
    kept = oks_nms(k, np.array([.5, .9, .4, .9]), np.full(4, 5000.), COCO17.sigmas)
    assert kept.tolist() == [1, 2]   # ties keep the lower index; the far pose survives
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0), COCO17.sigmas).tolist() == []
    with pytest.raises(ValueError, match='scores'): oks_nms(k, np.ones(3), np.ones(4), COCO17.sigmas)

def test_rescore_matches_loop():
    rng = np.random.default_rng(2)
    mv, s = rng.uniform(0, 1, (50, 17)) ** 3, rng.uniform(0, 1, 50)
    mv[0] = .1   # no joint above the threshold: score 0
    ref = []
    for i in range(50):
        v = [m for m in mv[i] if m > .2]
        ref.append(s[i] * (sum(v) / len(v) if v else 0.))
    np.testing.assert_allclose(rescore(s, mv, .2), ref)
    assert rescore(s, mv)[0] == 0

# --- a stand-in dataset for pure-array checks ------------------------------------

class Rows:
    "Just the attributes of a dataset that `coco_results` reads."
    def __init__(self, image_id, kp, score, spec=COCO17, coco=None):
        n = len(image_id)
        rows = [dict(image_id=i, file='x', img_wh=(640, 480), center=(100, 100), scale=(1., 1.3), joints=np.zeros((spec.K, 3)),
                     score=sc, area=1., box=(0, 0, 10, 10)) for i, sc in zip(image_id, score)]
        self.db, self.spec, self.coco, self.cat_id, self.ann_file = PoseRecords.from_rows(rows, spec.K), spec, coco, 1, 'rows'
        self.n = n
    def __len__(self): return self.n

def test_coco_results_rescore_and_nms_per_image():
    rng = np.random.default_rng(3)
    p = random_poses(rng, 1, people=1)[0, :, :2]
    kp = np.stack([p, p, p + .2, p])           # rows 0-2 in image 7 (duplicates), row 3 in image 8
    mv = np.full((4, 17), .8); mv[1] = .9; mv[2, :10] = .1
    ds = Rows([7, 7, 7, 8], kp, [1., 1., .5, .3])
    res = coco_results(ds, kp, mv)
    assert [(r['image_id'], round(r['score'], 6)) for r in res] == [(7, .9), (8, .24)]
    k = np.array(res[0]['keypoints']).reshape(17, 3)
    np.testing.assert_allclose(k[:, :2], kp[1]); np.testing.assert_allclose(k[:, 2], .9)
    assert all(r['category_id'] == 1 for r in res)
    with pytest.raises(ValueError, match='rows'): coco_results(ds, kp[:3], mv[:3])

# --- the COCO metric on the real fixture --------------------------------------------

def test_gt_keypoints_score_ap_one_on_gt_boxes(coco_tiny, tmp_path):
    ds = tiny(coco_tiny)
    kp, mv = gt_keypoints(ds)
    lab = ds.db.joints[..., 2] > 0
    np.testing.assert_array_equal(mv > 0, lab); np.testing.assert_allclose(kp[lab], ds.db.joints[..., :2][lab])
    r = coco_evaluate((kp, mv), ds, res_file=tmp_path / 'out' / 'res.json')
    assert set(r) == set(COCO_METRICS)
    assert r['AP'] == 1. and r['AR'] == 1. and r['AP50'] == 1.
    saved = json.loads((tmp_path / 'out' / 'res.json').read_text())
    assert len(saved) == len(ds) and {d['image_id'] for d in saved} == set(ds.db.image_id.tolist())
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['res.json']   # no temporary left behind
    assert coco_keypoint_eval(ds.coco, tmp_path / 'out' / 'res.json', ds.spec.sigmas)['AP'] == 1.

def test_jittered_keypoints_score_less(coco_tiny):
    ds = tiny(coco_tiny)
    kp, mv = gt_keypoints(ds)
    rng = np.random.default_rng(4)
    aps = [coco_evaluate((kp + rng.normal(0, s, kp.shape), mv), ds)['AP'] for s in (2., 8.)]
    assert 1 > aps[0] > aps[1]

def test_gt_keypoints_with_detections(coco_tiny):
    ds, dets = tiny(coco_tiny), tiny(coco_tiny, det_file=coco_tiny / DET)
    kp, mv = gt_keypoints(dets)
    # reference: one detection at a time, best-IoU labelled GT person of the same image
    anns = [a for a in ds.coco.dataset['annotations'] if not a['iscrowd'] and a['num_keypoints'] > 0]
    def iou(a, b):
        w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]); h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        i = max(w, 0) * max(h, 0)
        return i / (a[2] * a[3] + b[2] * b[3] - i)
    matched = 0
    for r in range(len(dets)):
        cands = [a for a in anns if a['image_id'] == dets.db.image_id[r]]
        best = max(cands, key=lambda a: iou(dets.db.box[r], a['bbox']), default=None)
        if best is None or iou(dets.db.box[r], best['bbox']) < .5:
            assert (mv[r] == 0).all(); continue
        matched += 1
        j = np.array(best['keypoints'], float).reshape(17, 3)
        np.testing.assert_array_equal(mv[r] > 0, j[:, 2] > 0)
        np.testing.assert_allclose(kp[r][j[:, 2] > 0], j[j[:, 2] > 0, :2])
    assert 10 < matched < len(dets)
    r = coco_evaluate((kp, mv), dets)
    assert r['AP'] == 1.   # every labelled person of the fixture is found by some detection
    # OKS-NMS removes the duplicates (several detections of one person get the same oracle pose), and only them
    res, every = coco_results(dets, kp, mv), coco_results(dets, kp, mv, oks_thr=1.1)
    assert len(every) == len(dets) and len(res) < len(every)
    seen = {(d['image_id'], tuple(d['keypoints'])) for d in every if d['score'] > 0}
    kept = [(d['image_id'], tuple(d['keypoints'])) for d in res if d['score'] > 0]
    assert len(kept) == len(set(kept)) == len(seen)

# --- predict_keypoints with an oracle model -------------------------------------------

class Stacks(torch.nn.Module):
    "A stacked-hourglass-like wrapper: a list of heatmaps, the last one right."
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): h = self.m(x); return [torch.zeros_like(h), h]

def test_oracle_model_through_predict_keypoints(coco_tiny):
    ds = tiny(coco_tiny)
    oracle = HeatmapOracle(ds)
    aps, oks = {}, {}
    for flip, shift in [(False, False), (True, True), (True, False)]:
        kp, mv = predict_keypoints(oracle, ds, flip=flip, shift=shift, bs=5)
        aps[flip, shift] = coco_evaluate((kp, mv), ds)['AP']
        # COCOeval's OKS of each row with its own person
        oks[flip, shift] = oks_iou(ds.db.joints, np.concatenate([kp, np.ones_like(kp[..., :1])], -1), ds.db.area[:, None],
                                   ds.spec.sigmas, in_vis_thr=0).diagonal().mean()
    assert aps[False, False] > .95 and aps[True, True] > .95 and aps[True, True] >= aps[True, False]
    assert oks[False, False] > .97 and oks[True, True] > .97
    assert oks[True, True] > oks[True, False] + .01   # the HRNet shift undoes the ¾-pixel offset of the mirrored view
    # sub-pixel targets decode within a quarter heatmap pixel
    kp, mv = predict_keypoints(HeatmapOracle(ds, subpixel=True), ds, flip=False)
    lab = ds.db.joints[..., 2] > 0
    px = np.repeat(ds.db.scale[:, :1] * PIXEL_STD / ds.heatmap_size[0], 17, 1)   # image pixels per heatmap pixel
    err = np.abs(kp - ds.db.joints[..., :2]).max(-1)
    inside = lab & (mv > 0)
    assert inside.sum() >= .95 * lab.sum() and (err[inside] <= .25 * px[inside] + 1e-3).all()
    # a Learner-like object and a list of heatmaps give the same answer
    kp0, mv0 = predict_keypoints(oracle, ds)
    kp1, mv1 = predict_keypoints(SimpleNamespace(model=Stacks(oracle)), ds, bs=3)
    np.testing.assert_allclose(kp0, kp1); np.testing.assert_allclose(mv0, mv1)

def test_oracle_model_on_detections(coco_tiny):
    dets = tiny(coco_tiny, det_file=coco_tiny / DET)
    r = coco_evaluate(HeatmapOracle(dets), dets, bs=64)
    assert r['AP'] > .95

def test_fastai_learner_accepted(coco_tiny):
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    ds = tiny(coco_tiny)
    learn = Learner(DataLoaders([], []), HeatmapOracle(ds), loss_func=torch.nn.MSELoss())
    learn.model.train()
    assert coco_evaluate(learn, ds)['AP'] > .95
    assert learn.model.training   # mode restored

def test_bad_model_and_dataset(coco_tiny, mpii_tiny):
    ds = tiny(coco_tiny)
    class Wrong(torch.nn.Module):
        def forward(self, x): return torch.zeros(len(x), 17, 32, 24)
    with pytest.raises(ValueError, match='heatmap_size'): predict_keypoints(Wrong(), ds)
    with pytest.raises(TypeError, match='nn.Module'): predict_keypoints(object(), ds)
    with pytest.raises(ValueError, match='train=False'):
        predict_keypoints(HeatmapOracle(ds), quiet(CocoKeypoints, coco_tiny / ANN, coco_tiny / 'images', train=True))
    mp = MPIIKeypoints(mpii_tiny / 'mpii_tiny.json', mpii_tiny / 'images', train=False)
    with pytest.raises(ValueError, match='pckh'): coco_evaluate((np.zeros((5, 16, 2)), np.ones((5, 16))), mp)

# --- any K: a synthetic 5-joint category (needs no fixture) ----------------------------------

@pytest.fixture
def critters(tmp_path):
    "A COCO-format dataset of a 5-joint category on noise images: 3 images, 2 animals each, one joint unlabelled."
    rng = np.random.default_rng(5)
    names = ['head', 'left_paw', 'right_paw', 'tail', 'body']
    (tmp_path / 'img').mkdir()
    images, anns = [], []
    for i in range(3):
        cv2.imwrite(str(tmp_path / 'img' / f'{i}.png'), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
        images.append(dict(id=i + 1, file_name=f'{i}.png', width=320, height=240))
        for _ in range(2):
            x, y = rng.uniform(10, 200), rng.uniform(10, 120)
            j = np.concatenate([rng.uniform([x, y], [x + 100, y + 100], (5, 2)), np.full((5, 1), 2.)], 1)
            j[rng.integers(0, 5), 2] = 0
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=3, iscrowd=0, bbox=[x, y, 100., 100.],
                             area=1e4, keypoints=j.ravel().tolist(), num_keypoints=4))
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps(dict(images=images, annotations=anns, categories=[dict(id=3, name='critter', keypoints=names)])))
    return CocoKeypoints(ann, tmp_path / 'img', train=False)

def test_any_k_category(critters):
    ds, rng = critters, np.random.default_rng(8)
    assert ds.spec.K == 5
    assert coco_evaluate(gt_keypoints(ds), ds)['AP'] == 1.
    res = coco_results(ds, *gt_keypoints(ds))
    assert {r['category_id'] for r in res} == {3} and len(res[0]['keypoints']) == 15
    for flip in (False, True): assert coco_evaluate(HeatmapOracle(ds), ds, flip=flip)['AP'] > .9
    kp, mv = gt_keypoints(ds)
    assert coco_evaluate((kp + rng.normal(0, 6, kp.shape), mv), ds)['AP'] < 1

def test_empty_predictions_give_zeros(critters):
    ds = critters
    with pytest.warns(UserWarning, match='no predictions'): r = coco_keypoint_eval(ds.coco, [], ds.spec.sigmas)
    assert r == dict.fromkeys(COCO_METRICS, 0.)
    empty = Rows([], np.zeros((0, 5, 2)), [], spec=ds.spec, coco=ds.coco)
    with pytest.warns(UserWarning, match='no predictions'): r = coco_evaluate((np.zeros((0, 5, 2)), np.zeros((0, 5))), empty)
    assert r['AP'] == 0 and set(r) == set(COCO_METRICS)

# --- PCKh ------------------------------------------------------------------------------------

def test_pckh_by_hand_and_random():
    g = np.zeros((2, 3, 2)); p = g.copy()
    p[0, 0] = [3, 4]; p[1, 0] = [6, 0]; p[0, 1] = [0, 1]
    r = pckh(p, g, [[1, 1, 0], [1, 0, 0]], [10, 10], names=['a', 'b', 'pelvis'])
    assert r['a'] == 50 and r['b'] == 100 and np.isnan(r['pelvis']) and r['Mean'] == pytest.approx(200 / 3)
    assert r['Mean@0.1'] == pytest.approx(100 / 3)
    rng = np.random.default_rng(6)
    gt, vis, hs = rng.uniform(0, 500, (40, 16, 2)), rng.random((40, 16)) > .2, rng.uniform(20, 60, 40)
    assert pckh(gt, gt, vis, hs)['Mean'] == 100
    pred = gt + rng.normal(0, 15, gt.shape)
    r = pckh(pred, gt, vis, hs, names=COCO17.names[:16])
    d = np.linalg.norm(pred - gt, axis=-1) / hs[:, None]
    for k, n in enumerate(COCO17.names[:16]):   # per joint: visible ones within half a head size
        assert r[n] == pytest.approx(100 * ((d[:, k] <= .5) & vis[:, k]).sum() / vis[:, k].sum())
    assert r['Mean'] < 100
    with pytest.raises(ValueError, match='head_size'): pckh(gt, gt, vis, np.zeros(40))
    with pytest.raises(ValueError, match=r'\(N, K, 2\)'): pckh(gt[:3], gt, vis, hs)

def test_pckh_mpii_fixture(mpii_tiny):
    mp = MPIIKeypoints(mpii_tiny / 'mpii_tiny.json', mpii_tiny / 'images', train=False)
    j = mp.db.joints
    names = mp.spec.names
    assert pckh(j[..., :2], j[..., :2], j[..., 2], mp.head_size, names=names)['Mean'] == 100
    jit = j[..., :2] + np.random.default_rng(7).normal(0, 1, j[..., :2].shape) * mp.head_size[:, None, None] * .4
    r = pckh(jit, j[..., :2], j[..., 2], mp.head_size, names=names)
    assert r['Mean'] < 100 and r['Mean@0.1'] < r['Mean']

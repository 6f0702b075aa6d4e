"""Data pipeline and heatmap codec speed: adpd against the classic HRNet-family structure, side by side.

    python bench/bench_data.py [--samples 240] [--batch 256]

Prints samples/s of one-process training sample loading on the coco_tiny images, and encode/decode time for a
batch of B x 17 x 64 x 48 heatmaps, with ratios. Both pipelines use the same augmentation draws."""
import argparse, time, warnings
import numpy as np, torch
from adpd.core import shared_data
from adpd.data import CocoKeypoints, PoseTargets, SkipWarning
from adpd.transforms import encode_heatmaps, decode_heatmaps, heatmap_to_image
from classic import ClassicJointsDataset, classic_final_preds, classic_target

def rate(get, n, seed=0):
    np.random.seed(seed); t = time.perf_counter()
    for i in range(n): get(i)
    return n / (time.perf_counter() - t)

def best(f, reps=5):
    ts = []
    for _ in range(reps): t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def main():
    p = argparse.ArgumentParser(); p.add_argument('--samples', type=int, default=240); p.add_argument('--batch', type=int, default=256)
    a = p.parse_args()
    torch.set_num_threads(1)
    d = shared_data('coco_tiny')
    if d is None: raise SystemExit('shared/data/coco_tiny not found: set ADPD_SHARED_DATA')
    with warnings.catch_warnings():          # the people the dataset skips (no labelled joint) are expected; other warnings show
        warnings.simplefilter('ignore', SkipWarning)
        ds = CocoKeypoints(d / 'person_keypoints_tiny.json', d / 'images', train=True)
    classic = ClassicJointsDataset(ds)
    tfm = PoseTargets(ds.heatmap_size)
    N = len(ds)
    def ours_full(i):   # worker item + (every 32 items) the per-batch collation, normalisation and targets, on the CPU
        buf.append(ds[i % N])
        if len(buf) == 32:
            tfm((torch.stack([b[0] for b in buf]), torch.stack([b[1] for b in buf]))); buf.clear()
    buf = []
    print(f"training samples/s, one process, coco_tiny ({N} persons, {a.samples} draws each, interleaved x3):")
    r = {'classic': [], 'adpd': [], 'adpd+targets': []}
    for rep in range(3):
        r['classic'].append(rate(lambda i: classic[i % N], a.samples, rep))
        r['adpd'].append(rate(lambda i: ds[i % N], a.samples, rep))
        r['adpd+targets'].append(rate(ours_full, a.samples, rep))
    m = {k: float(np.median(v)) for k, v in r.items()}
    for k, v in m.items(): print(f"  {k:>13}: {v:7.1f} samples/s   ratio vs classic {v / m['classic']:.2f}x")
    print("  (adpd: what a data worker does; adpd+targets: plus normalisation and targets on the CPU, batches of 32)")

    B, K, H, W = a.batch, 17, 64, 48
    rng = np.random.default_rng(0)
    kp = torch.tensor(rng.uniform(0, [W, H], (B, K, 2)), dtype=torch.float32)
    vis = torch.ones(B, K)
    hm, _ = encode_heatmaps(kp, vis, (W, H))
    hm = hm + torch.rand_like(hm) * 1e-3
    hm_np = hm.numpy()
    center, scale = rng.uniform(100, 500, (B, 2)), rng.uniform(.5, 2, (B, 2))
    torch.set_num_threads(torch.get_num_threads())
    t_dec = best(lambda: heatmap_to_image(decode_heatmaps(hm)[0], center, scale, (W, H)))
    t_cls = best(lambda: classic_final_preds(hm_np, center, scale), 3)
    ours, _ = decode_heatmaps(hm); ours = heatmap_to_image(ours, center, scale, (W, H))
    ref, _ = classic_final_preds(hm_np, center, scale)
    assert np.abs(ours - ref).max() < 1e-2, np.abs(ours - ref).max()
    print(f"decode {B}x{K}x{H}x{W} to image coordinates: classic {t_cls * 1e3:.1f} ms, adpd {t_dec * 1e3:.2f} ms, "
          f"speed-up {t_cls / t_dec:.1f}x (results agree to {np.abs(ours - ref).max():.1e} px)")
    kpn, visn = (kp * 4).numpy(), np.ones((B, K, 3))
    t_enc = best(lambda: encode_heatmaps(kp, vis, (W, H)))
    t_ecl = best(lambda: [classic_target(kpn[b], visn[b], (W, H), (192, 256)) for b in range(B)], 3)
    print(f"encode {B}x{K}x{H}x{W}: classic {t_ecl * 1e3:.1f} ms, adpd {t_enc * 1e3:.2f} ms, speed-up {t_ecl / t_enc:.1f}x")

if __name__ == '__main__': main()

"""Speed and memory of the KD losses: adpd's `decoupled_kd` against a loop over joints structured like the published ADPD
loss, and the whole losses against the pose MSE, side by side in one run.

    python bench/bench_losses.py [--batch 32] [--joints 17] [--size 64 48] [--T 1] [--reps 15] [--threads 1]

Times forward + backward (gradient w.r.t. the student) of:
  adpd         `decoupled_kd` (the three (B, K) terms, summed with per-term means);
  loop         the structure of the published code, written here: a Python loop over joints, each batched over samples,
               masked softmaxes made by subtracting 1000 from the logits outside the region, `log(p + 1e-12)`;
  mse          `JointsMSELoss` (the HRNet pose loss);
  the whole losses as training uses them, each the MSE plus its KD term plus the `kd_grad` diagnostic:
  ADPDLoss (all)   the decoupled terms, the weight net (pooled heatmaps, convolutions, both linear layers) and its objective;
  DKDLoss (all)    the decoupled terms with fixed weights (ADPD without the weight net);
  KLPoseLoss (all) the classic spatial-softmax KL;
  and, to break ADPD down, `weight net` alone (`WeightNet.log_weights` on the detached heatmaps and terms, as ADPD runs it).
Each round runs every method once, in turn, so the ratios compare like with like on a shared machine; medians are printed,
and the line `ratio ADPDLoss (all) / JointsMSELoss: <x>` (the target is 5 or less).

Memory, two ways, for each method's forward + backward on float32 CPU tensors:
  saved   bytes of the distinct tensors autograd keeps for the backward pass (`saved_tensors_hooks`, by storage);
  peak    the peak resident-set growth during forward + backward over the inputs already allocated, from /proc/self
          (VmHWM reset through /proc/self/clear_refs), measured in a fresh process with glibc's mmap threshold fixed at
          64 KiB, so that every tensor larger than that is mapped on allocation and returned on free: the RSS follows the
          live tensors (the timings run with the default allocator settings)."""
import argparse, ctypes, gc, json, statistics, subprocess, sys, time
import torch
import torch.nn.functional as F
from adpd.transforms import encode_heatmaps
from adpd.losses import TERMS, decoupled_kd, JointsMSELoss, ADPDLoss, DKDLoss, KLPoseLoss

def loop_over_joints(student, teacher, target, target_weight, T=1., thr=.5, eps=1e-12, big=1000.):
    "BiKD, KAD, NAD `(B, K)` the way the published loss is structured: one joint at a time, additive -1000 masks, eps in logs."
    B, K = student.shape[:2]
    cols = {n: [] for n in TERMS}
    for k in range(K):
        w = target_weight[:, k, None]
        s, t, g = student[:, k].reshape(B, -1) * w, teacher[:, k].reshape(B, -1) * w, target[:, k].reshape(B, -1) * w
        inside = (g > thr).float(); outside = 1 - inside
        ps, pt = F.softmax(s / T, -1), F.softmax(t / T, -1)
        two_s = torch.stack([(ps * inside).sum(-1), (ps * outside).sum(-1)], -1)
        two_t = torch.stack([(pt * inside).sum(-1), (pt * outside).sum(-1)], -1)
        cols['BiKD'].append(F.kl_div(torch.log(two_s + eps), two_t, reduction='none').sum(-1))
        for name, off in (('KAD', outside), ('NAD', inside)):
            qs, qt = F.softmax(s / T - big * off, -1), F.softmax(t / T - big * off, -1)
            cols[name].append(F.kl_div(torch.log(qs + eps), qt, reduction='none').sum(-1))
    return {n: torch.stack(v, 1) * T * T for n, v in cols.items()}

def terms_loss(r): return sum(r[n].mean() for n in TERMS)

def saved_bytes(fn):
    "Bytes of the distinct storages autograd saves for backward while `fn()` builds its graph."
    seen = {}
    def pack(t):
        if t.device.type == 'cpu' and t.numel():
            st = t.untyped_storage(); seen[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out

def _status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) * 1024
    return None

def peak_extra_bytes(fn):
    "Peak RSS growth while `fn()` runs (forward + backward), with the RSS peak reset just before."
    gc.collect()
    try: open('/proc/self/clear_refs', 'w').write('5')
    except OSError: return None
    base = _status('VmRSS')
    fn()
    return _status('VmHWM') - base

def setup(a):
    "Inputs and the methods, each a function of the student heatmaps returning a scalar to backpropagate."
    B, K, (H, W) = a.batch, a.joints, a.size
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(B, K, 2, generator=g) * torch.tensor([W - 1., H - 1.])
    vis = (torch.rand(B, K, generator=g) > .1).float()
    target, tw = encode_heatmaps(kp, vis, (W, H))
    teacher = target + .05 * torch.randn(target.shape, generator=g)
    student0 = target + .1 * torch.randn(target.shape, generator=g)
    mse, adpd, dkd, klp = JointsMSELoss(), ADPDLoss(K, T=a.T, thr=a.thr), DKDLoss(T=a.T, thr=a.thr), KLPoseLoss(T=a.T)
    terms = decoupled_kd(student0, teacher, target, tw, T=a.T, thr=a.thr)
    forwards = {
        'adpd': lambda s: terms_loss(decoupled_kd(s, teacher, target, tw, T=a.T, thr=a.thr)),
        'loop': lambda s: terms_loss(loop_over_joints(s, teacher, target, tw, T=a.T, thr=a.thr)),
        'mse': lambda s: mse(s, target, tw),
        'ADPDLoss (all)': lambda s: adpd(s, teacher, target, tw),
        'DKDLoss (all)': lambda s: dkd(s, teacher, target, tw),
        'KLPoseLoss (all)': lambda s: klp(s, teacher, target, tw),
        'weight net': lambda s: adpd.weight_net.log_weights(s, teacher, terms).sum(),
    }
    def step(f):
        s = student0.clone().requires_grad_()
        f(s).backward()
        return s.grad
    return student0, teacher, target, tw, forwards, step

def memory_child(a):
    "Runs in a fresh process: big tensors mapped on allocation and unmapped on free, so the RSS follows live tensors."
    ctypes.CDLL('libc.so.6').mallopt(-3, 64 * 1024)        # M_MMAP_THRESHOLD, fixed
    student0, teacher, target, tw, forwards, step = setup(a)
    for f in forwards.values(): step(f)                     # warm-up: lazy initialisations out of the way
    print(json.dumps({n: peak_extra_bytes(lambda: step(f)) for n, f in forwards.items()}))

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=32); p.add_argument('--joints', type=int, default=17)
    p.add_argument('--size', type=int, nargs=2, default=(64, 48), metavar=('H', 'W'))
    p.add_argument('--T', type=float, default=1.); p.add_argument('--thr', type=float, default=.5)
    p.add_argument('--reps', type=int, default=15); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.memory_child: return memory_child(a)
    B, K, (H, W) = a.batch, a.joints, a.size
    student0, teacher, target, tw, forwards, step = setup(a)

    # agreement first: the same terms, up to the loop's eps in logs and -1000 masks
    ours = decoupled_kd(student0, teacher, target, tw, T=a.T, thr=a.thr)
    loop = loop_over_joints(student0, teacher, target, tw, T=a.T, thr=a.thr)
    diff = max(float((ours[n] - loop[n]).abs().max()) for n in TERMS)
    gdiff = float((step(forwards['adpd']) - step(forwards['loop'])).abs().max())

    times = {n: [] for n in forwards}
    for f in forwards.values(): step(f)                      # warm-up
    for _ in range(a.reps):
        for n, f in forwards.items():
            t0 = time.perf_counter(); step(f); times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) * 1e3 for n, v in times.items()}

    print(f"KD losses, forward + backward, B={B} K={K} {H}x{W} float32 CPU, {a.threads} thread(s), "
          f"T={a.T} thr={a.thr}, median of {a.reps} interleaved rounds")
    print(f"  max |adpd - loop|: terms {diff:.2e}, student gradients {gdiff:.2e}")
    for n, v in med.items(): print(f"  {n:>17}: {v:8.2f} ms")
    print(f"  ratio adpd / loop over joints: {med['adpd'] / med['loop']:.3f}x   (target <= 0.5x)")
    print(f"  ratio adpd / JointsMSELoss:    {med['adpd'] / med['mse']:.3f}x   (target <= 4x)")
    print(f"ratio ADPDLoss (all) / JointsMSELoss: {med['ADPDLoss (all)'] / med['mse']:.2f}")

    print("memory, forward + backward (MiB): saved for backward | peak RSS growth over the inputs")
    try:
        child = subprocess.run([sys.executable, __file__, '--memory-child', *sys.argv[1:]], capture_output=True, text=True, check=True)
        peaks = json.loads(child.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, OSError, ValueError, IndexError) as e:
        print(f"  (peak RSS not measured: {e})"); peaks = {}
    for n, f in forwards.items():
        s = student0.clone().requires_grad_()
        sb, out = saved_bytes(lambda: f(s)); del out
        pk = peaks.get(n)
        print(f"  {n:>17}: {sb / 2 ** 20:7.1f} | " + (f"{pk / 2 ** 20:7.1f}" if pk is not None else "    n/a"))
    print(f"  (one (B, K, H, W) float32 tensor is {target.numel() * 4 / 2 ** 20:.1f} MiB; the peak includes the student's gradient)")

if __name__ == '__main__': main()

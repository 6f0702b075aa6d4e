"""GPU check of distillation training: AMP/channels_last correctness, throughput, teacher share, memory, torch.compile.

    python bench/gpu_check.py                      # CUDA if available (< 8 min on one GPU), else the CPU smoke
    python bench/gpu_check.py --cpu-smoke          # tiny models, 64x48, batch 4, 2 steps (the CI test)
    python bench/gpu_check.py --amp bf16 --steps 30 --budget-s 600 --workers 8

On CUDA: an HRNet-W32 student and an HRNet-W48 teacher at 256x192, built with the kit's public API
(`create_pose_model`, `distill_learner`, `pose_dls` over `make_synthetic_coco`), trained with fastai.

1. correctness: one batch, the same initial weights (student, teacher and ADPD weight net) in every mode, a few
   ADPD training steps in fp32 (TF32 off: the reference), AMP fp16 (`learn.to_fp16()`), AMP bf16 (`learn.to_bf16()`),
   channels_last (fastai's `ChannelsLast`; the teacher converted here) alone and with each AMP. A mode passes when every
   loss is finite, the student's and the weight net's parameters are finite after the steps, and the first step's loss
   and KD loss (same weights, same batch) are within the stated relative tolerance of fp32's.
2. throughput: img/s of training steps for no KD, FPD and ADPD at batch 32 and 64 with AMP, the data loader included
   (`pose_dls` over JPEGs: decode, augment, warp, targets) and excluded (one batch already on the GPU, repeated), after
   warmup steps, timed between two device synchronisations; the teacher-forward share of the step time (CUDA events around
   the teacher's forward) and the peak GPU memory (`torch.cuda.max_memory_allocated`) of each run.
3. variants: ADPD at the largest batch on GPU tensors with channels_last, and with `torch.compile` (student and teacher;
   in a subprocess with a timeout, so a slow or failing compile is reported, never fatal).
4. cohort: `distill_cohort` of four students (no KD, FPD, DKD, ADPD) at the largest batch, AMP and channels_last, batches
   on the device: the teacher runs once per batch (forward hooks count it) without autograd (grad mode off and its
   output without a graph inside its forward), every loss finite; img/s of the whole cohort step.
Then one `summary:` line. Exit status 1 when a correctness check fails, 2 when a benchmark run raised, else 0.

On a machine without CUDA it runs the same code with tiny models (`tiny-w8` student, `tiny-w16` teacher), 64x48 inputs,
batch 4 and 1-2 steps, AMP through `torch.autocast('cpu')` (fastai's `MixedPrecision` hard-codes 'cuda'), and prints
"no CUDA: CPU smoke only": numbers there check the plumbing, not speed.
"""
from __future__ import annotations
import argparse, contextlib, copy, gc, json, math, os, subprocess, sys, tempfile, time, warnings
from dataclasses import dataclass, field, asdict
from pathlib import Path

SECTIONS = ('== environment', '== correctness', '== throughput', '== variants', '== cohort')
CPU_SMOKE_LINE = 'no CUDA: CPU smoke only'

# Relative tolerances of the first step's losses against the fp32 reference (same weights, same batch), per precision.
# fp32 modes (channels_last) differ from the reference only by the order of float32 sums (different conv algorithms).
# fp16 has an 11-bit significand (2^-11 ~ 5e-4 per rounding), bf16 an 8-bit one (2^-9 ~ 2e-3): over the ~100 layers of
# an HRNet the heatmaps move by ~1e-2 (bf16) relative. The total loss is dominated by the MSE to the targets and moves
# much less; the KD loss measures a student-teacher difference and moves about as much as the heatmaps do.
TOL = {'fp32': dict(loss=1e-4, kd=1e-3), 'fp16': dict(loss=5e-3, kd=5e-2), 'bf16': dict(loss=2e-2, kd=1.5e-1)}

MODES = {  # name: (amp, channels_last)
    'fp32': (None, False), 'fp16': ('fp16', False), 'bf16': ('bf16', False),
    'channels_last': (None, True), 'channels_last+fp16': ('fp16', True), 'channels_last+bf16': ('bf16', True)}

def within_tol(value, ref, rtol, atol=0.):
    "`(ok, rel)`: `value` and `ref` finite and `|value - ref| <= atol + rtol·|ref|`; `rel` the relative difference."
    try: value, ref = float(value), float(ref)
    except (TypeError, ValueError): return False, float('nan')
    if not (math.isfinite(value) and math.isfinite(ref)): return False, float('nan')
    d = abs(value - ref)
    rel = d / abs(ref) if ref != 0 else (0. if d == 0 else float('inf'))
    return d <= atol + rtol * abs(ref), rel

@dataclass
class Settings:
    device: str
    smoke: bool
    student: str = 'hrnet_w32'
    teacher: str = 'hrnet_w48'
    image_size: tuple = (192, 256)          # (w, h): 256x192 crops
    batch_sizes: tuple = (32, 64)
    corr_bs: int = 32
    corr_steps: int = 3
    warmup: int = 5
    steps: int = 20
    amp: str = 'fp16'
    image_wh: tuple = (640, 480)            # synthetic JPEG size: about a COCO image's decode cost
    workers: int | None = None              # pose_dls' default when None
    compile: bool = True
    modes: tuple = tuple(MODES)
    budget_s: float = 450.
    data: str = ''
    heatmap_size: tuple = field(init=False)
    def __post_init__(self): self.heatmap_size = (self.image_size[0] // 4, self.image_size[1] // 4)

    @classmethod
    def cpu_smoke(cls, **kw):
        return cls(device='cpu', smoke=True, student='tiny-w8', teacher='tiny-w16', image_size=(48, 64), batch_sizes=(4,),
                   corr_bs=4, corr_steps=2, warmup=1, steps=2, image_wh=(320, 256), workers=0, compile=False, budget_s=120., **kw)

# ---------------------------------------------------------------------------------------------------------------- helpers
def imports():
    "The kit and fastai, imported quietly (fastai/torch emit deprecation warnings on import)."
    try: import adpd  # noqa: F401
    except ImportError: sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # a checkout without `pip install -e .`
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import torch
        from fastai.callback.core import Callback, CancelFitException, CancelValidException
        from fastai.callback.fp16 import MixedPrecision, AMPMode
        from fastai.callback.channelslast import ChannelsLast
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        from adpd.models import create_pose_model
        from adpd.learner import distill_learner, distill_cohort
        from adpd.data import CocoKeypoints, pose_dls
        from adpd.synthetic import make_synthetic_coco
    return dict(torch=torch, Callback=Callback, CancelFitException=CancelFitException, CancelValidException=CancelValidException,
                MixedPrecision=MixedPrecision, AMPMode=AMPMode, ChannelsLast=ChannelsLast, DataLoaders=DataLoaders,
                DataLoader=DataLoader, create_pose_model=create_pose_model, distill_learner=distill_learner, distill_cohort=distill_cohort,
                CocoKeypoints=CocoKeypoints, pose_dls=pose_dls, make_synthetic_coco=make_synthetic_coco)

def table(rows, cols):
    "Plain aligned text table of dicts `rows` over `cols`."
    cells = [[str(c) for c in cols]] + [[fmt(r.get(c, '')) for c in cols] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    line = lambda r: '  '.join(s.rjust(w[i]) if i else s.ljust(w[i]) for i, s in enumerate(r)).rstrip()
    return '\n'.join([line(cells[0]), line(['-' * x for x in w])] + [line(r) for r in cells[1:]])

def fmt(v):
    if isinstance(v, float):
        if math.isnan(v): return '-'
        if not math.isfinite(v): return str(v)
        return f'{v:.4g}' if abs(v) < 1e4 else f'{v:.0f}'
    return str(v)

class Run:
    "The building blocks, bound to the imported modules and the settings."
    def __init__(self, s:Settings):
        self.t_start = time.perf_counter()      # --budget-s counts from here: imports, data and models included
        self.s, self.m = s, imports()
        self.torch = torch = self.m['torch']
        self.dev = torch.device(s.device)
        self.cuda = self.dev.type == 'cuda'
        self.errors, self.failures = [], []
        Callback, self.CancelFit = self.m['Callback'], self.m['CancelFitException']
        CancelValid, MixedPrecision, AMPMode = self.m['CancelValidException'], self.m['MixedPrecision'], self.m['AMPMode']
        DataLoader, run = self.m['DataLoader'], self

        class NoValidate(Callback):
            "Skip the validation of every epoch: the check times and compares training steps only."
            def before_validate(self): raise CancelValid()

        class CPUMixedPrecision(MixedPrecision):
            "fastai's `MixedPrecision` with `torch.autocast('cpu')` (fastai's hard-codes 'cuda'): the CPU smoke's AMP."
            def before_fit(self):
                from fastcore.foundation import L
                from torch.amp import GradScaler
                dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
                self.kwargs['enabled'] = dtype == torch.float16
                self.autocast, self.learn.scaler, self.scales = torch.autocast('cpu', dtype=dtype), GradScaler('cpu', **self.kwargs), L()

        class RepeatBatch(DataLoader):
            "A fastai `DataLoader` that yields one prepared batch (already on the device) `n` times: no loader cost."
            def __init__(self, batch, n, dataset):
                super().__init__(dataset, bs=len(batch[0]), num_workers=0, device=batch[0].device)
                self.batch, self.n_rep = batch, n
            def __len__(self): return self.n_rep
            def __iter__(self):
                for _ in range(self.n_rep): yield self.batch

        class StepLog(Callback):
            "Per training step: the loss, the KD loss's recorded values (`kd_loss.last`), and skipped (fp16-overflow) steps."
            order = 100
            def before_fit(self): self.rows, self.skipped = [], 0
            def after_cancel_step(self): self.skipped += 1
            def after_batch(self):
                if not self.training: return
                d = getattr(self.learn, 'distill', None)
                last = getattr(d.kd_loss, 'last', {}) if d is not None else {}
                self.rows.append(dict(loss=float(self.learn.loss),
                                      **{k: float(v) for k, v in last.items() if torch.is_tensor(v) and v.numel() == 1}))

        class StepTimer(Callback):
            """Wall time of `steps` training steps after `warmup` ones, between two device synchronisations (the loader's
            time included when there is one), and the teacher's forward time inside that window (CUDA events on the GPU)."""
            order = 100
            def __init__(self, warmup, steps, teacher=None):
                self.warmup, self.steps, self.teacher = warmup, steps, teacher
            def before_fit(self):
                self.k, self.t0, self.t1, self.pairs, self.t_teacher, self.hooks = 0, None, None, [], 0., []
                if self.teacher is not None:
                    self.hooks = [self.teacher.register_forward_pre_hook(self.pre), self.teacher.register_forward_hook(self.post)]
            def pre(self, mod, inp):
                if self.t0 is None or self.t1 is not None: return
                if run.cuda: self.start = torch.cuda.Event(enable_timing=True); self.start.record()
                else: self.start = time.perf_counter()
            def post(self, mod, inp, out):
                if self.t0 is None or self.t1 is not None: return
                if run.cuda:
                    e = torch.cuda.Event(enable_timing=True); e.record(); self.pairs.append((self.start, e))
                else: self.t_teacher += time.perf_counter() - self.start
            def after_batch(self):
                if not self.training: return
                self.k += 1
                if self.k == self.warmup: run.sync(); self.t0 = time.perf_counter()
                if self.k == self.warmup + self.steps:
                    run.sync(); self.t1 = time.perf_counter()
                    raise run.CancelFit()
            def remove_hooks(self):
                for h in getattr(self, 'hooks', []): h.remove()
                self.hooks = []
            def after_fit(self):
                self.remove_hooks()
                if run.cuda and self.pairs:
                    run.sync(); self.t_teacher = sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
            @property
            def seconds(self): return None if self.t1 is None else self.t1 - self.t0

        self.NoValidate, self.CPUMixedPrecision, self.RepeatBatch = NoValidate, CPUMixedPrecision, RepeatBatch
        self.StepLog, self.StepTimer = StepLog, StepTimer

    def elapsed(self): return time.perf_counter() - self.t_start
    def left(self): return self.s.budget_s - self.elapsed()
    def sync(self):
        if self.cuda: self.torch.cuda.synchronize(self.dev)

    def free(self, collect=True):
        "Release the GPU memory of finished runs (fastai learners hold reference cycles) and restart the peak count."
        if not self.cuda: return
        if collect: gc.collect(); self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats(self.dev)

    def peak_gib(self):
        return self.torch.cuda.max_memory_allocated(self.dev) / 2**30 if self.cuda else float('nan')

    # ------------------------------------------------------------------------------------------------------------ data
    def data(self):
        "Train and valid `CocoKeypoints` over a cached synthetic dataset big enough for one epoch of every timed run."
        s, m = self.s, self.m
        need = (s.warmup + s.steps) * max(s.batch_sizes)
        n = 16 if s.smoke else max(64, math.ceil(need / 2 / 0.8))     # ~2.5 persons an image, 80% of images train
        root = Path(s.data or Path(tempfile.gettempdir()) / f'adpd-gpu-check-{"smoke" if s.smoke else "gpu"}')
        t = time.perf_counter()
        splits = m['make_synthetic_coco'](root, n_images=n, seed=0, image_size=s.image_wh)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            tr = m['CocoKeypoints'](*splits['train'], image_size=s.image_size, heatmap_size=s.heatmap_size)
            va = m['CocoKeypoints'](*splits['val'], train=False, image_size=s.image_size, heatmap_size=s.heatmap_size)
        print(f"data: {root} ({n} synthetic {s.image_wh[0]}x{s.image_wh[1]} JPEGs: {len(tr)} train / {len(va)} valid persons,"
              f" {time.perf_counter() - t:.1f}s)", flush=True)
        self.tr, self.va = tr, va
        return tr, va

    def dls(self, bs, workers=None, device=None):
        return self.m['pose_dls'](self.tr, self.va, bs=bs, num_workers=workers, device=device or self.dev)

    def repeat_dls(self, b, n):
        "`DataLoaders` whose training loader yields the on-device batch `b` `n` times (the datasets are there for their `spec`)."
        dls = self.m['DataLoaders'](self.RepeatBatch(b, n, self.tr), self.RepeatBatch(b, 1, self.va), device=self.dev)
        dls.n_inp = 1             # batches are (x, hm, tw), as pose_dls's
        return dls

    def batch(self, bs, train=True):
        "One batch `(x, hm, tw)` of `bs` samples on the device (train: augmented; valid: not, so it is the same each time)."
        dl = self.dls(bs, workers=0)
        b = (dl.train if train else dl.valid).one_batch()
        if len(b[0]) < bs: raise ValueError(f"gpu_check: only {len(b[0])} samples for a batch of {bs}")
        return tuple(t.to(self.dev) for t in b)

    def models(self):
        "The student and teacher, initialised once (seed 0) on the CPU; every run trains copies of them."
        t = time.perf_counter()
        self.torch.manual_seed(0)
        cpm = self.m['create_pose_model']
        self.student0, self.teacher0 = cpm(self.s.student), cpm(self.s.teacher)
        self.teacher_sd = {k: v.detach().clone() for k, v in self.teacher0.state_dict().items()}
        n = lambda mod: sum(p.numel() for p in mod.parameters()) / 1e6
        print(f"models: student {self.s.student} ({n(self.student0):.1f}M params), teacher {self.s.teacher} "
              f"({n(self.teacher0):.1f}M), {time.perf_counter() - t:.1f}s", flush=True)

    # --------------------------------------------------------------------------------------------------------- learner
    def learner(self, dls, kd, amp=None, channels_last=False, compile=False, cbs=()):
        "A `distill_learner` on copies of the initial models, with AMP and channels_last as fastai users set them."
        torch = self.torch
        student = copy.deepcopy(self.student0)
        # The teacher is frozen (eval, no grad, outside the optimizer: `distill_learner`'s contract, checked after the
        # correctness runs), so runs share the initial one; channels_last and compile change it, so they get a copy.
        teacher = None if not kd else copy.deepcopy(self.teacher0) if channels_last or compile else self.teacher0
        if not kd: self.teacher0.to('cpu')       # off the GPU: plain training's peak memory has no teacher
        if channels_last and teacher is not None: teacher = teacher.to(memory_format=torch.channels_last)  # fastai's ChannelsLast converts only learn.model
        if compile:
            student = torch.compile(student)
            if teacher is not None: teacher = torch.compile(teacher)
        torch.manual_seed(0)                      # the same ADPD weight-net initialisation in every run
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            learn = self.m['distill_learner'](dls, student, teacher, kd=kd, lr=1e-3, cbs=[self.NoValidate(), *cbs])
        if channels_last: learn.add_cb(self.m['ChannelsLast']())
        if amp:
            if self.cuda: learn.to_fp16() if amp == 'fp16' else learn.to_bf16()
            else: learn.add_cb(self.CPUMixedPrecision(amp_mode=amp))
        return learn, student, teacher

    def fit(self, learn, n_batches_per_epoch, total):
        "Fit enough epochs for `total` training steps (a callback cancels the fit once it has what it needs)."
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            learn.fit(max(1, math.ceil(total / max(1, n_batches_per_epoch))))

    # ----------------------------------------------------------------------------------------------------- correctness
    def correctness(self):
        "Train the same ADPD steps on one batch from the same weights in each mode; compare with fp32."
        s, torch = self.s, self.torch
        print(f"\n{SECTIONS[1]}: ADPD, {s.student} <- {s.teacher}, {s.image_size[1]}x{s.image_size[0]}, batch {s.corr_bs}, "
              f"{s.corr_steps} steps on one batch, same initial weights; step-1 loss and KD loss vs fp32 (TF32 off)", flush=True)
        print('tolerances (relative, step 1): ' + ', '.join(f"{k}: loss {v['loss']:g}, kd {v['kd']:g}" for k, v in TOL.items()))
        b = self.batch(s.corr_bs, train=False)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False     # a true fp32 reference
        rows, ref, w0 = [], None, None
        try:
            for name in s.modes:
                amp, cl = MODES[name]
                row = dict(mode=name)
                rows.append(row)
                try:
                    x = b[0].contiguous(memory_format=torch.channels_last) if cl else b[0]
                    dls = self.repeat_dls((x, *b[1:]), s.corr_steps)
                    log = self.StepLog()
                    learn, student, _ = self.learner(dls, 'adpd', amp, cl, cbs=[log])
                    kd_loss = learn.distill.kd_loss
                    if w0 is None: w0 = copy.deepcopy(kd_loss.state_dict())
                    else: kd_loss.load_state_dict(w0)
                    self.free(collect=False)
                    self.fit(learn, s.corr_steps, s.corr_steps)
                    losses = [r['loss'] for r in log.rows]
                    wn_finite = all(bool(torch.isfinite(p).all()) for p in kd_loss.parameters())
                    st_finite = all(bool(torch.isfinite(p).all()) for p in student.parameters())
                    fin = len(losses) == s.corr_steps and all(math.isfinite(v) for r in log.rows for v in r.values())
                    row.update(loss1=losses[0] if losses else float('nan'), kd1=log.rows[0].get('kd', float('nan')) if log.rows else float('nan'),
                               losses=' '.join(f'{v:.5g}' for v in losses), skipped=log.skipped,
                               finite='yes' if fin and wn_finite and st_finite else
                               f"NO (loss {fin}, weight net {wn_finite}, student {st_finite})",
                               w=' '.join(f"{log.rows[-1].get(f'w_{n}', float('nan')):.3f}" for n in ('BiKD', 'KAD', 'NAD')) if log.rows else '',
                               peak_GiB=self.peak_gib())
                    ok = fin and wn_finite and st_finite
                    if ref is None: ref = row; row.update(rel_loss='ref', rel_kd='ref')
                    else:
                        tol = TOL[amp or 'fp32']
                        ok_l, rl = within_tol(row['loss1'], ref['loss1'], tol['loss'])
                        ok_k, rk = within_tol(row['kd1'], ref['kd1'], tol['kd'])
                        row.update(rel_loss=f"{rl:.2e}{'' if ok_l else ' > ' + format(tol['loss'], 'g')}",
                                   rel_kd=f"{rk:.2e}{'' if ok_k else ' > ' + format(tol['kd'], 'g')}")
                        ok = ok and ok_l and ok_k
                    row['check'] = 'PASS' if ok else 'FAIL'
                    if not ok: self.failures.append(f'correctness {name}')
                    del learn, student, kd_loss, dls
                except Exception as e:
                    row.update(check='FAIL', finite=f'error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ""}')
                    self.failures.append(f'correctness {name} raised {type(e).__name__}')
                    if ref is None: break            # no reference: nothing else can be compared
                finally:
                    print(f"  {name}: {row.get('check', '?')} loss1={fmt(row.get('loss1', float('nan')))} "
                          f"rel_loss={row.get('rel_loss', '-')} rel_kd={row.get('rel_kd', '-')} ({self.elapsed():.0f}s)", flush=True)
                self.free()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        print(table(rows, ['mode', 'check', 'finite', 'loss1', 'rel_loss', 'kd1', 'rel_kd', 'skipped', 'w', 'peak_GiB']))
        sd = self.teacher0.state_dict()
        same = set(sd) == set(self.teacher_sd) and all(torch.equal(sd[k].cpu(), v) for k, v in self.teacher_sd.items())
        print(f"teacher unchanged after all modes (frozen, BN statistics included): {'yes' if same else 'NO'}")
        if not same: self.failures.append('teacher changed')
        print('per-step losses: ' + ' | '.join(f"{r['mode']}: {r.get('losses', '-')}" for r in rows))
        print('(w: the ADPD weights w_BiKD w_KAD w_NAD after the last step; skipped: steps the fp16 GradScaler skipped)')
        self.corr_rows = rows
        return rows

    # ------------------------------------------------------------------------------------------------------ throughput
    def timed(self, kd, bs, loader, amp, channels_last=False, compile=False, warmup=None, batch=None):
        "One timed run: a dict with img/s, ms/step, teacher share, peak memory (or an error)."
        s, torch = self.s, self.torch
        warmup = s.warmup if warmup is None else warmup
        total = warmup + s.steps
        self.free()
        if loader:
            dls = self.dls(bs, workers=s.workers)
            per_epoch = len(dls.train)
        else:
            b = batch if batch is not None else self.batch(bs)
            if channels_last: b = (b[0].contiguous(memory_format=torch.channels_last), *b[1:])
            dls = self.repeat_dls(b, total)
            per_epoch = total
        learn, student, teacher = self.learner(dls, kd, amp, channels_last, compile)
        timer = self.StepTimer(warmup, s.steps, None if compile else teacher)
        learn.add_cb(timer)
        self.free(collect=False)
        t = time.perf_counter()
        try: self.fit(learn, per_epoch, total)
        finally: timer.remove_hooks()      # the teacher is shared: never leave a hook on it, even after an error
        wall = time.perf_counter() - t
        if timer.seconds is None: raise RuntimeError(f'only {timer.k} of {total} steps ran')
        sec = timer.seconds
        row = dict(kd=kd or 'none', bs=bs, loader='included' if loader else 'excluded', img_s=bs * s.steps / sec,
                   ms_step=1e3 * sec / s.steps, teacher_pct=100 * timer.t_teacher / sec if kd and not compile else float('nan'),
                   peak_GiB=self.peak_gib(), warmup_s=wall - sec)
        del learn, student, teacher, dls
        self.free()
        return row

    def throughput(self):
        s = self.s
        print(f"\n{SECTIONS[2]}: {s.student} student (teacher {s.teacher} for FPD/ADPD), AMP {s.amp}, {s.image_size[1]}x{s.image_size[0]},"
              f" {s.warmup} warmup + {s.steps} timed steps; loader included: pose_dls (workers: "
              f"{'default' if s.workers is None else s.workers}), excluded: one batch on the {self.dev.type} repeated", flush=True)
        rows, batches = [], {}
        for bs in s.batch_sizes:
            for kd in (None, 'fpd', 'adpd'):
                for loader in (False, True):
                    if self.left() < 0:
                        rows.append(dict(kd=kd or 'none', bs=bs, loader='included' if loader else 'excluded', note='skipped: over --budget-s'))
                        continue
                    try:
                        if not loader and bs not in batches: batches[bs] = self.batch(bs)
                        rows.append(self.timed(kd, bs, loader, s.amp, batch=None if loader else batches[bs]))
                    except Exception as e:
                        rows.append(dict(kd=kd or 'none', bs=bs, loader='included' if loader else 'excluded',
                                         note=f'ERROR {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ""}'))
                        self.errors.append(f'throughput {kd} bs{bs} loader={loader}: {type(e).__name__}')
                        self.free()
                    print('  ' + ' '.join(f'{k}={fmt(v)}' for k, v in rows[-1].items()), flush=True)
        # a loader bottleneck: the same run is clearly slower with the loader than on prepared batches
        for r in rows:
            if r.get('loader') == 'included' and 'img_s' in r:
                o = next((q for q in rows if q.get('loader') == 'excluded' and q['kd'] == r['kd'] and q['bs'] == r['bs'] and 'img_s' in q), None)
                if o: r['note'] = f"loader-bound ({100 * r['img_s'] / o['img_s']:.0f}% of on-device)" if r['img_s'] < .9 * o['img_s'] else \
                                  f"{100 * r['img_s'] / o['img_s']:.0f}% of on-device"
        print(table(rows, ['kd', 'bs', 'loader', 'img_s', 'ms_step', 'teacher_pct', 'peak_GiB', 'warmup_s', 'note']))
        print('(img_s: training images per second; teacher_pct: teacher forward / step time; peak_GiB: torch.cuda.max_memory_allocated; '
              'warmup_s: the run\'s wall time outside the timed steps)')
        self.tp_rows, self.batches = rows, batches
        return rows

    # ------------------------------------------------------------------------------------------------------- variants
    def variants(self, script_args):
        s = self.s
        bs = max(s.batch_sizes)
        print(f"\n{SECTIONS[3]}: ADPD, batch {bs}, AMP {s.amp}, batches on the {self.dev.type} (loader excluded)", flush=True)
        base = next((r for r in getattr(self, 'tp_rows', []) if r.get('kd') == 'adpd' and r.get('bs') == bs
                     and r.get('loader') == 'excluded' and 'img_s' in r), None)
        rows = [dict(variant='baseline (throughput table)', **({k: base[k] for k in ('img_s', 'ms_step', 'peak_GiB')} if base else {}),
                     note='' if base else 'not measured')]
        if self.left() < 0: rows.append(dict(variant='channels_last', note='skipped: over --budget-s'))
        else:
            try:
                r = self.timed('adpd', bs, False, s.amp, channels_last=True, batch=self.batches.get(bs))
                rows.append(dict(variant='channels_last', img_s=r['img_s'], ms_step=r['ms_step'], peak_GiB=r['peak_GiB'],
                                 note=f"x{r['img_s'] / base['img_s']:.2f} vs baseline" if base else ''))
            except Exception as e:
                rows.append(dict(variant='channels_last', note=f'ERROR {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ""}'))
                self.errors.append(f'channels_last variant: {type(e).__name__}')
            print('  ' + ' '.join(f'{k}={fmt(v)}' for k, v in rows[-1].items()), flush=True)
        self.compile_note = 'not tried'
        if not s.compile:
            rows.append(dict(variant='torch.compile', note='skipped (CPU smoke; --compile to try)' if s.smoke else 'skipped (--no-compile)'))
        else:
            timeout = min(300., self.left() - 15)
            if timeout < 60: rows.append(dict(variant='torch.compile', note='skipped: not enough --budget-s left'))
            else: rows.append(self.compile_subprocess(script_args, bs, timeout, base))
            print('  ' + ' '.join(f'{k}={fmt(v)}' for k, v in rows[-1].items()), flush=True)
        self.compile_note = rows[-1].get('note', '')
        print(table(rows, ['variant', 'img_s', 'ms_step', 'peak_GiB', 'note']))
        self.var_rows = rows
        return rows

    # --------------------------------------------------------------------------------------------------------- cohort
    def cohort(self):
        "Four students distilled as one cohort in AMP and channels_last: one teacher forward per batch, without autograd; img/s."
        s, torch = self.s, self.torch
        bs, kinds = max(s.batch_sizes), ('none', 'fpd', 'dkd', 'adpd')
        print(f"\n{SECTIONS[4]}: {len(kinds)} {s.student} students ({', '.join(kinds)}) from one {s.teacher}, batch {bs}, AMP {s.amp}, "
              f"channels_last, batches on the {self.dev.type}", flush=True)
        if self.left() < 0:
            print('  skipped: over --budget-s'); self.cohort_note = 'skipped'
            return
        b = self.batches.get(bs) if hasattr(self, 'batches') and bs in self.batches else self.batch(bs)
        b = (b[0].contiguous(memory_format=torch.channels_last), *b[1:])
        total = s.warmup + s.steps
        self.free()
        teacher = copy.deepcopy(self.teacher0).to(memory_format=torch.channels_last)
        seen = []
        def count(mod, inp, out): seen.append((torch.is_grad_enabled(), bool(getattr(out, 'requires_grad', True))))
        hook = teacher.register_forward_hook(count)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            learn = self.m['distill_cohort'](self.repeat_dls(b, total), teacher, {k: (copy.deepcopy(self.student0), k) for k in kinds},
                                             lr=1e-3, cbs=[self.NoValidate()])
        learn.add_cb(self.m['ChannelsLast']())
        if self.cuda: learn.to_fp16() if s.amp == 'fp16' else learn.to_bf16()
        else: learn.add_cb(self.CPUMixedPrecision(amp_mode=s.amp))
        timer, log = self.StepTimer(s.warmup, s.steps), self.StepLog()
        learn.add_cbs([timer, log])
        try: self.fit(learn, total, total)
        except Exception as e:
            self.errors.append(f'cohort: {type(e).__name__}')
            print(f'  ERROR {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ""}'); self.cohort_note = 'error'
            return
        finally: hook.remove()
        steps = learn.train_iter                       # training batches run (the timer cancels the fit inside the last one)
        finite = all(math.isfinite(r['loss']) for r in log.rows)
        once = len(seen) == steps and not any(g or r for g, r in seen)
        img_s = bs * s.steps / timer.seconds if timer.seconds else float('nan')
        print(f"  training steps {steps}, teacher forwards {len(seen)} (once per batch: {'yes' if len(seen) == steps else 'NO'}), "
              f"without autograd: {'yes' if not any(g or r for g, r in seen) else 'NO'}, losses finite: {'yes' if finite else 'NO'}, "
              f"{img_s:.1f} img/s for the cohort ({img_s * len(kinds):.1f} student-img/s)" + (f", peak {self.peak_gib():.1f} GiB" if self.cuda else ''))
        if not (once and finite): self.failures.append('cohort')
        self.cohort_note = f"{'PASS' if once and finite else 'FAIL'}, {img_s:.0f} img/s"
        del learn, teacher
        self.free()

    def compile_subprocess(self, script_args, bs, timeout, base):
        "The torch.compile run in a child process with a timeout: a hang or a crash in compilation is reported, not fatal."
        cmd = [sys.executable, os.path.abspath(__file__), *script_args, '--compile-worker', str(bs)]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return dict(variant='torch.compile', note=f'FAILED: no result within {timeout:.0f}s (timeout)')
        res = next((json.loads(l[len('RESULT '):]) for l in p.stdout.splitlines() if l.startswith('RESULT ')), None)
        if res is None or 'error' in res:
            err = (res or {}).get('error') or next((l for l in reversed((p.stderr or '').strip().splitlines()) if l.strip()), f'exit {p.returncode}')
            return dict(variant='torch.compile', note=f'FAILED: {err[:160]}')
        return dict(variant='torch.compile (student+teacher)', img_s=res['img_s'], ms_step=res['ms_step'], peak_GiB=res['peak_GiB'],
                    note=(f"x{res['img_s'] / base['img_s']:.2f} vs baseline; " if base else '') +
                         f"compile+warmup {res['warmup_s']:.0f}s, child {time.perf_counter() - t:.0f}s")

# ------------------------------------------------------------------------------------------------------------------- main
def environment(run:Run):
    torch, s = run.torch, run.s
    import fastai
    print(SECTIONS[0])
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, fastai {fastai.__version__}, CUDA available: {torch.cuda.is_available()}")
    if run.cuda:
        p = torch.cuda.get_device_properties(run.dev)
        print(f"device: {torch.cuda.get_device_name(run.dev)}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
              f"bf16 supported: {torch.cuda.is_bf16_supported()}, cudnn {torch.backends.cudnn.version()}, "
              f"cudnn.benchmark: {torch.backends.cudnn.benchmark}")
    else:
        print(f"device: cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    print(f"settings: {json.dumps({k: v for k, v in asdict(s).items() if k != 'data'})}", flush=True)

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--device', default='auto', help="auto (CUDA if available, else the CPU smoke), cuda, cuda:N or cpu (= --cpu-smoke)")
    p.add_argument('--cpu-smoke', action='store_true', help='tiny models, 64x48, batch 4, 1-2 steps, on the CPU (what CI runs)')
    p.add_argument('--steps', type=int, help='timed steps per throughput run (default 20; smoke 2)')
    p.add_argument('--warmup', type=int, help='untimed steps first (default 5; smoke 1)')
    p.add_argument('--corr-steps', type=int, help='training steps of each correctness mode (default 3; smoke 2)')
    p.add_argument('--batch-sizes', help='comma-separated throughput batch sizes (default 32,64; smoke 4)')
    p.add_argument('--amp', choices=('fp16', 'bf16'), default='fp16', help='AMP of the throughput runs (default fp16)')
    p.add_argument('--workers', type=int, help="pose_dls num_workers for the loader-included runs (default: pose_dls' own)")
    p.add_argument('--budget-s', type=float, help='skip remaining benchmark runs once this many seconds have passed (default 450; smoke 120)')
    p.add_argument('--compile', dest='compile', action='store_true', default=None, help='try torch.compile (default on CUDA)')
    p.add_argument('--no-compile', dest='compile', action='store_false')
    p.add_argument('--skip', default='', help='comma-separated sections to skip: correctness, throughput, variants, cohort')
    p.add_argument('--modes', help=f"comma-separated correctness modes (default all: {','.join(MODES)}; fp32 always runs first)")
    p.add_argument('--student', help='student model name (default hrnet_w32; smoke tiny-w8)')
    p.add_argument('--teacher', help='teacher model name (default hrnet_w48; smoke tiny-w16)')
    p.add_argument('--image-size', help='input HxW (default 256x192; smoke 64x48)')
    p.add_argument('--corr-bs', type=int, help='batch size of the correctness runs (default 32; smoke 4)')
    p.add_argument('--data', default='', help='folder of the cached synthetic dataset (default: a temp folder)')
    p.add_argument('--compile-worker', type=int, help=argparse.SUPPRESS)   # internal: one torch.compile run at this batch size
    return p.parse_args(argv)

def settings(a) -> Settings:
    import torch
    dev = a.device
    if a.cpu_smoke or dev == 'cpu': s = Settings.cpu_smoke()
    elif dev == 'auto':
        s = Settings(device='cuda', smoke=False) if torch.cuda.is_available() else Settings.cpu_smoke()
    else:
        if not torch.cuda.is_available(): raise SystemExit(f'gpu_check: --device {dev} but CUDA is not available')
        s = Settings(device=dev, smoke=False)
    for k in ('steps', 'warmup', 'corr_steps', 'workers', 'budget_s', 'compile', 'student', 'teacher', 'corr_bs'):
        if getattr(a, k) is not None: setattr(s, k, getattr(a, k))
    if a.modes:
        bad = [m for m in a.modes.split(',') if m not in MODES]
        if bad: raise SystemExit(f"gpu_check: unknown --modes {bad}; choose from {', '.join(MODES)}")
        s.modes = ('fp32', *[m for m in MODES if m != 'fp32' and m in a.modes.split(',')])
    if a.image_size:
        h, w = (int(v) for v in a.image_size.lower().split('x'))
        s.image_size, s.heatmap_size = (w, h), (w // 4, h // 4)
    if a.batch_sizes: s.batch_sizes = tuple(int(x) for x in a.batch_sizes.split(','))
    s.amp, s.data = a.amp, a.data
    if s.warmup < 1 or s.steps < 1 or s.corr_steps < 1: raise SystemExit('gpu_check: --warmup, --steps and --corr-steps must be >= 1')
    return s

def compile_worker(a, s:Settings) -> int:
    "Child process of the torch.compile variant: one timed ADPD run, its result as one `RESULT {json}` line."
    try:
        run = Run(s)
        if run.cuda: run.torch.backends.cudnn.benchmark = True
        with contextlib.redirect_stdout(sys.stderr): run.data(); run.models()
        r = run.timed('adpd', a.compile_worker, False, s.amp, compile=True, warmup=max(3, s.warmup))
        print('RESULT ' + json.dumps(r), flush=True)
    except Exception as e:
        msg = str(e).strip().splitlines()
        print('RESULT ' + json.dumps(dict(error=f"{type(e).__name__}: {msg[0] if msg else ''}")), flush=True)
        return 1
    return 0

def main(argv=None) -> int:
    a = parse(argv)
    s = settings(a)
    if a.compile_worker: return compile_worker(a, s)
    import torch
    if s.smoke:
        print(CPU_SMOKE_LINE if not torch.cuda.is_available() else 'CPU smoke only (--cpu-smoke; CUDA is available)', flush=True)
    run = Run(s)
    if run.cuda: torch.backends.cudnn.benchmark = True
    environment(run)
    run.data(); run.models()
    gc.freeze()              # what exists now lives to the end: later collections (between runs) need not scan it
    try: return checks(run, a, argv)
    finally: gc.unfreeze()

def checks(run:Run, a, argv) -> int:
    s = run.s
    skip = {x.strip() for x in a.skip.split(',') if x.strip()}
    timed = lambda f, *args: (lambda t: (f(*args), print(f'(section: {time.perf_counter() - t:.1f}s, total {run.elapsed():.0f}s)', flush=True)))(time.perf_counter())
    if 'correctness' not in skip: timed(run.correctness)
    if 'throughput' not in skip: timed(run.throughput)
    if 'variants' not in skip:
        if not hasattr(run, 'batches'): run.batches = {}
        timed(run.variants, list(argv if argv is not None else sys.argv[1:]))
    if 'cohort' not in skip: timed(run.cohort)
    # summary
    n_modes = len(getattr(run, 'corr_rows', []))
    bad = [f for f in run.failures if f != 'cohort']
    corr = 'skipped' if 'correctness' in skip else ('PASS' if not bad else 'FAIL: ' + ', '.join(bad)) + f' ({n_modes} modes)'
    parts = [f"correctness {corr}"]
    tp = [r for r in getattr(run, 'tp_rows', []) if 'img_s' in r]
    if tp:
        bs = max(s.batch_sizes)
        get = lambda kd, ld: next((r for r in tp if r['kd'] == kd and r['bs'] == bs and r['loader'] == ld), None)
        ex, inc = get('adpd', 'excluded'), get('adpd', 'included')
        if ex: parts.append(f"ADPD bs{bs} AMP {s.amp}: {ex['img_s']:.0f} img/s on-device" + (f", {inc['img_s']:.0f} with loader" if inc else '')
                            + f", teacher {ex['teacher_pct']:.0f}% of step" + (f", peak {ex['peak_GiB']:.1f} GiB" if run.cuda else ''))
        pl = get('none', 'excluded')
        if pl: parts.append(f"plain {pl['img_s']:.0f} img/s")
        bound = [f"{r['kd']}/bs{r['bs']}" for r in tp if 'loader-bound' in r.get('note', '')]
        parts.append(f"loader-bound: {', '.join(bound) if bound else 'no'}")
    if hasattr(run, 'var_rows'): parts.append(f"compile: {run.compile_note or 'ok'}")
    if 'cohort' not in skip: parts.append(f"cohort {run.cohort_note}")
    if run.errors: parts.append(f"errors: {'; '.join(run.errors)}")
    parts.append(f"{run.elapsed():.0f}s" + (' (CPU smoke)' if s.smoke else ''))
    print('\nsummary: ' + ' | '.join(parts), flush=True)
    return 1 if run.failures else 2 if run.errors else 0

if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""Benchmark ts_neuralode's ODE solver against torchdiffeq and torchode on workload W (REFERENCE.md).

W: state 16, vector field MLP 16→64→64→16 (tanh), 50 sorted irregular output times in [0, 5] (t[0] = 0),
dopri5 with rtol 1e-3 / atol 1e-4, random initialisation, torch.set_num_threads(2).

Measured side by side in one run (repetitions interleaved across the libraries, median reported):
forward; forward+backward by autograd; forward+backward by the adjoint (torchdiffeq's odeint_adjoint; ours
in both modes); function evaluations forward and backward; adjoint gradient error against autograd; share of the forward
spent inside the vector
field; per-sample [B, T] grids vs one shared grid; peak memory; adjoint peak memory at ~100 vs ~10,000
steps.

Peak memory: on CPU, each measurement runs in a fresh subprocess (glibc set to mmap buffers ≥ 16 KiB so
freed tensors leave the RSS) that sets everything up, runs the call once as warm-up, reads its resident
set size, resets the RSS high-water mark (/proc/self/clear_refs), runs the call again and reports VmHWM −
baseline — torch's CPU allocator keeps no statistics and tracemalloc does not see torch's buffers. On CUDA:
``torch.cuda.max_memory_allocated`` over the allocated baseline.

    python scripts/bench_solvers.py                # default: batch 32, 256, 2048 on CPU (< ~6 min)
    python scripts/bench_solvers.py --quick        # smoke run
    python scripts/bench_solvers.py --device cuda --batch 4096
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ts_neuralode.solvers import odeint  # noqa: E402

RTOL, ATOL, STATE, HIDDEN, N_TIMES, T_END = 1e-3, 1e-4, 16, 64, 50, 5.0


class MLPField(nn.Module):
    """W's vector field; counts calls and (optionally) the time spent inside it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(STATE, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, STATE)
        )
        self.calls = 0
        self.timed = False
        self.time_in = 0.0
        self.sync = lambda: None

    def forward(self, t, y):
        self.calls += 1
        if not self.timed:
            return self.net(y)
        self.sync()
        t0 = time.perf_counter()
        out = self.net(y)
        self.sync()
        self.time_in += time.perf_counter() - t0
        return out


class SkewField(nn.Module):
    """Linear oscillator dy/dt = y·Aᵀ with A = ω(M − Mᵀ): its step count grows linearly with ω."""

    def __init__(self, omega: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        m = torch.randn(STATE, STATE, generator=g) / STATE**0.5
        self.A = nn.Parameter(omega * (m - m.t()))

    def forward(self, t, y):
        return y @ self.A.t()


class Scalar(nn.Module):
    """torchdiffeq passes a scalar t; ours and torchode pass [B]."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, t, y):
        return self.f(t, y)


def make_problem(batch: int, device: str, seed: int = 0, per_sample: bool = False):
    torch.manual_seed(seed)
    f = MLPField().to(device)
    y0 = torch.randn(batch, STATE, device=device)
    if per_sample:
        t = torch.rand(batch, N_TIMES, device=device).sort(1).values * T_END
        t[:, 0] = 0.0
    else:
        t = torch.rand(N_TIMES, device=device).sort().values * T_END
        t[0] = 0.0
    w = torch.randn(batch, N_TIMES, STATE, device=device)
    return f, y0, t, w


# ---------------------------------------------------------------------------------------------------
# the runners: each returns (ys [B, T, D], info dict)
def run_ours(f, y0, t, **kw):
    sol = odeint(f, y0, t, method="dopri5", rtol=RTOL, atol=ATOL, **kw)
    return sol.ys, sol.stats


def run_td(f, y0, t, adjoint=False):
    import torchdiffeq

    fn = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    ys = fn(Scalar(f), y0, t, method="dopri5", rtol=RTOL, atol=ATOL)
    return ys.transpose(0, 1), None


_TODE = {}


def run_tode(f, y0, t):
    import torchode as to

    key = id(f)
    if key not in _TODE:
        term = to.ODETerm(f)
        _TODE[key] = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    t_eval = t.expand(y0.shape[0], -1) if t.dim() == 1 else t
    sol = _TODE[key].solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
    return sol.ys, sol.stats


def variants(f, y0, t, w):
    """name → callable running one measured call (forward or forward+backward)."""
    params = list(f.parameters())

    def fwd(runner, **kw):
        def go():
            with torch.no_grad():
                return runner(f, y0, t, **kw)

        return go

    def fwdbwd(runner, **kw):
        def go():
            ys, st = runner(f, y0, t, **kw)
            grads = torch.autograd.grad((ys * w).sum(), params)
            return grads, st

        return go

    return {
        "fwd/ours": fwd(run_ours),
        "fwd/td": fwd(run_td),
        "fwd/tode": fwd(run_tode),
        "ag/ours": fwdbwd(run_ours),
        "ag/td": fwdbwd(run_td),
        "ag/tode": fwdbwd(run_tode),
        "adj/ours-backsolve": fwdbwd(run_ours, adjoint=True, adjoint_mode="backsolve"),
        "adj/ours-interpolate": fwdbwd(run_ours, adjoint=True, adjoint_mode="interpolate"),
        "adj/td": fwdbwd(run_td, adjoint=True),
    }


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def bench_batch(batch: int, device: str, reps: int, slow_reps: int, sync):
    f, y0, t, w = make_problem(batch, device)
    v = variants(f, y0, t, w)
    _, _, t_ps, _ = make_problem(batch, device, per_sample=True)
    v["grid/shared"] = lambda: odeint(f, y0, t, rtol=RTOL, atol=ATOL)
    v["grid/per-sample"] = lambda: odeint(f, y0, t_ps, rtol=RTOL, atol=ATOL)
    slow = {"adj/td"}
    times = {k: [] for k in v}
    with torch.no_grad():
        for k in ("grid/shared", "grid/per-sample"):
            fn = v[k]
            v[k] = lambda fn=fn: fn()
    for k, fn in v.items():  # warm-up
        if k.startswith("grid"):
            with torch.no_grad():
                fn()
        else:
            fn()
    order = list(v.items())
    rng = random.Random(0)
    for r in range(reps):
        rng.shuffle(order)  # interleaved, in a new order each repetition (load drifts on a shared machine)
        for k, fn in order:
            if k in slow and r >= slow_reps:
                continue
            if k.startswith("grid"):
                with torch.no_grad():
                    dt, _ = timed(fn, sync)
            else:
                dt, _ = timed(fn, sync)
            times[k].append(dt)
    med = {k: 1000 * statistics.median(x) for k, x in times.items()}

    # function evaluations (mean per sample; torchdiffeq: batched calls)
    nfe = {}
    with torch.no_grad():
        _, st = run_ours(f, y0, t)
        nfe["fwd/ours"] = st.n_f_evals.float().mean().item()
        f.calls = 0
        run_td(f, y0, t)
        nfe["fwd/td"] = f.calls
        _, st = run_tode(f, y0, t)
        nfe["fwd/tode"] = st["n_f_evals"].float().mean().item()
        _, st = odeint(f, y0, t_ps, rtol=RTOL, atol=ATOL).ys, odeint(f, y0, t_ps, rtol=RTOL, atol=ATOL).stats
        nfe["grid/per-sample"] = st.n_f_evals.float().mean().item()
        nfe["grid/shared"] = nfe["fwd/ours"]
    for mode in ("backsolve", "interpolate"):
        _, st = v[f"adj/ours-{mode}"]()
        nfe[f"adj/ours-{mode}"] = (st.n_f_evals.float().mean().item(), st.backward["n_f_evals"].float().mean().item())
    f.calls = 0
    ys, _ = run_td(f, y0, t, adjoint=True)
    c_fwd = f.calls
    g_td_adj = torch.autograd.grad((ys * w).sum(), list(f.parameters()))
    nfe["adj/td"] = (c_fwd, f.calls - c_fwd)

    # adjoint gradient accuracy: relative L2 distance to the same library's autograd gradient (the exact
    # gradient of the computed solution, i.e. what an adjoint approximates at this tolerance)
    def rel(a, b):
        num = sum(float((x - y).double().square().sum()) for x, y in zip(a, b, strict=False))
        return (num / sum(float(y.double().square().sum()) for y in b)) ** 0.5

    g_ag = v["ag/ours"]()[0]
    grad_err = {mode: rel(v[f"adj/ours-{mode}"]()[0], g_ag) for mode in ("backsolve", "interpolate")}
    grad_err["td"] = rel(g_td_adj, v["ag/td"]()[0])

    # share of the forward spent inside the vector field
    share = {}
    f.timed, f.sync = True, sync
    for k in ("fwd/ours", "fwd/td", "fwd/tode"):
        vals = []
        for _ in range(3):
            f.time_in = 0.0
            dt, _ = timed(v[k], sync)
            vals.append(f.time_in / dt)
        share[k] = statistics.median(vals)
    f.timed = False
    return med, nfe, share, grad_err


# ---------------------------------------------------------------------------------------------------
# peak memory, each in a fresh subprocess
def _vmhwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_child(kind: str, batch: int, device: str, steps: int, threads: int):
    torch.set_num_threads(threads)
    if "td" in kind:
        import torchdiffeq  # noqa: F401  (import cost is not part of the measurement)
    if "tode" in kind:
        import torchode  # noqa: F401

    if steps:
        # calibrate ω so that the forward takes ~`steps` steps, then measure the adjoint on it
        f = SkewField(1.0).to(device)
        y0 = torch.randn(batch, STATE, device=device)
        t = torch.linspace(0, T_END, N_TIMES, device=device)
        with torch.no_grad():
            n1 = odeint(f, y0, t, rtol=RTOL, atol=ATOL, max_steps=10**6).stats.n_accepted.float().mean().item()
            f.A.mul_(steps / max(n1, 1.0))
            n = odeint(f, y0, t, rtol=RTOL, atol=ATOL, max_steps=10**6).stats.n_accepted.float().mean().item()
        w = torch.randn(batch, N_TIMES, STATE, device=device)
        mode = kind.split("-")[-1]

        def call():
            ys = odeint(f, y0, t, rtol=RTOL, atol=ATOL, adjoint=True, adjoint_mode=mode, max_steps=10**6).ys
            torch.autograd.grad((ys * w).sum(), list(f.parameters()))
    else:
        f, y0, t, w = make_problem(batch, device)
        call = variants(f, y0, t, w)[kind]
        n = None
    call()  # warm-up: one-time lazy initialisation (thread pools, kernels) is not part of the peak
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # glibc is told (MALLOC_MMAP_THRESHOLD_, set by the parent) to mmap every buffer ≥ 16 KiB, so freed
        # tensors leave the RSS; the high-water mark VmHWM is reset through /proc/self/clear_refs after the
        # warm-up, so the peak below belongs to the measured call alone.
        base = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            call()
            peak = _vmhwm_bytes() - base
        except OSError:  # no clear_refs: fall back to the lifetime peak (includes the warm-up)
            call()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak": max(peak, 0), "steps": n}))


def measure_mem(kind: str, batch: int, device: str, steps: int = 0):
    cmd = [sys.executable, __file__, "--_mem-child", kind, str(batch), device, str(steps), str(torch.get_num_threads())]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
def fmt_ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 32 256 2048)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (interleaved)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small batches, few repetitions")
    ap.add_argument("--mem-steps", type=int, nargs=2, default=None, help="adjoint memory: small/large step counts")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_solvers.md"))
    ap.add_argument("--_mem-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._mem_child:
        kind, b, dev, steps, threads = args._mem_child
        mem_child(kind, int(b), dev, int(steps), int(threads))
        return 0

    torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    batches = args.batch or ([32, 256] if args.quick else [32, 256, 2048])
    reps = args.reps or (3 if args.quick else 11)
    mem_steps = args.mem_steps or ((50, 500) if args.quick else (100, 10_000))
    mem_batch = 256 if 256 in batches else batches[0]
    target_batch = mem_batch  # the targets are stated at batch 256

    cmd = "python scripts/bench_solvers.py" + (" " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    lines = [
        "# Solver benchmark: ts_neuralode vs torchdiffeq vs torchode (workload W)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Device: {device}, torch {torch.__version__}, {args.threads} threads; dopri5 rtol {RTOL} atol {ATOL}; "
        f"MLP {STATE}→{HIDDEN}→{HIDDEN}→{STATE} tanh; {N_TIMES} sorted irregular output times in [0, {T_END}]. "
        f"Median of {reps} interleaved repetitions (torchdiffeq's adjoint: fewer). Ratios = their time / ours "
        "(> 1: ours faster).",
        "",
    ]
    lines += [
        "| batch | measurement | ts_neuralode | torchdiffeq | torchode | torchdiffeq / ours | torchode / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    targets = {}
    for B in batches:
        slow_reps = max(1, reps // 3) if B >= 2048 else max(2, reps // 2)
        t0 = time.perf_counter()
        med, nfe, share, grad_err = bench_batch(B, device, reps if B < 2048 else max(3, reps // 2), slow_reps, sync)
        print(f"batch {B}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        ours = med["fwd/ours"]
        lines.append(
            f"| {B} | forward (ms) | {ours:.2f} | {med['fwd/td']:.2f} | {med['fwd/tode']:.2f} | "
            f"{fmt_ratio(med['fwd/td'], ours)} | {fmt_ratio(med['fwd/tode'], ours)} |"
        )
        lines.append(
            f"| {B} | forward function evaluations (per sample) | {nfe['fwd/ours']:.1f} | {nfe['fwd/td']} | "
            f"{nfe['fwd/tode']:.1f} | | |"
        )
        lines.append(
            f"| {B} | share of forward inside the vector field | {share['fwd/ours']:.0%} | "
            f"{share['fwd/td']:.0%} | {share['fwd/tode']:.0%} | | |"
        )
        a = med["ag/ours"]
        lines.append(
            f"| {B} | forward+backward, autograd (ms) | {a:.2f} | {med['ag/td']:.2f} | {med['ag/tode']:.2f} | "
            f"{fmt_ratio(med['ag/td'], a)} | {fmt_ratio(med['ag/tode'], a)} |"
        )
        for mode in ("backsolve", "interpolate"):
            m = med[f"adj/ours-{mode}"]
            fe, be = nfe[f"adj/ours-{mode}"]
            lines.append(
                f"| {B} | forward+backward, adjoint (ours: {mode}) (ms) | {m:.2f} | {med['adj/td']:.2f} | – | "
                f"{fmt_ratio(med['adj/td'], m)} | |"
            )
            lines.append(
                f"| {B} | adjoint evaluations fwd / bwd (ours: {mode}) | {fe:.0f} / {be:.0f} "
                f"(bwd = {be / fe:.1f}× fwd) | {nfe['adj/td'][0]} / {nfe['adj/td'][1]} "
                f"({nfe['adj/td'][1] / nfe['adj/td'][0]:.1f}×) | – | | |"
            )
        lines.append(
            f"| {B} | adjoint parameter gradient, relative error vs autograd | backsolve "
            f"{grad_err['backsolve']:.1e}, interpolate {grad_err['interpolate']:.1e} | "
            f"{grad_err['td']:.1e} | – | | |"
        )
        g = med["grid/per-sample"] / med["grid/shared"]
        lines.append(
            f"| {B} | per-sample [B, T] grids vs shared [T] grid, forward (ms) | {med['grid/per-sample']:.2f} "
            f"vs "
            f"{med['grid/shared']:.2f} = {g:.2f}× (evaluations {nfe['grid/per-sample']:.1f} vs "
            f"{nfe['grid/shared']:.1f}) | (not supported) | | | |"
        )
        if target_batch == B:
            targets = dict(
                fwd_td=med["fwd/td"] / ours,
                fwd_tode=med["fwd/tode"] / ours,
                nfe_eq=abs(nfe["fwd/ours"] / nfe["fwd/tode"] - 1),
                adj_nfe=nfe["adj/ours-interpolate"][1] / nfe["adj/ours-interpolate"][0],
                adj_nfe_bs=nfe["adj/ours-backsolve"][1] / nfe["adj/ours-backsolve"][0],
                adj_speed=med["adj/td"] / med["adj/ours-interpolate"],
                adj_speed_bs=med["adj/td"] / med["adj/ours-backsolve"],
                ag=med["ag/td"] / a,
                grid=g,
            )
    if not args.no_memory:
        lines += [
            "",
            f"### Peak memory (batch {mem_batch}; growth of peak "
            + ("RSS in a fresh subprocess, after a warm-up call" if device == "cpu" else "CUDA allocated memory")
            + ")",
            "",
            "| measurement | ts_neuralode | torchdiffeq | torchode |",
            "|---|---|---|---|",
        ]
        mb = lambda k: measure_mem(k, mem_batch, device)["peak"] / 2**20  # noqa: E731
        lines.append(
            f"| forward (no grad) | {mb('fwd/ours'):.1f} MiB | {mb('fwd/td'):.1f} MiB | {mb('fwd/tode'):.1f} MiB |"
        )
        lines.append(
            f"| forward+backward, autograd | {mb('ag/ours'):.1f} MiB | {mb('ag/td'):.1f} MiB | "
            f"{mb('ag/tode'):.1f} MiB |"
        )
        lines.append(
            f"| forward+backward, adjoint | backsolve {mb('adj/ours-backsolve'):.1f} MiB, interpolate "
            f"{mb('adj/ours-interpolate'):.1f} MiB | {mb('adj/td'):.1f} MiB | – |"
        )
        # at batch 32 the state is 2 KiB and the whole adjoint peaks near 1.5 MiB, where glibc's arena
        # fragmentation alone moves the RSS by ±25%; at batch 256 the solver's own buffers dominate
        lines += [
            "",
            f"### Adjoint peak memory vs number of forward steps (batch {mem_batch}, linear oscillator "
            "field, ω tuned for the step count)",
            "",
            "| adjoint mode | steps | peak | steps | peak | growth |",
            "|---|---|---|---|---|---|",
        ]
        for mode in ("backsolve", "interpolate"):
            lo = measure_mem(f"steps-{mode}", mem_batch, device, mem_steps[0])
            hi = measure_mem(f"steps-{mode}", mem_batch, device, mem_steps[1])
            growth = hi["peak"] / max(lo["peak"], 1) - 1
            lines.append(
                f"| {mode} | {lo['steps']:.0f} | {lo['peak'] / 2**20:.1f} MiB | {hi['steps']:.0f} | "
                f"{hi['peak'] / 2**20:.1f} MiB | {growth:+.0%} |"
            )
            if mode == "backsolve":
                targets["mem_growth"] = growth
    if "fwd_td" in targets:
        lines += ["", f"### Targets (stated at batch 256; measured at batch {target_batch})", ""]
        chk = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        lines.append(
            f"- forward ≥ 2.5× faster than torchdiffeq: {targets['fwd_td']:.2f}× — {chk(targets['fwd_td'] >= 2.5)}"
        )
        lines.append(
            f"- forward ≥ 2× faster than torchode: {targets['fwd_tode']:.2f}× — "
            f"{chk(targets['fwd_tode'] >= 2)}; "
            f"evaluations within {targets['nfe_eq']:.0%} of torchode's — {chk(targets['nfe_eq'] <= 0.1)}"
        )
        lines.append(
            f"- adjoint backward ≤ 3× forward evaluations: interpolate {targets['adj_nfe']:.1f}× — "
            f"{chk(targets['adj_nfe'] <= 3)}; backsolve {targets['adj_nfe_bs']:.1f}× — "
            f"{chk(targets['adj_nfe_bs'] <= 3)}"
        )
        lines.append(
            f"- adjoint forward+backward ≥ 5× faster than torchdiffeq's: interpolate "
            f"{targets['adj_speed']:.1f}× — "
            f"{chk(targets['adj_speed'] >= 5)}; backsolve {targets['adj_speed_bs']:.1f}× — "
            f"{chk(targets['adj_speed_bs'] >= 5)}"
        )
        lines.append(
            f"- autograd forward+backward ≥ 2× faster than torchdiffeq's: {targets['ag']:.2f}× — "
            f"{chk(targets['ag'] >= 2)}"
        )
        lines.append(f"- per-sample grids ≤ 1.2× a shared grid: {targets['grid']:.2f}× — {chk(targets['grid'] <= 1.2)}")
        if "mem_growth" in targets:
            lines.append(
                f"- adjoint (backsolve) peak memory flat from ~{mem_steps[0]} to ~{mem_steps[1]} steps (≤ 10% "
                f"growth): "
                f"{targets['mem_growth']:+.0%} — {chk(targets['mem_growth'] <= 0.10)}"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

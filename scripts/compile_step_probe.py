#!/usr/bin/env python
"""Probe: what ``torch.compile`` of the adaptive solver's step would buy on CPU (issue 24, "CUDA graphs /
torch.compile for the fixed-shape solver step").

On workload W (scripts/bench_solvers.py: state 16, MLP field 16→64→64→16, dopri5, rtol 1e-3 / atol 1e-4) it times one
step attempt of the adaptive loop — :meth:`ts_neuralode.solvers.core._StepControl.attempt`: the dopri5 stages, the
error ratio, the PI controller, the accept mask — eager and compiled by ``torch.compile`` (inductor, fixed shapes),
without a gradient graph (forecasting) and with one (training: forward + backward through the step). Repetitions
interleave eager and compiled; the fastest of ``--rounds`` medians is kept. It also times the whole eager solve and
counts its attempts, so the page says which share of a solve the step is (the part compilation could shorten).

    python scripts/compile_step_probe.py                 # batch 32, 256, 2048, 1 thread → results/compile_probe.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_solvers import ATOL, RTOL, make_problem, run_ours  # noqa: E402

from ts_neuralode.solvers.core import _StepControl  # noqa: E402
from ts_neuralode.solvers.tableaus import DOPRI5  # noqa: E402


def attempt_fn(f):
    """One attempt as a pure function of its tensors (what a compiled step would be)."""

    def attempt(t, y, k0, t_stop, active, dt, prev_term):
        step = _StepControl(f, DOPRI5, RTOL, ATOL, dt, False)
        step.prev_term = prev_term
        y1, ks, dt_use, ratio, accept, rejected, _, t_new = step.attempt(t, y, k0, t_stop, active)
        return y1, ks, ratio, accept, t_new, step.dt, step.prev_term

    return attempt


def per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def probe(batch: int, rounds: int, grad: bool) -> dict:
    f, y0, t, _ = make_problem(batch, "cpu")
    net = f.net  # the field without its call counter (a Python attribute changed per call would recompile each call)
    field = lambda t, y: net(y)  # noqa: E731
    eager = attempt_fn(field)
    compiled = torch.compile(eager, dynamic=False)
    tt = torch.zeros(batch)
    t_stop = torch.full((batch,), float(t[-1]))
    active = torch.ones(batch, dtype=torch.bool)
    dt = torch.full((batch,), 0.05)
    prev = torch.full((batch,), 0.9)
    y = y0.clone().requires_grad_(grad)

    def call(fn):
        def run():
            with torch.set_grad_enabled(grad):
                k0 = field(tt, y)
                out = fn(tt, y, k0, t_stop, active, dt, prev)
                if grad:
                    out[0].sum().backward()
            return out

        return run

    ref = call(eager)()  # first: fills the tableau's coefficient cache, which the compiled code guards on
    t0 = time.perf_counter()
    first = call(compiled)()
    compile_s = time.perf_counter() - t0
    diff = float((first[0] - ref[0]).detach().abs().max())
    n = max(20, int(20000 / batch)) if not grad else max(10, int(5000 / batch))
    res = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for name, fn in (("eager", eager), ("compiled", compiled)):
            res[name].append(per_call(call(fn), n))
    e, c = min(res["eager"]), min(res["compiled"])
    out = {"batch": batch, "grad": grad, "eager_us": e * 1e6, "compiled_us": c * 1e6, "compile_s": compile_s}
    out["speedup"], out["max_diff"] = e / c, diff
    if not grad:  # the share of an eager solve spent in its attempts (what compiling the step can shorten)
        with torch.no_grad():
            solve = statistics.median(per_call(lambda: run_ours(f, y0, t), 3) for _ in range(rounds))
            stats = run_ours(f, y0, t)[1]
        attempts = int((stats.n_accepted + stats.n_rejected).max())
        out["solve_ms"], out["attempts"] = solve * 1e3, attempts
        out["step_share"] = min(1.0, attempts * e / solve)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256, 2048])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "compile_probe.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for b in args.batch:
        for grad in (False, True):
            r = probe(b, args.rounds, grad)
            print(r, file=sys.stderr, flush=True)
            rows.append(r)
    lines = [
        "# torch.compile of the adaptive solver's step on CPU: a probe",
        "",
        "Produced by:",
        "",
        "```",
        "python scripts/compile_step_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "```",
        "",
        f"torch {torch.__version__}, cpu, {args.threads} thread(s); workload W (scripts/bench_solvers.py). One step "
        "attempt of the adaptive loop (dopri5 stages, error ratio, PI controller, accept mask), eager and compiled "
        "(inductor, fixed shapes), timed interleaved, fastest of the rounds' means. 'with gradient': the field's "
        "first stage, the attempt and the backward of its new state. Step share: attempts × the eager attempt's "
        "time / the eager solve's time (the part of a forecasting solve that compiling the step could shorten; "
        "the rest is the host sync, the dense output and setup).",
        "",
        "| batch | gradient | eager µs/attempt | compiled µs/attempt | speed-up | compile s | max diff "
        "| eager solve ms | attempts | step share of the solve |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        solve = f"{r['solve_ms']:.1f} | {r['attempts']} | {r['step_share']:.0%}" if "solve_ms" in r else "— | — | —"
        lines.append(
            f"| {r['batch']} | {'with' if r['grad'] else 'none'} | {r['eager_us']:.0f} | {r['compiled_us']:.0f} | "
            f"{r['speedup']:.2f}× | {r['compile_s']:.1f} | {r['max_diff']:.1e} | {solve} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

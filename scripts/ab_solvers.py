#!/usr/bin/env python
"""A/B timing of the ODE solver against an earlier revision, in one process (a loaded machine affects both alike).

Workload W of ``scripts/bench_solvers.py`` (state 16, MLP 16→64→64→16 tanh, 50 sorted irregular output times in
[0, 5], dopri5 rtol 1e-3 / atol 1e-4): forward (no grad), forward+backward by autograd, and by the adjoint in both
modes. The earlier revision's ``ts_neuralode/solvers`` is extracted with ``git archive`` and imported as a package of
its own; the two are called alternately, rep by rep (the order flips every rep), after one warm-up call each.
Reported: the minimum over reps (the least disturbed run) and the ratio of the medians.

    python scripts/ab_solvers.py --before 2a669ed            # markdown table on stdout
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_solvers_of(rev: str, into: Path):
    """``ts_neuralode/solvers`` of git revision ``rev`` as the package ``solvers_<rev>`` (relative imports only)."""
    archive = into / "solvers.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "ts_neuralode/solvers"], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    name = f"solvers_{rev.replace('-', '_')}"
    (into / "ts_neuralode" / "solvers").rename(into / name)
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def field() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 16))


def run(mod, f: nn.Module, y0: torch.Tensor, t: torch.Tensor, kind: str) -> None:
    if kind == "forward":
        with torch.no_grad():
            mod.odeint(lambda tt, y: f(y), y0, t, method="dopri5", rtol=1e-3, atol=1e-4)
        return
    y = y0.clone().requires_grad_(True)
    kw = {} if kind == "autograd" else dict(adjoint=True, adjoint_mode=kind, adjoint_params=list(f.parameters()))
    sol = mod.odeint(lambda tt, yy: f(yy), y, t, method="dopri5", rtol=1e-3, atol=1e-4, **kw)
    sol.ys.square().sum().backward()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="2a669ed", help="the git revision to compare with (default 2a669ed)")
    ap.add_argument("--reps", type=int, default=21, help="timed reps per measurement (backsolve: a third)")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ts_neuralode import solvers as after

    with tempfile.TemporaryDirectory() as tmp:
        before = load_solvers_of(args.before, Path(tmp))
        print(f"Command: `python scripts/ab_solvers.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
        print(f"| batch | measurement | {args.before} min (ms) | now min (ms) | now / {args.before} (min) | (median) |")
        print("|---|---|---|---|---|---|")
        for B in args.batch:
            torch.manual_seed(1)
            y0 = torch.randn(B, 16)
            t = torch.cat([torch.zeros(1), torch.sort(torch.rand(49) * 5).values])
            f = field()
            for kind in ("forward", "autograd", "interpolate", "backsolve"):
                n = args.reps if kind != "backsolve" else max(3, args.reps // 3)
                times: dict[str, list[float]] = {"before": [], "after": []}
                pair = (("before", before), ("after", after))
                for _, mod in pair:
                    run(mod, f, y0, t, kind)  # warm-up
                for r in range(n):
                    for name, mod in pair if r % 2 == 0 else pair[::-1]:
                        t0 = time.perf_counter()
                        run(mod, f, y0, t, kind)
                        times[name].append(time.perf_counter() - t0)
                b, a = min(times["before"]) * 1e3, min(times["after"]) * 1e3
                med = statistics.median(times["after"]) / statistics.median(times["before"])
                print(f"| {B} | {kind} | {b:.2f} | {a:.2f} | {a / b:.3f} | {med:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Training-step time by torch thread count, per model family and batch size, quiet and beside a busy process
(issue 24, part 1): the measurement behind ``ts_neuralode.core.threads.DEFAULT_THREADS``.

For each model family (ODE-RNN dopri5, latent ODE dopri5, a latent coupling flow) and batch size, the training
steps (loss + backward + Adam) at 1, 2 and all usable threads are interleaved in ONE process (``torch.set_num_threads``
between steps: 1, 2, all, 1, 2, all, ...), repeated, median taken. This is done twice:

* ``quiet``: nothing of ours running beside it (on a shared machine other jobs may be: the script says the load
  average it saw);
* ``busy``: beside a competing process of ours — another torch training loop with 2 threads on small tensors
  (a [64, 64] MLP with tanh, forward + backward, as a second training job would be), started for the measurement
  and stopped after it.

Ratios inside one row are side by side; absolute milliseconds move with the machine's load.

    python scripts/threads_benchmark.py            # full (~5 min on 2 cores)
    python scripts/threads_benchmark.py --quick    # one batch size per family, fewer repetitions (~1 min)

Writes results/threads.md (``--out``).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ts_neuralode.core.threads import DEFAULT_THREADS, usable_cpus  # noqa: E402

FAMILIES = {  # label -> benchmark model name (ts_neuralode.api.benchmark.config.MODEL_SPECS)
    "ODE-RNN (dopri5)": "ode_rnn",
    "latent ODE (dopri5)": "latent_ode_dopri5",
    "latent coupling flow": "latent_coupling_flow",
}
COMPETITOR = """
import torch
torch.set_num_threads(2)
net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64))
x = torch.randn(50, 64)
while True:
    net(x).square().mean().backward()
"""


def build_step(name: str, batch: int, seed: int = 0):
    """A training step of benchmark model ``name`` on the periodic set (100 times, half observed), batch ``batch``."""
    from ts_neuralode.api.benchmark.config import BenchmarkConfig
    from ts_neuralode.api.benchmark.runner import load_frame, make_datamodules, module_options
    from ts_neuralode.training import ForecastingModule

    cfg = BenchmarkConfig(
        dataset="periodic",
        n_points=100,
        layout="union",
        scaler="none",
        time_scale=1.0,
        n_series=max(100, 2 * batch),
        models=(name,),
        task="interpolation",
        obs_fraction=0.5,
        batch_size=batch,
        seed=seed,
        model_options={"latent_dim": 10},
    )
    dm = make_datamodules(cfg, load_frame(cfg), cfg.layout)["interpolation"]
    torch.manual_seed(seed)
    model = ForecastingModule(**module_options(cfg, name, dm.num_channels)).model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = list(dm.train_dataloader())
    full = [b for b in batches if b.batch_size == batch] or batches
    state = {"i": 0}

    def step():
        b = full[state["i"] % len(full)]
        state["i"] += 1
        opt.zero_grad()
        loss, _ = model.loss(b)
        loss.backward()
        opt.step()

    return step


def measure(step, counts: list[int], reps: int) -> dict[int, float]:
    """Median step seconds per thread count, the counts interleaved step by step."""
    times: dict[int, list[float]] = {n: [] for n in counts}
    for n in counts:  # warm-up at every count (first-call allocations, thread pool start)
        torch.set_num_threads(n)
        step()
    for _ in range(reps):
        for n in counts:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            step()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one batch size per family, 3 repetitions")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 128, 512])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "results" / "threads.md"))
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally below stops the competitor
    batches, reps = ([64], 3) if args.quick else (args.batches, args.reps)
    usable, detail = usable_cpus()
    counts = sorted({1, 2, usable})
    torch_default = torch.get_num_threads()  # what torch chose at start-up (or $OMP_NUM_THREADS)
    rows = []
    load0 = os.getloadavg()[0]
    for label, name in FAMILIES.items():
        for batch in batches:
            step = build_step(name, batch)
            res = {}
            for cond in ("quiet", "busy"):
                comp = None
                if cond == "busy":
                    comp = subprocess.Popen(
                        [sys.executable, "-c", COMPETITOR], env={**os.environ, "OMP_NUM_THREADS": "2"}
                    )
                    time.sleep(1.0)  # let it start its loop
                try:
                    res[cond] = measure(step, counts, reps)
                finally:
                    if comp is not None:
                        comp.terminate()
                        comp.wait(timeout=30)
            rows.append((label, batch, res))
            print(label, batch, {c: {n: f"{v * 1e3:.0f}" for n, v in r.items()} for c, r in res.items()}, flush=True)
    torch.set_num_threads(torch_default)
    load1 = os.getloadavg()[0]

    cols = " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)
    lines = [
        "# Torch threads for small tensors (issue 24, part 1)",
        "",
        "Produced by:",
        "",
        "```",
        "python scripts/threads_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "```",
        "",
        f"torch {torch.__version__}, CPU; {usable} usable CPU(s) ({detail}); torch's own default here: "
        f"{torch_default} thread(s) (this process started with "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', 'unset')}: torch reads both). "
        f"Load average (1 min) at start / end: {load0:.2f} / {load1:.2f}.",
        "",
        "Training step (loss + backward + Adam) on the periodic set (100 times, half observed, latent 10), "
        f"median of {reps} steps per thread count, the thread counts interleaved step by step in one process. "
        "*busy*: beside a second torch training loop of ours (2 threads, [50, 64] MLP), started for the "
        "measurement. *quiet*: without it — **but the machine was shared with six other sessions while this ran**, "
        "so 'quiet' is only 'without our competitor'; rerun on an idle machine for the quiet figures proper. "
        "Cells: median ms (ratio to the row's fastest).",
        "",
        f"| family | batch | condition | {cols} | best |",
        "|" + "---|" * (4 + len(counts)),
    ]
    for label, batch, res in rows:
        for cond, r in res.items():
            best = min(r, key=r.get)
            cells = " | ".join(f"{r[n] * 1e3:.1f} ({r[n] / r[best]:.2f}×)" for n in counts)
            lines.append(f"| {label} | {batch} | {cond} | {cells} | {best} |")
    lines += [
        "",
        f"`ts_neuralode.core.threads.DEFAULT_THREADS` = {DEFAULT_THREADS} (capped by the usable CPUs); "
        "`$TS_NEURALODE_THREADS` or `$OMP_NUM_THREADS` override it.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

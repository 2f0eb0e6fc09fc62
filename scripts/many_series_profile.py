"""Where an ODE-RNN batch of the 5,000-series set spends its time, and the speed-ups of issue 24 A/B in one process.

```
python scripts/many_series_profile.py                  # 5,000-series sine set, 30 warm-up training steps, 7 reps
python scripts/many_series_profile.py --quick          # 500 series, 5 warm-up steps, 3 reps
python scripts/many_series_profile.py --compare one-solve   # the pass as one solve with jumps vs interval solves
```

The model is ``configs/ode_rnn.yaml``'s (ODE-RNN, dopri5, latent 16, hidden 64, batch 50, interpolation with half
the points observed, padded layout), trained ``--warm`` Adam steps first (lr 0.01) so that the dynamics are a
trained model's, not a random one's (a random field needs ~1 step per interval; after training ~3). Then one
training batch (loss + backward) and one validation batch (the Lightning module's validation step: loss, forecast
with 8 samples, metrics and baselines) are timed with the code **before** and **after** the changes, interleaved
repetition by repetition, 1 thread, median:

* before: the solver stops at every grid time (``recurrent_pass`` without ``stop_at_observations``), the validation
  step runs the recurrent pass twice (``loss`` then ``predict``), the MLP goes through ``nn.Sequential`` module
  calls;
* after: the package as it is (``observation_pass``, ``loss_and_predict``, ``nets.MLP``).

``--compare one-solve`` times, the same way, the filtering pass solved interval by interval (*intervals*:
``ts_neuralode.models.recurrent.USE_JUMPS = False``, the package before ``solvers/jumps.py``) against the package (*one
solve*: ``odeint_jumps``), and adds the batch-level field evaluations (calls of the field on the whole batch) of one
training forward.

Also reported: batch-level RK steps (``rk_step`` calls), field evaluations per sample, and the difference of the
loss and of the forecast between the two (the changes keep the results within the solver's tolerance).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def before_changes(module):
    """The code paths as they were before issue 24's throughput changes (see the module docstring)."""
    from ts_neuralode.models import nets, recurrent

    orig_pass, orig_mlp = recurrent.recurrent_pass, nets.MLP.forward

    def two_passes(batch, num_samples=1):
        loss, logs = module.model.loss(batch)
        return loss, logs, module.model.predict(batch, num_samples=num_samples)

    recurrent.recurrent_pass = lambda *a, stop_at_observations=False, **k: orig_pass(*a, **k)
    nets.MLP.forward = nn.Sequential.forward
    module.model.loss_and_predict = two_passes
    try:
        yield
    finally:
        recurrent.recurrent_pass, nets.MLP.forward = orig_pass, orig_mlp
        del module.model.loss_and_predict  # the class's method again


@contextmanager
def nothing():
    yield


@contextmanager
def interval_solves():
    """The filtering pass solved interval by interval (before the one-solve pass with jumps)."""
    from ts_neuralode.models import recurrent

    recurrent.USE_JUMPS = False
    try:
        yield
    finally:
        recurrent.USE_JUMPS = True


def work_counts(module, batch, ctx) -> dict:
    """What one training batch (loss + backward) does under ``ctx``, machine-independent: each row's attempted and
    rejected steps summed over the pass's solves (mean and max over the rows) and the dispatched torch ops forward and
    backward (a ``TorchDispatchMode`` counts every ATen call)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    evo = type(module.model.evolution)
    stats: list = []
    forward, solve_jumps = evo.forward, evo.solve_jumps

    def fwd(self, *a, **k):
        out = forward(self, *a, **k)
        stats.append(self.last_stats)
        return out

    def jumps(self, *a, **k):
        out = solve_jumps(self, *a, **k)
        if out is not None:
            stats.append(self.last_stats)
        return out

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.n += 1
            return func(*args, **(kwargs or {}))

    evo.forward, evo.solve_jumps = fwd, jumps
    try:
        with ctx():
            with Ops():
                loss, _ = module.model.loss(batch)
            n_fwd = Ops.n
            with Ops():
                loss.backward()
            module.zero_grad()
    finally:
        evo.forward, evo.solve_jumps = forward, solve_jumps
    att = sum((s.n_accepted + s.n_rejected).float() for s in stats if s is not None)
    rej = sum(s.n_rejected.float() for s in stats if s is not None)
    return dict(
        att_mean=float(att.mean()),
        att_max=float(att.max()),
        rej=float(rej.mean()),
        ops_fwd=n_fwd,
        ops_bwd=Ops.n - n_fwd,
    )


def sine_workload(n_series: int, prefix: str):
    """The workload of the in-process A/Bs (this script and ``scripts/pass_trajectory.py``): ``ts-neuralode generate
    sine --n_series N`` into a temporary CSV, its interpolation data module (set up for fit, padded batches of 50),
    and a function that makes the ODE-RNN module both train (dopri5, latent 16, hidden 64, lr 0.01): called when the
    caller's random state is where it wants the weights drawn."""
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
    from ts_neuralode.models.evolution_config import EvolutionConfig
    from ts_neuralode.training import ForecastingModule

    csv = Path(tempfile.mkdtemp(prefix=prefix)) / "sine.csv"
    subprocess.run(
        [sys.executable, "-m", "ts_neuralode.cli", "generate", "sine", "--n_series", str(n_series), "--out", str(csv)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    dm = IrregularTimeSeriesDataModule(
        path=str(csv), task="interpolation", obs_fraction=0.5, layout="padded", batch_size=50
    )
    dm.setup("fit")

    def make_module():
        return ForecastingModule(
            model="ode_rnn",
            input_dim=1,
            evolution=EvolutionConfig(kind="ode", method="dopri5"),
            latent_dim=16,
            hidden_dim=64,
            lr=0.01,
        )

    return dm, make_module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n_series", type=int, default=5000)
    ap.add_argument("--warm", type=int, default=30, help="Adam steps before timing")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare", choices=("issue24", "one-solve"), default="issue24", help="which A/B (docstring)")
    ap.add_argument(
        "--out",
        default=str(ROOT / "results" / "many_series.md"),
        help="the page whose 'In-process A/B' section this replaces (appended when absent)",
    )
    args = ap.parse_args()
    if args.quick:
        args.n_series, args.warm, args.reps = 500, 5, 3
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from ts_neuralode.solvers import core, jumps

    dm, make_module = sine_workload(args.n_series, "many_series_profile_")
    module = make_module()
    module.log = lambda *a, **k: None  # no trainer: the validation step's logging is a no-op here
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    it = iter(dm.train_dataloader())
    for _ in range(args.warm):
        loss, _ = module.model.loss(next(it))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
    tb, vb = next(it), next(iter(dm.val_dataloader()))

    steps = {"n": 0, "calls": 0}
    rk = core.rk_step

    def counting(*a, **k):
        steps["n"] += 1
        return rk(*a, **k)

    field = module.model.evolution.field
    field_forward = field.forward

    def counting_field(t, y):
        steps["calls"] += 1
        return field_forward(t, y)

    core.rk_step = jumps.rk_step = counting
    field.forward = counting_field
    if args.compare == "one-solve":
        arms = {"intervals": interval_solves, "one solve": nothing}
    else:
        arms = {"before": lambda: before_changes(module), "after": nothing}
    first, second = arms
    facts: dict = {}
    for name, ctx in arms.items():
        with ctx(), torch.no_grad():
            steps["n"] = 0
            loss, _ = module.model.loss(vb)  # one pass
            facts[name] = dict(loss=float(loss), nfe=module.model.last_nfe, val_steps=steps["n"])
            torch.manual_seed(1)
            facts[name]["mean"] = module.model.predict(vb, num_samples=8).mean
        with ctx():
            steps["calls"] = 0
            module.model.loss(tb)
            facts[name]["calls"] = steps["calls"]
    core.rk_step = jumps.rk_step = rk
    field.forward = field_forward
    for name, ctx in arms.items():
        facts[name].update(work_counts(module, tb, ctx))
    core.rk_step = jumps.rk_step = rk
    field.forward = field_forward

    def train():
        loss, _ = module.model.loss(tb)
        module.zero_grad()
        loss.backward()

    def val():
        with torch.no_grad():
            module._eval_step(vb, "val")

    times: dict = {(a, w): [] for a in arms for w in ("train", "val")}
    for ctx in arms.values():  # one untimed round: caches, allocator
        with ctx():
            train()
            val()
    loads = [os.getloadavg()[0]]
    for r in range(args.reps):
        for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            with arms[name]():
                for what, fn in (("train", train), ("val", val)):
                    t0 = time.perf_counter()
                    fn()
                    times[(name, what)].append(time.perf_counter() - t0)
    loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = first, second
    diff = (facts[a]["mean"] - facts[b]["mean"]).abs()
    if args.compare == "one-solve":
        title = "### In-process A/B: the filtering pass as one solve with jumps"  # a subsection of its dated section
        what = (
            "*intervals*: one solve per observation interval for the whole batch (`recurrent.USE_JUMPS = False`); "
            "*one solve*: the package (`solvers/jumps.py`: every row steps through its own observations)."
        )
    else:
        title = "## In-process A/B: one training and one validation batch"
        what = (
            "*before*: stop at every grid time, validation pass run twice, MLP through module calls; *after*: "
            "the package (scripts/many_series_profile.py says exactly what is switched)."
        )

    def row(label: str, key, fmt: str = ".0f", bold: bool = False) -> str:
        x, y = (med[(a, key)] * 1e3, med[(b, key)] * 1e3) if isinstance(key, str) else key
        r = f"{y / x:.2f}" if x else "–"
        return f"| {label} | {x:{fmt}} | {y:{fmt}} | {'**' + r + '**' if bold else r} |"

    lines = [
        title,
        "",
        "Produced by:",
        "",
        "```",
        " ".join(["python", "scripts/many_series_profile.py", *sys.argv[1:]]),
        "```",
        "",
        f"{args.n_series} series, the ODE-RNN of configs/ode_rnn.yaml after {args.warm} Adam steps; the two code paths "
        f"interleaved, {args.reps} repetitions, median, 1 thread; load average {loads[0]:.1f} → {loads[1]:.1f} (shared "
        f"machine). {what}",
        "",
        f"| | {a} | {b} | {b} / {a} |",
        "|---|---|---|---|",
        row("training batch (loss + backward), ms", "train", bold=True),
        row("validation batch (the module's validation step), ms", "val", bold=True),
        row("RK steps of the batch in one pass (validation batch)", (facts[a]["val_steps"], facts[b]["val_steps"])),
        row("batch-level field evaluations, one training forward", (facts[a]["calls"], facts[b]["calls"])),
        row("field evaluations per series in one pass", (facts[a]["nfe"], facts[b]["nfe"])),
        row("attempted steps per row in one training pass, mean", (facts[a]["att_mean"], facts[b]["att_mean"]), ".1f"),
        row("attempted steps per row in one training pass, max", (facts[a]["att_max"], facts[b]["att_max"])),
        row("rejected steps per row in one training pass, mean", (facts[a]["rej"], facts[b]["rej"]), ".1f"),
        row("dispatched torch ops, training forward", (facts[a]["ops_fwd"], facts[b]["ops_fwd"])),
        row("dispatched torch ops, its backward", (facts[a]["ops_bwd"], facts[b]["ops_bwd"])),
        f"| validation loss (NLL) of the batch | {facts[a]['loss']:.5f} | {facts[b]['loss']:.5f} | "
        f"diff {abs(facts[b]['loss'] - facts[a]['loss']):.1e} |",
        "",
        f"Forecast mean, {b} vs {a}: max |diff| {float(diff.max()):.1e}, mean |diff| {float(diff.mean()):.1e} "
        f"(values of scale {float(facts[a]['mean'].abs().mean()):.2f}; dopri5 at rtol 1e-3 / atol 1e-4).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    page = out.read_text() if out.exists() else ""
    at = page.find("\n" + title + "\n")
    if at >= 0:  # replace the section, up to the next heading of any level
        start = at + 1
        nxt = page.find("\n#", start + 1)
        page = page[:start] + text + ("" if nxt < 0 else page[nxt:])
    else:
        page = page.rstrip("\n") + "\n\n" + text
    out.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())

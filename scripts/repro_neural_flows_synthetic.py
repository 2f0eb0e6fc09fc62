"""Neural Flows synthetic experiment (Biloš et al. 2021): ODE vs ResNet / GRU / coupling flow.

Task (the paper's): predict a whole trajectory from its initial condition, ``x̂(t) = evolution(x(t0), t)``,
trained by MSE on the points of each series. Data from :func:`ts_neuralode.data.generators.generate`
(1000 series × 100 points, times ~ sort(U(0, 10)), seed 123, split 60/20/20), plus the extrapolation-in-time
test set (times in [10, 30], fresh series). Initial condition: for the 1-D sets (x0 + f(t)) the state at
t0 = 0, x(0) = x0 + f(0), whose offset x0 = y − f(t) is recovered exactly from any point of the noiseless
series; for ``sink`` (autonomous 2-D ODE) the first observation, at its own time (the generator's x0).
Times given to every model are elapsed times ``t − t0`` (flows: F(t − t0, x0); ODE: a time-dependent field
f(t − t0, x) integrated from 0).

Models (the authors' synthetic settings, REFERENCE.md): ODE with a 3 × 64 tanh MLP field on [x, t]
(``ode_rk4``: rk4 with one step per output interval; ``ode_dopri5``: rtol 1e-3, atol 1e-4); flows with 4 layers
of 2 × 64 hidden and a Fourier time embedding of 8 features. Adam lr 1e-3, weight decay 1e-5, batch 50,
gradient clipping 1. No early stopping: the model after the last epoch is scored. Optional rows
(``--models resnet_flow_16`` / ``resnet_flow_16_relu``): the ResNet flow with the 16 residual blocks the reference
code actually builds for its ``--flow-layers 4`` (see EXTRA_MODELS).

    python scripts/repro_neural_flows_synthetic.py              # 400 series, 5 epochs: ~5 min on a 2-core CPU
    python scripts/repro_neural_flows_synthetic.py --full --device cuda   # 1000 series (the paper's), 50 epochs

Writes results/repro_neural_flows_synthetic.md (the command, our figures beside the reference code's).
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from ts_neuralode.api.benchmark import publish_report, script_parser
from ts_neuralode.data.generators import generate, sawtooth
from ts_neuralode.models.evolution import EvolutionConfig, ODEEvolution, make_evolution
from ts_neuralode.models.nets import mlp

DATASETS = ("sine", "square", "sawtooth", "triangle", "sink")
MODELS = ("ode_rk4", "ode_dopri5", "resnet_flow", "gru_flow", "coupling_flow")
#: optional rows (--models): the ResNet flow laid out as the reference code builds it for ``--flow-layers 4``:
#: each of its 4 flow layers is a stribor ResNetFlow of ``n_layers`` = 4 residual blocks, i.e. 16 blocks in all
#: (nfe/models/flow.py passes n_layers on), each with a 2 x 64 network; ReLU as there
EXTRA_MODELS = {"resnet_flow_16": dict(flow_layers=16), "resnet_flow_16_relu": dict(flow_layers=16, activation="relu")}
# f of the 1-D sets, value = x0 + f(t) (the generator's definitions; f(0) gives the initial state)
_F = {
    "sine": np.sin,
    "square": lambda t: np.sign(np.sin(t)),
    "sawtooth": sawtooth,
    "triangle": lambda t: np.abs(sawtooth(t)),
}

# Neural Flows reference code, REFERENCE.md: (epochs, dataset, model) -> (seconds per epoch, test MSE)
REFERENCE = {
    (5, "sine", "ode_rk4"): (2.69, 0.406),
    (5, "sine", "ode_dopri5"): (3.48, 0.410),
    (5, "sine", "coupling_flow"): (0.31, 0.048),
    (5, "sine", "resnet_flow"): (0.85, 0.0038),
    (5, "sink", "ode_rk4"): (2.74, 0.031),
    (5, "sink", "ode_dopri5"): (4.37, 0.028),
    (5, "sink", "coupling_flow"): (0.32, 0.058),
    (5, "sink", "resnet_flow"): (0.89, 0.040),
    (50, "sine", "ode_dopri5"): (14.5, 0.0151),
    (50, "sine", "ode_rk4"): (4.6, 0.055),
    (50, "sine", "coupling_flow"): (0.45, 0.00003),
    (50, "sine", "resnet_flow"): (1.18, 0.00001),
    (50, "sink", "ode_dopri5"): (math.nan, 0.0143),
    (50, "sink", "ode_rk4"): (math.nan, math.nan),
    (50, "sink", "coupling_flow"): (math.nan, 0.0065),
    (50, "sink", "resnet_flow"): (math.nan, 0.0049),
}


class TimeField(nn.Module):
    """Non-autonomous field ``f(t, x) = MLP([x, t])`` (t: elapsed time, [B])."""

    def __init__(self, dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        self.net = mlp(dim + 1, dim, hidden_dim, num_layers, "tanh")

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=-1))


def make_model(kind: str, dim: int) -> nn.Module:
    if kind.startswith("ode_"):
        method = kind.split("_", 1)[1]
        return ODEEvolution(dim, EvolutionConfig(method=method, rtol=1e-3, atol=1e-4), field=TimeField(dim, 64, 3))
    options = dict(hidden_dim=64, num_layers=2, flow_layers=4, time_embedding="fourier", time_embedding_features=8)
    if kind in EXTRA_MODELS:
        kind, options = "resnet_flow", {**options, **EXTRA_MODELS[kind]}
    return make_evolution(kind, dim, **options)


def trajectories(name: str, n_series: int, seed: int, extrap: str | None = None):
    """(x0 [S, D], times [S, T'] elapsed from t0, values [S, T', D], target mask [S, T']) as tensors."""
    df = generate(name, n_series=n_series, seed=seed, extrap=extrap)
    chans = [c for c in df.columns if c not in ("unique_id", "ds")]
    s = df["unique_id"].nunique()
    t = df["ds"].to_numpy().reshape(s, -1)
    y = df[chans].to_numpy().reshape(s, t.shape[1], len(chans))
    if name in _F:  # prepend the state at t0 = 0
        f = _F[name]
        x0 = y[:, 0, 0] - f(t[:, 0]) + f(np.zeros(1))
        t = np.concatenate([np.zeros((s, 1)), t], axis=1)
        y = np.concatenate([x0[:, None, None], y], axis=1)
    else:  # autonomous: the first observation is the initial state
        t = t - t[:, :1]
    mask = np.ones(t.shape, dtype=bool)
    mask[:, 0] = False  # the initial condition is given, not scored
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731  (copies)
    return f32(y[:, 0]), f32(t), f32(y), torch.as_tensor(mask)


def mse(model: nn.Module, data, device: str, batch: int = 250) -> float:
    x0, t, y, m = data
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x0), batch):
            sl = slice(i, i + batch)
            pred = model(x0[sl].to(device), t[sl].to(device))
            err = ((pred - y[sl].to(device)) ** 2).sum(-1)[m[sl].to(device)]
            total += float(err.sum())
            count += int(err.numel()) * y.shape[-1]
    return total / max(count, 1)


def train_one(kind: str, name: str, train, tests: dict, epochs: int, seed: int, device: str) -> dict:
    torch.manual_seed(seed)
    x0, t, y, m = train
    model = make_model(kind, y.shape[-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    times, nfes, error = [], [], ""
    try:
        for _ in range(epochs):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.train()
            for idx in torch.randperm(len(x0), generator=gen).split(50):
                pred = model(x0[idx].to(device), t[idx].to(device))
                loss = ((pred - y[idx].to(device)) ** 2).mean(-1)[m[idx].to(device)].mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                nfes.append(float(getattr(model, "last_nfe", 0.0)))
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        model.eval()
        scores = {k: mse(model, v, device) for k, v in tests.items()}
    except Exception as err:  # SolverError (dt underflow) and the like: report, go on
        error = f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
        scores = {k: math.nan for k in tests}
    return {
        "dataset": name,
        "model": kind,
        "params": sum(p.numel() for p in model.parameters()),
        "epoch_s": statistics.median(times) if times else math.nan,
        "nfe": nfes[-1] if nfes else math.nan,
        **scores,
        "error": error,
    }


def fmt(v, digits=4) -> str:
    if isinstance(v, str):
        return v or ""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e3 else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = script_parser(__doc__, "results/repro_neural_flows_synthetic.md", seed=123)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args(argv)
    epochs = args.epochs or (50 if args.full else 5)
    args.n_series = args.n_series or (1000 if args.full else 400)
    torch.set_num_threads(args.threads)
    datasets = [d for d in args.datasets.split(",") if d]
    models = [m for m in args.models.split(",") if m]
    bad = [d for d in datasets if d not in DATASETS] + [m for m in models if m not in MODELS and m not in EXTRA_MODELS]
    if bad:
        print(f"error: unknown dataset/model {bad}; datasets {DATASETS}, models {MODELS}", file=sys.stderr)
        return 2
    rows = []
    for name in datasets:
        x0, t, y, m = trajectories(name, args.n_series, args.seed)
        n = len(x0)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
        n_tr, n_va = int(0.6 * n), int(0.2 * n)

        def split(idx, x0=x0, t=t, y=y, m=m):
            return x0[idx], t[idx], y[idx], m[idx]

        train, test = split(perm[:n_tr]), split(perm[n_tr + n_va :])
        extrap = trajectories(name, n - n_tr - n_va, args.seed + 1, extrap="time")
        for kind in models:
            row = train_one(kind, name, train, {"test": test, "extrap_time": extrap}, epochs, args.seed, args.device)
            rows.append(row)
            print(
                f"{name:9s} {kind:14s} epoch {fmt(row['epoch_s'], 3)} s  test {fmt(row['test'])}  "
                f"extrap-time {fmt(row['extrap_time'])} {row['error']}",
                file=sys.stderr,
                flush=True,
            )

    def ratio(r: dict, base_model: str, key, table: dict | None = None) -> float:
        base = (
            table.get((epochs, r["dataset"], base_model), (math.nan,))[0]
            if table is not None
            else next(
                (q["epoch_s"] for q in rows if q["dataset"] == r["dataset"] and q["model"] == base_model), math.nan
            )
        )
        return key / base if base and not math.isnan(base) else math.nan

    lines = [
        "| dataset | model | params | epoch s (median) | epoch time / ODE rk4 | epoch time / ODE dopri5 | "
        "NFE/forward | test MSE | extrap-time MSE | ref epoch s | ref epoch time / ref ODE rk4 | ref test MSE |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        ref = REFERENCE.get((epochs, r["dataset"], r["model"]), (math.nan, math.nan))
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['params']:,} | {fmt(r['epoch_s'], 3)} | "
            f"{fmt(ratio(r, 'ode_rk4', r['epoch_s']), 2)} | {fmt(ratio(r, 'ode_dopri5', r['epoch_s']), 2)} | "
            f"{fmt(r['nfe'], 1)} | {fmt(r['test'])} | {fmt(r['extrap_time'])}{' ' + r['error'] if r['error'] else ''} "
            f"| "
            f"{fmt(ref[0], 2)} | {fmt(ratio(r, 'ode_rk4', ref[0], REFERENCE), 2)} | {fmt(ref[1])} |"
        )
    table = "\n".join(lines)
    setting = (
        f"{args.n_series} series × 100 points per set (split 60/20/20, seed {args.seed}), {epochs} epochs, "
        f"batch 50, device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s). "
        "MSE in data units over all points but the given initial state; extrap-time: fresh series with "
        "times in [10, 30]. Reference columns: the Neural Flows reference code as timed in REFERENCE.md "
        f"(600 training series; {epochs}-epoch figures where REFERENCE.md has them). Epoch seconds depend on "
        "the number of training series and on the machine, so compare the ratio columns; this machine is "
        "shared with other jobs, so absolute times are noisy."
    )
    return publish_report(
        args.out,
        "Neural Flows synthetic: ODE vs flows",
        "scripts/repro_neural_flows_synthetic.py",
        argv,
        [setting, table],
        table,
    )


if __name__ == "__main__":
    sys.exit(main())

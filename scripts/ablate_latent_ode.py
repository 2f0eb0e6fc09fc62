"""Why the latent ODE sat on the per-series-mean plateau: an ablation on the Latent ODE periodic protocol.

Data and protocol as ``scripts/repro_latent_ode_periodic.py`` (the reference's ``-n 1000 -s 50 -l 10`` run):
1000 ``periodic`` series (600 train / 200 val / 200 test), union grid, original units, time in the data's
units; interpolation (condition on 50% of the points, score the held-out ones) and extrapolation (condition on
50% of the points of the first half of the time span, score the second half; the variants that matter most);
latent dimension 10, batch 50, Adam lr 1e-2, gradient clipping 1, KL warm-up 10 epochs, 3 samples. Each
variant changes one thing
against the current defaults (or the defaults before this study) and is trained with several seeds by the
same small loop (the package's DataModule and ForecastingModule; the epoch-end test MSE is recorded every
epoch, which the benchmark runner does not do).

Columns: test MSE after the last epoch (median and range over the seeds), the best epoch's MSE (median),
the first epoch at which the test MSE fell below 0.3 in interpolation / 0.35 in extrapolation (the plateaus:
~0.45 and ~0.51, the per-series mean level; a sine of amplitude 1 has variance 0.5; "—" = never), and the
mean posterior std of z0 on the test set after epoch 10 (the end of the KL warm-up).

    python scripts/ablate_latent_ode.py                  # all variants, 3 seeds, 20 epochs (CPU, ~30 min)
    python scripts/ablate_latent_ode.py --variants defaults,old_defaults --seeds 0 --tasks interpolation

Writes results/latent_ode_ablation.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from torch import nn

from ts_neuralode.api.benchmark import publish_report
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.models.evolution_config import merge_options
from ts_neuralode.training import ForecastingModule

# Each variant: ForecastingModule options on top of BASE (evolution options flat or nested: merge_options), the
# variant's model_kwargs, the per-epoch lr
# decay, and an optional script-local change ("ref_init", "ref_loss") described in VARIANT_NOTES.
BASE = {
    "model": "latent_ode",
    "evolution": "ode",
    "method": "dopri5",
    "latent_dim": 10,
    "lr": 1e-2,
    "kl_warmup_epochs": 10,
    "iwae_samples": 3,
    "eval_samples": 1,
}
# before the study: the IWAE objective, the targets alone scored (posterior std softplus(0) = 0.69 at init, as now)
OLD = {"objective": "iwae", "score_context": False}
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "old_defaults": {"kw": OLD, "schedule": "constant"},
    "constant_lr": {"schedule": "constant"},
    "std_0.05": {"kw": {"posterior_std_init": 0.05}},
    "iwae": {"kw": {"objective": "iwae"}},
    "step_0.94": {"schedule": 0.94},
    "1_sample": {"opts": {"iwae_samples": 1}},
    "ref_loss": {"extra": "ref_loss"},
    "ref_init": {"extra": "ref_init"},
    "field_100x1": {"opts": {"hidden_dim": 100, "num_layers": 1}},
    "obs_std_0.1": {"kw": {"obs_std": 0.1}},
    "time_x4": {"time_scale": 0.25},
    "targets_only": {"kw": {"score_context": False}},
}
VARIANT_NOTES = {
    "defaults": "objective elbo, lr cosine-annealed to 0 over the epochs, posterior std 0.69 at init",
    "old_defaults": "objective iwae, constant lr, targets only scored (before this study)",
    "constant_lr": "defaults with a constant lr",
    "std_0.05": "defaults with the posterior std starting at 0.05 (the reference's starts near 0)",
    "iwae": "defaults but the IWAE objective",
    "step_0.94": "defaults but lr x0.94 per epoch instead of the cosine",
    "1_sample": "defaults with 1 sample (ELBO and IWAE coincide)",
    "ref_loss": "defaults but the reference's normalisation: per-sample log-likelihood averaged per point "
    "and over the batch, analytic KL averaged over latent dims and the batch, then -logsumexp "
    "over the 3 samples (script-local)",
    "ref_init": "defaults with every Linear and GRU weight N(0, 0.1^2), biases 0, as the reference (script-local)",
    "field_100x1": "defaults with the reference's network size: 1 hidden layer of 100 (ours: 2 of 64)",
    "obs_std_0.1": "defaults with obs_std 0.1 (reference: 0.01)",
    "time_x4": "defaults with time_scale 0.25: the data's time stretched 4x (frequencies 4x lower)",
    "targets_only": "defaults but the loss scores the targets only, not the conditioning points (as before this "
    "study; in interpolation the targets are every point, so only extrapolation changes)",
}


# Extrapolation (condition on 50% of the first half, score the second half) reruns the variants that matter most
EXTRAP_VARIANTS = ("defaults", "old_defaults", "targets_only", "constant_lr", "iwae", "field_100x1", "obs_std_0.1")
# "escaped the plateau": interpolation's plateau is the per-series mean (~0.45); extrapolation's ~0.51
ESCAPE = {"interpolation": 0.3, "extrapolation": 0.35}


def reference_loss(model, batch):
    """The Latent ODE reference code's training loss, built from our model's pieces."""
    grid = model._grid(batch, None)
    mean, std, t0 = model.posterior(grid)
    k = model.iwae_samples
    z0 = mean + std * torch.randn(k, *mean.shape, dtype=mean.dtype)
    pred = model.decode(z0, grid, t0)
    tm = grid.target_mask
    var = model.obs_std**2
    ll = -0.5 * ((grid.values - pred) ** 2 / var + math.log(2 * math.pi * var))
    rec = ((ll * tm).sum(2) / tm.sum(1).clamp_min(1.0)).mean((-1, -2))  # [k]: per point, then batch mean
    kl = (0.5 * (mean**2 + std**2) - torch.log(std) - 0.5).mean()
    loss = -torch.logsumexp(rec - model.kl_weight * kl, 0)
    return loss


def reference_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.GRUCell)):
            for name, p in m.named_parameters():
                nn.init.normal_(p, 0.0, 0.1) if "weight" in name else nn.init.zeros_(p)


def test_mse_and_std(model, batches, task: str) -> tuple[float, float]:
    """Test MSE on the task's scored points (interpolation: held-out points; extrapolation: after the cut)."""
    model.eval()
    se = n = 0.0
    stds = []
    with torch.no_grad():
        for b in batches:
            f = model.predict(b, num_samples=1)
            if task == "interpolation":
                m = b.held_out_mask
            else:
                m = b.target_mask * (b.times_per_sample() > b.cutoff.unsqueeze(1)).unsqueeze(-1)
            se += float((((f.mean - b.values) ** 2) * m).sum())
            n += float(m.sum())
            stds.append(float(model.posterior(model._grid(b, None))[1].mean()))
    model.train()
    return se / max(n, 1.0), statistics.fmean(stds)


def run_variant(spec: dict, seed: int, epochs: int, df, task: str) -> tuple[list[float], float]:
    dm = IrregularTimeSeriesDataModule(
        df=df,
        task=task,
        obs_fraction=0.5,
        cut=0.5,
        extrap_obs_fraction=0.5,
        layout="union",
        batch_size=50,
        seed=0,
        scaler="none",
        time_scale=spec.get("time_scale", 1.0),
    )
    dm.setup()
    torch.manual_seed(seed)
    opts = merge_options(BASE, spec.get("opts", {}), {"input_dim": 1, "model_kwargs": dict(spec.get("kw", {}))})
    model = ForecastingModule(**opts).model
    if spec.get("extra") == "ref_init":
        reference_init(model)
    opt = torch.optim.Adam(model.parameters(), lr=opts["lr"])
    schedule = spec.get("schedule", "cosine")  # as ForecastingModule's lr_schedule: cosine, or x gamma per epoch
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1.0 if schedule == "constant" else schedule)
    test = list(dm.test_dataloader())
    curve, std10 = [], math.nan
    model.train()
    for epoch in range(epochs):
        model.set_epoch(epoch)
        for batch in dm.train_dataloader():
            opt.zero_grad()
            loss = reference_loss(model, batch) if spec.get("extra") == "ref_loss" else model.loss(batch)[0]
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()
        mse, std = test_mse_and_std(model, test, task)
        curve.append(mse)
        if epoch == min(9, epochs - 1):
            std10 = std
    return curve, std10


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--tasks",
        default="interpolation,extrapolation",
        help="interpolation: every variant; extrapolation: EXTRAP_VARIANTS",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n_series", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/latent_ode_ablation.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    df = generate("periodic", n_series=args.n_series, n_points=100, seed=0)
    sections = []
    for task in [t for t in args.tasks.split(",") if t]:
        rows, curves = [], []
        for name in names if task == "interpolation" else [v for v in names if v in EXTRAP_VARIANTS]:
            finals, bests, escapes, stds = [], [], [], []
            for seed in seeds:
                t0 = time.perf_counter()
                curve, std10 = run_variant(VARIANTS[name], seed, args.epochs, df, task)
                finals.append(curve[-1])
                bests.append(min(curve))
                escapes.append(next((i + 1 for i, v in enumerate(curve) if v < ESCAPE[task]), None))
                stds.append(std10)
                curves.append(f"| {name} | {seed} | " + " ".join(f"{v:.2f}" for v in curve) + " |")
                print(
                    f"{task} {name} seed {seed}: final {curve[-1]:.4f} best {min(curve):.4f} std@10 {std10:.3f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(
                f"| {name} | {statistics.median(finals):.3f} ({min(finals):.3f}–{max(finals):.3f}) | "
                f"{statistics.median(bests):.3f} | {', '.join(str(e) if e else '—' for e in escapes)} | "
                f"{statistics.median(stds):.3f} | {VARIANT_NOTES.get(name, '')} |"
            )
        sections += [
            f"## {task}",
            "\n".join(
                [
                    f"| variant | test MSE after {args.epochs} epochs, median (range) | best-epoch MSE, median | "
                    f"epoch MSE < {ESCAPE[task]}, per seed | posterior std after epoch 10 | what it is |",
                    "|---|---|---|---|---|---|",
                    *rows,
                ]
            ),
            "\n".join(["| variant | seed | test MSE per epoch |", "|---|---|---|", *curves]),
        ]
    notes = (
        f"Seeds {seeds}; {args.n_series} series; {args.epochs} epochs; torch {torch.__version__}, "
        f"{args.threads} thread(s). Reference code on this protocol after 20 epochs (REFERENCE.md): "
        "interpolation 0.188 (a rerun here: 0.209, on the plateau at 0.43–0.47 until epoch 15, MSE over all "
        "points), extrapolation 0.49. Naive forecasts on the same test points (repro_latent_ode_periodic.md): "
        "interpolation — linear 0.010, LOCF 0.109, series mean 0.483; extrapolation — mean 0.565, LOCF 1.107."
    )
    return publish_report(
        args.out,
        "Latent ODE periodic: what moved the MSE",
        "scripts/ablate_latent_ode.py",
        argv,
        [notes, *sections],
        "\n\n".join(sections),
    )


if __name__ == "__main__":
    sys.exit(main())

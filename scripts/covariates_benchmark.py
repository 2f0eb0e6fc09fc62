"""Known-future covariates pay off: the same model with and without the input that drives the target.

Data: ``ts-neuralode generate pk`` — a one-compartment pharmacokinetic model, ``dc/dt = rate(t) − k c``, with
2–6 infusions per series at known times (the ``rate`` column, on rows of its own; piecewise constant) and the
concentration observed at 40 random times in [0, 10] with noise (``ts_neuralode.data.generators``). Task:
extrapolation — condition on the first half of each series' span, forecast the second half (held-out series;
60/20/20 split). Infusions in the second half are unknown to a model without the covariate; with
``--data.future_cols '[rate]'`` the model's dynamics read ``rate(t)`` over the horizon as a control,
``dh/dt = f(t, h, u(t))`` (flows: conditioned on ``u`` and restarted at its changes — README "Covariates").

Each model is trained twice from the same seed and options, once with the covariate and once without, and scored
on the test series by the LightningModule's own test step: ``test_extrap_mse`` (MSE of the forecast after the
cut, in the scaler's standardised units) and, by the same code on the same batches, the naive baselines LOCF
and mean (``test_extrap_mse_locf``, ``test_extrap_mse_mean``).

    python scripts/covariates_benchmark.py                 # defaults below, a few minutes on 2 CPU cores
    python scripts/covariates_benchmark.py --epochs 40 --n_series 600

Defaults: 400 series, 40 epochs, batch 50 (padded layout), Adam lr 1e-2 (cosine), state 16, hidden 32; one model
per family: ODE-RNN (rk4 ODE, step 0.25; and with a GRU flow), GRU-ODE-Bayes (rk4), latent ODE (rk4; and with a
coupling flow). Writes results/covariates.md.
"""

from __future__ import annotations

import sys
import time
import warnings

import lightning.pytorch as pl
import torch

from ts_neuralode.api.benchmark import publish_report
from ts_neuralode.api.benchmark.report import script_parser
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.training import ForecastingModule

MODELS = {
    "ODE-RNN (rk4 ODE)": dict(model="ode_rnn", evolution={"kind": "ode", "method": "rk4", "step_size": 0.25}),
    "ODE-RNN (GRU flow)": dict(model="ode_rnn", evolution={"kind": "gru_flow"}),
    "GRU-ODE-Bayes (rk4 ODE)": dict(model="gru_ode", evolution={"kind": "ode", "method": "rk4", "step_size": 0.25}),
    "Latent ODE (rk4 ODE)": dict(model="latent_ode", evolution={"kind": "ode", "method": "rk4", "step_size": 0.25}),
    "Latent ODE (coupling flow)": dict(model="latent_ode", evolution={"kind": "coupling_flow"}),
}


def run(name: str, spec: dict, df, with_cov: bool, args) -> dict:
    pl.seed_everything(args.seed, verbose=False)
    dm = IrregularTimeSeriesDataModule(
        df=df,
        task="extrapolation",
        cut=0.5,
        batch_size=50,
        seed=args.seed,
        layout="padded",
        future_cols=["rate"] if with_cov else None,
    )
    module = ForecastingModule(
        **spec,
        input_dim=dm.num_channels,
        latent_dim=16,
        hidden_dim=32,
        lr=1e-2,
        lr_schedule="cosine",
        baselines=["locf", "mean"],
        covariates=dm.covariates,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    res = trainer.test(module, datamodule=dm, verbose=False)[0]
    out = {k: float(res[f"test_extrap_mse{s}"]) for k, s in (("model", ""), ("locf", "_locf"), ("mean", "_mean"))}
    out["fit_s"] = fit_s
    print(
        f"{name:28s} covariate={with_cov!s:5s} extrap MSE {out['model']:.4f}  LOCF {out['locf']:.4f}  "
        f"mean {out['mean']:.4f}  ({fit_s:.0f} s)",
        file=sys.stderr,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = script_parser(__doc__, "results/covariates.md")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of the models")
    args = p.parse_args(argv)
    args.epochs = args.epochs or 40
    args.n_series = args.n_series or 400
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    df = generate("pk", n_series=args.n_series, seed=args.seed)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        without = run(name, MODELS[name], df, False, args)
        with_ = run(name, MODELS[name], df, True, args)
        rows.append((name, with_, without))
    table = [
        "| model | extrap MSE with `rate` | without | ratio without / with | LOCF | mean | fit s (with / without) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, w, wo in rows:
        table.append(
            f"| {name} | {w['model']:.4f} | {wo['model']:.4f} | {wo['model'] / w['model']:.1f}× | "
            f"{w['locf']:.4f} | {w['mean']:.4f} | {w['fit_s']:.0f} / {wo['fit_s']:.0f} |"
        )
    settings = (
        f"Settings: `pk` data, {args.n_series} series × 40 observations (seed {args.seed}), extrapolation "
        f"(cut at half of each series' span), 60/20/20 split by series, {args.epochs} epochs, batch 50, Adam "
        f"lr 1e-2 cosine, gradient clip 1, state 16, hidden 32, {args.threads} torch thread(s), last-epoch "
        "weights. MSE in standardised units on the test series' points after the cut; LOCF and mean scored "
        "by the same test step on the same batches (they do not depend on the covariate)."
    )
    text = "\n".join(table)
    return publish_report(
        args.out,
        "Known-future covariates: with vs without the driving input",
        "scripts/covariates_benchmark.py",
        sys.argv[1:] if argv is None else argv,
        [settings, text],
        text,
    )


if __name__ == "__main__":
    raise SystemExit(main())

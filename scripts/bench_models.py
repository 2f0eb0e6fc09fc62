"""Latent ODE (dopri5) vs latent GRU flow vs latent coupling flow on the Neural Flows sine set.

Same data, seed, epochs and every non-evolution option for each model; only ``evolution`` changes
(plus one extra row with the flow also in the encoder).
Reports the median seconds per training epoch (sum of the training batches' forward + backward +
optimiser step, so data loading and validation are excluded) and the test MSE (forecast at the test
series' times from their observed half, interpolation task, normalised units).

    python scripts/bench_models.py            # scaled to a few minutes on 2 CPU cores
    python scripts/bench_models.py --full     # 1000 series x 100 points, 20 epochs

Writes a markdown table (with the command at the top) to results/bench_models.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.models.evolution_config import merge_options
from ts_neuralode.training import ForecastingModule

VARIANTS = [
    ("latent ODE (dopri5)", dict(evolution="ode", method="dopri5")),
    ("latent GRU flow", dict(evolution="gru_flow")),
    ("latent coupling flow", dict(evolution="coupling_flow")),
    ("latent GRU flow, flow-RNN encoder", dict(evolution="gru_flow", model_kwargs={"encoder_evolution": "same"})),
]


class EpochTimer(pl.Callback):
    """Per-epoch sum of training batch times (forward, backward, optimiser step)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._t = 0.0
        self._sum = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._sum = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sum += time.perf_counter() - self._t

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs.append(self._sum)


def run_variant(label: str, options: dict, df, args) -> dict:
    pl.seed_everything(args.seed, verbose=False)
    dm = IrregularTimeSeriesDataModule(
        df=df, task="interpolation", obs_fraction=0.5, layout="padded", batch_size=args.batch_size, seed=args.seed
    )
    module = ForecastingModule(
        **merge_options(
            dict(
                model="latent_ode",
                input_dim=1,
                latent_dim=args.latent_dim,
                hidden_dim=args.hidden_dim,
                flow_layers=args.flow_layers,
                lr=args.lr,
                weight_decay=1e-5,
                eval_samples=1,
            ),
            options,
        )
    )
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
        check_val_every_n_epoch=args.epochs,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    nfe = float(trainer.callback_metrics.get("nfe", torch.tensor(0.0)))  # before test() replaces the metrics
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    row = {"model": label, "epoch_s": statistics.median(timer.epochs), "test_mse": float(test["test_mse"]), "nfe": nfe}
    print(f"{label}: {row['epoch_s']:.2f} s/epoch, test MSE {row['test_mse']:.4f}, nfe {row['nfe']:.0f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="1000 series x 100 points, 20 epochs")
    p.add_argument("--n-series", type=int, default=None)
    p.add_argument("--n-points", type=int, default=100)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--flow-layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1, help="1: stable timings on a shared machine")
    p.add_argument("--out", default="results/bench_models.md")
    args = p.parse_args(argv)
    args.n_series = args.n_series or (1000 if args.full else 300)
    args.epochs = args.epochs or (20 if args.full else 3)
    torch.set_num_threads(args.threads)

    df = generate("sine", n_series=args.n_series, n_points=args.n_points, seed=args.seed)
    rows = [run_variant(label, options, df, args) for label, options in VARIANTS]
    base = rows[0]
    words = argv if argv is not None else sys.argv[1:]
    command = "python scripts/bench_models.py " + " ".join(shlex.quote(a) for a in words)
    lines = [
        f"Command: `{command.strip()}`",
        "",
        f"Neural Flows sine set: {args.n_series} series x {args.n_points} points, interpolation (half of each "
        f"series observed), 60/20/20 split, batch {args.batch_size}, {args.epochs} epochs, Adam lr {args.lr}, "
        f"latent {args.latent_dim}, hidden {args.hidden_dim}, flow layers {args.flow_layers}, seed {args.seed}, "
        f"{args.threads} thread(s). Encoder: Euler ODE-RNN (one step per interval) unless the row says "
        "flow-RNN (the decoder's flow). NFE: mean function evaluations per training forward (encoder + decoder). "
        "Epoch time = median over epochs of the summed training-batch times (forward + backward + step).",
        "",
        "| model | s / train epoch (median) | speed-up vs dopri5 | test MSE | NFE / forward |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['epoch_s']:.2f} | {base['epoch_s'] / r['epoch_s']:.1f}x | "
            f"{r['test_mse']:.4f} | {r['nfe']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``ts-neuralode benchmark``: Neural ODE vs Neural Flow models, same data, seed and budget.

    ts-neuralode benchmark --dataset sine --epochs 5
    ts-neuralode benchmark --data.path series.csv --models latent_ode_dopri5,latent_gru_flow --epochs 20

Every selected model (:data:`MODEL_SPECS`; default all of them) is built by
:class:`~ts_neuralode.lightning.ForecastingModule` with the same options, seeded with the same seed, and
trained by a Lightning ``Trainer`` for the same number of epochs on the same
:class:`~ts_neuralode.data.IrregularTimeSeriesDataModule` (training task ``--task``). Then it is scored on
the test split of BOTH tasks (the data modules share the split: same seed, same series):

* ``interp_mse``: interpolation test set, held-out points (condition on ``obs_fraction`` of each series);
* ``extrap_mse``: extrapolation test set, points after the cut (condition on the points before it);
* ``forecast_mse`` (training task ``forecast`` only): the last ``--horizon`` of each test series, conditioned on
  the ``--context`` before it. With ``--split_by time`` (the forecast task's default) every series is in
  training, so only this column is scored (the interpolation/extrapolation test series would overlap the
  training data); with ``--split_by series`` all three are, on the same held-out series.

Naive baselines (:mod:`ts_neuralode.models.baselines`; ``--baselines``, default ``locf, mean, linear`` plus
``seasonal`` with ``--season``) get rows of their own, scored by the same ``trainer.test`` of the same
:class:`~ts_neuralode.lightning.ForecastingModule` code on the same test sets (nothing to train: no epoch
time). Every row has a skill per task, ``<task>_skill = <task>_mse / LOCF's <task>_mse`` (below 1: better
than carrying the last value forward).

MSE is in model units (values after the data module's scaler; ``--data.scaler none`` keeps the original
units). Reported per model: trainable parameters, training time per epoch (median over epochs; the
``Trainer`` runs no validation and no logger while training, so the epoch time is the training loop only:
data loading, forward, backward, optimiser step), inference latency per test batch (``model.predict`` at the
batch's times, one deterministic sample, no grad; p50 and p95 over ``--latency_reps`` passes over the test
batches after one warm-up pass), function evaluations per forward (training forward and inference forward,
mean per sample; 0 for flows), and the two test MSEs.

Outputs: a markdown table on stdout (and ``<out stem>.md`` with the command that produced it), the CSV
``--out``, a PNG chart of epoch time against test MSE (log-log) and, unless ``--no_tracking``, an MLflow parent
run (params: the shared settings; artifacts: CSV, PNG, markdown) with one nested run per model (params: the
model's config; metrics: the row, plus ``epoch/epoch_time_s`` and ``epoch/train_loss`` with ``step = epoch``).
The tracking URI follows the project convention (:func:`ts_neuralode.tracking.resolve_tracking_uri`).
MLflow is written only between models, never inside a timed loop.

A model whose solver fails (:class:`~ts_neuralode.solvers.SolverError`, e.g. step size underflow on stiff
dynamics) gets its error in the ``error`` column and the benchmark goes on with the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ts_neuralode.errors import ConfigError, OneLineArgumentParser
from ts_neuralode.solvers import SolverError

PROG = "ts-neuralode benchmark"

#: Benchmark model name -> ForecastingModule options (on top of the shared ones), the evolution's spelled flat
#: for a readable table (``evolution`` is its kind; :func:`module_options` nests them).
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "latent_ode_dopri5": {"model": "latent_ode", "evolution": "ode", "method": "dopri5"},
    "latent_ode_rk4": {"model": "latent_ode", "evolution": "ode", "method": "rk4"},
    "latent_gru_flow": {"model": "latent_ode", "evolution": "gru_flow"},
    "latent_coupling_flow": {"model": "latent_ode", "evolution": "coupling_flow"},
    "latent_resnet_flow": {"model": "latent_ode", "evolution": "resnet_flow"},
    "ode_rnn": {"model": "ode_rnn", "evolution": "ode", "method": "dopri5"},
    "flow_rnn": {"model": "ode_rnn", "evolution": "gru_flow"},
    "gru_ode": {"model": "gru_ode", "evolution": "ode", "method": "dopri5"},
    "gru_flow": {"model": "gru_ode", "evolution": "gru_flow"},
}
DEFAULT_MODELS = tuple(MODEL_SPECS)
# Optional variants of the latent models' encoder (by default every latent model encodes with the same ODE-RNN,
# one Euler step per observation interval, as the Latent ODE reference code; only the decoder differs):
# the latent ODE with a dopri5 ODE-RNN encoder (each interval an adaptive solve), and latent flows whose
# encoder is a flow-RNN of the same flow kind (the Neural Flows paper's latent flow models).
MODEL_SPECS["latent_ode_dopri5_enc"] = {"model": "latent_ode", "evolution": "ode", "method": "dopri5",
                                        "model_kwargs": {"encoder_method": "dopri5"}}
for _kind in ("gru_flow", "coupling_flow", "resnet_flow"):
    MODEL_SPECS[f"latent_{_kind}_flowenc"] = {"model": "latent_ode", "evolution": _kind,
                                              "model_kwargs": {"encoder_evolution": "same"}}
TASKS = ("interpolation", "extrapolation", "forecast")
SPLITS = ("series", "time")
LAYOUTS = ("auto", "union", "padded")
#: test task -> (result column prefix, the test metric that scores it)
SCORES = {"interpolation": ("interp", "test_interp_mse"), "extrapolation": ("extrap", "test_extrap_mse"),
          "forecast": ("forecast", "test_extrap_mse")}

#: Result columns, in table order (CSV has them all; the markdown table a readable subset).
COLUMNS = (
    "model", "family", "evolution", "method", "params", "epochs", "epoch_time_s", "epoch_time_min_s",
    "train_time_s", "train_nfe", "infer_nfe", "latency_p50_ms", "latency_p95_ms", "interp_mse", "extrap_mse",
    "forecast_mse", "interp_skill", "extrap_skill", "forecast_skill", "final_train_loss", "error",
)
_MD_COLUMNS = (
    ("model", "model"), ("params", "params"), ("epoch_time_s", "epoch time s (median)"),
    ("latency_p50_ms", "latency p50 ms"), ("latency_p95_ms", "latency p95 ms"), ("train_nfe", "NFE/forward train"),
    ("infer_nfe", "NFE/forward infer"), ("interp_mse", "interp MSE"), ("extrap_mse", "extrap MSE"),
    ("forecast_mse", "forecast MSE"), ("interp_skill", "interp skill"), ("extrap_skill", "extrap skill"),
    ("forecast_skill", "forecast skill"),
)
#: markdown columns left out when no row has a value (tasks that were not scored)
_MD_OPTIONAL = ("interp_mse", "extrap_mse", "forecast_mse", "interp_skill", "extrap_skill", "forecast_skill")


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run depends on (the CLI options; scripts build it directly)."""

    dataset: str | None = None              # a generator name (ts_neuralode.data.generators.NAMES) ...
    path: str | None = None                 # ... or a CSV file (exactly one of the two)
    read_options: dict = field(default_factory=dict)   # format/id_col/time_col/value_cols/... for the CSV
    n_series: int = 1000
    n_points: int | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    task: str = "interpolation"             # training task (see scored_tasks for the test tasks)
    horizon: float | str | None = None      # forecast task: target window after the cutoff (a duration)
    context: float | str | None = None      # forecast task: conditioning window before it (None: all history)
    windows_per_series: int | str = "auto"  # forecast task: training windows per series per epoch
    split_by: str | None = None             # forecast task: "time" (default) or "series"
    baselines: tuple[str, ...] | None = None  # None: locf, mean, linear (+ seasonal with a season); (): none
    season: float | str | None = None       # period of the seasonal baseline (a duration)
    obs_fraction: float = 0.5
    cut: float = 0.5
    extrap_obs_fraction: float = 1.0
    layout: str = "auto"
    scaler: str = "standard"
    time_scale: float | str = "auto"
    epochs: int = 5
    batch_size: int = 50
    seed: int = 0
    train_seed: int | None = None         # model init and training order (default: seed)
    model_options: dict = field(default_factory=dict)  # shared ForecastingModule options (latent_dim, lr, ...)
    model_overrides: dict = field(default_factory=dict)  # per benchmark model name: extra options
    gradient_clip: float | None = 1.0
    latency_reps: int = 3
    device: str = "cpu"
    threads: int | None = 1                 # torch CPU threads (None: torch's default)

    def validate(self) -> None:
        if (self.dataset is None) == (self.path is None):
            raise ConfigError("give exactly one of --dataset NAME (a synthetic set) or --data.path FILE.csv")
        if self.dataset is not None:
            from ts_neuralode.data.generators import NAMES

            if self.dataset not in NAMES:
                raise ConfigError(f"--dataset {self.dataset!r} is unknown; choose one of {', '.join(NAMES)} "
                                  "or pass --data.path FILE.csv")
        elif not Path(self.path).is_file():
            raise ConfigError(f"--data.path {self.path}: file not found; pass an existing CSV file")
        if not self.models:
            raise ConfigError(f"--models is empty; choose from {', '.join(MODEL_SPECS)}")
        unknown = [m for m in self.models if m not in MODEL_SPECS]
        if unknown:
            raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(MODEL_SPECS)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--models lists a model twice ({', '.join(self.models)}); list each once")
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}; use interpolation, extrapolation or forecast")
        if self.task == "forecast" and self.horizon is None:
            raise ConfigError("--task forecast needs --horizon (a number of the data's time units, or a duration "
                              "such as 2D)")
        if self.split_by is not None and (self.split_by not in SPLITS or self.task != "forecast"):
            raise ConfigError(f"--split_by {self.split_by!r}: use series or time, with --task forecast only")
        from ts_neuralode.models.baselines import baseline_names

        baseline_names(self.baselines, self.season)  # unknown names, duplicates
        if "seasonal" in (self.baselines or ()) and self.season is None:
            raise ConfigError("--baselines seasonal needs --season (the period: a duration such as 24h or a number)")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--data.layout {self.layout!r}; use auto, union or padded")
        for name in ("epochs", "batch_size", "n_series", "latency_reps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be >= 1")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}; use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
        if self.gradient_clip is not None and self.gradient_clip <= 0:
            raise ConfigError(f"--gradient_clip {self.gradient_clip} must be > 0 (or omit it)")


# ----------------------------------------------------------------------------------------------- data
def _source_kwargs(cfg: BenchmarkConfig, df: pd.DataFrame | None) -> dict:
    if df is not None:
        return {"df": df}
    return {"path": cfg.path, **cfg.read_options}


def load_frame(cfg: BenchmarkConfig) -> pd.DataFrame | None:
    """The generated data set (None for a CSV, which each data module reads itself)."""
    if cfg.dataset is None:
        return None
    from ts_neuralode.data.generators import generate

    return generate(cfg.dataset, n_series=cfg.n_series, n_points=cfg.n_points, seed=cfg.seed)


def choose_layout(cfg: BenchmarkConfig, df: pd.DataFrame | None) -> str:
    """``auto``: the union grid when the series (nearly) share their times, else per-series padded grids.

    A union grid over series with their own random times would have ``B × T`` points, and every recurrent
    model steps through each of them.
    """
    if cfg.layout != "auto":
        return cfg.layout
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

    probe = IrregularTimeSeriesDataModule(**_source_kwargs(cfg, df), task="interpolation", seed=cfg.seed,
                                          layout="padded", scaler=cfg.scaler, time_scale=cfg.time_scale)
    probe.setup()
    n_unique = len(np.unique(probe.table.times))
    longest = int(np.max(probe.arrays.counts))
    return "union" if n_unique <= 2 * longest else "padded"


def scored_tasks(cfg: BenchmarkConfig) -> tuple[str, ...]:
    """The test tasks of a run: interpolation and extrapolation; plus forecast when training on forecast
    windows — alone under a split by time, where every series is in training (see the module docstring)."""
    if cfg.task != "forecast":
        return ("interpolation", "extrapolation")
    return ("forecast",) if (cfg.split_by or "time") == "time" else TASKS


def make_datamodules(cfg: BenchmarkConfig, df: pd.DataFrame | None, layout: str) -> dict[str, Any]:
    """One data module per task that is trained on or scored, sharing series, split, scaler and seed."""
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

    out = {}
    for task in TASKS:
        if task != cfg.task and task not in scored_tasks(cfg):
            continue
        extra = dict(horizon=cfg.horizon, context=cfg.context, windows_per_series=cfg.windows_per_series,
                     split_by=cfg.split_by) if task == "forecast" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # series without points on both sides of a cut
            dm = IrregularTimeSeriesDataModule(
                **_source_kwargs(cfg, df), task=task, obs_fraction=cfg.obs_fraction, cut=cfg.cut,
                extrap_obs_fraction=cfg.extrap_obs_fraction, layout=layout, batch_size=cfg.batch_size,
                seed=cfg.seed, scaler=cfg.scaler, time_scale=cfg.time_scale, season=cfg.season, **extra,
            )
            dm.setup()
        out[task] = dm
    return out


# ------------------------------------------------------------------------------------------- training
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _epoch_timer(device: str):
    from lightning.pytorch import Callback

    class EpochTimer(Callback):
        """Wall time of each training epoch (no validation runs inside it) and per-epoch loss / NFE means."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []
            self.nfes: list[float] = []
            self._t0 = 0.0
            self._loss: list[float] = []
            self._nfe: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._loss, self._nfe = [], []
            _sync(device)
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self._loss.append(float(loss.detach()))
            self._nfe.append(float(getattr(pl_module.model, "last_nfe", 0.0) or 0.0))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            _sync(device)
            self.times.append(time.perf_counter() - self._t0)
            self.losses.append(float(np.mean(self._loss)) if self._loss else math.nan)
            self.nfes.append(float(np.mean(self._nfe)) if self._nfe else math.nan)

    return EpochTimer()


def module_options(cfg: BenchmarkConfig, name: str, input_dim: int) -> dict[str, Any]:
    """ForecastingModule keyword arguments of benchmark model ``name`` (the baselines have rows of their own, so
    a model's test run scores no baselines)."""
    from ts_neuralode.models.evolution_config import merge_options

    return merge_options({"eval_samples": 1, "baselines": []}, cfg.model_options, MODEL_SPECS[name],
                         cfg.model_overrides.get(name, {}), {"input_dim": input_dim})


def _eval_trainer(cfg: BenchmarkConfig, **kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(max_epochs=cfg.epochs, accelerator=cfg.device, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, deterministic=False, **kwargs)


def score_tasks(cfg: BenchmarkConfig, trainer, module_for, dms: dict[str, Any], row: dict[str, Any]) -> None:
    """``row[<task>_mse]`` for every scored task: ``trainer.test`` of ``module_for(dm)`` on that task's data."""
    for task in scored_tasks(cfg):
        prefix, key = SCORES[task]
        row[f"{prefix}_mse"] = _test_metric(trainer, module_for(dms[task]), dms[task], key)


def add_skill(row: dict[str, Any], reference: dict[str, Any] | None) -> None:
    """``row[<task>_skill]`` = its MSE / the reference (LOCF) row's, for every task column."""
    from ts_neuralode.metrics import skill

    for prefix, _ in SCORES.values():
        ref = reference.get(f"{prefix}_mse", math.nan) if reference else math.nan
        row[f"{prefix}_skill"] = skill(row.get(f"{prefix}_mse", math.nan), ref)


def benchmark_baseline(cfg: BenchmarkConfig, name: str, dms: dict[str, Any]) -> dict[str, Any]:
    """Score naive baseline ``name`` like a model (``trainer.test`` of a ForecastingModule around it): nothing to
    train, so no epoch time; latency of ``predict`` on the first scored task's test batches."""
    from ts_neuralode.lightning import ForecastingModule

    row: dict[str, Any] = {c: math.nan for c in COLUMNS}
    row.update(model=name, family="baseline", evolution="-", method="-", params=0, error="")
    first = dms[scored_tasks(cfg)[0]]

    def module_for(dm):
        return ForecastingModule(model=name, input_dim=dm.num_channels, baselines=[], eval_samples=1,
                                 season_period=dm.season_period)

    score_tasks(cfg, _eval_trainer(cfg), module_for, dms, row)
    lat, nfe = measure_latency(module_for(first).model, first.test_dataloader(), cfg.latency_reps, cfg.device)
    row["latency_p50_ms"] = float(np.percentile(lat, 50) * 1e3)
    row["latency_p95_ms"] = float(np.percentile(lat, 95) * 1e3)
    row["infer_nfe"] = nfe
    return row


@torch.no_grad()
def measure_latency(model: torch.nn.Module, loader, reps: int, device: str) -> tuple[list[float], float]:
    """Seconds per test batch for ``model.predict`` (1 warm-up pass, then ``reps`` passes); mean NFE."""
    batches = [b.to(device) for b in loader]
    model.eval()
    for b in batches:  # warm-up (allocator, lazy init)
        model.predict(b, num_samples=1)
    times, nfes = [], []
    for _ in range(reps):
        for b in batches:
            _sync(device)
            t0 = time.perf_counter()
            model.predict(b, num_samples=1)
            _sync(device)
            times.append(time.perf_counter() - t0)
            nfes.append(float(model.last_nfe))
    return times, float(np.mean(nfes)) if nfes else math.nan


def _test_metric(trainer, module, dm, key: str) -> float:
    res = trainer.test(module, datamodule=dm, verbose=False)
    value = res[0].get(key) if res else None
    return float(value) if value is not None else math.nan


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def benchmark_model(cfg: BenchmarkConfig, name: str, dms: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """Train and score one model; returns its result row and per-epoch history."""
    import lightning.pytorch as pl

    from ts_neuralode.lightning import ForecastingModule

    spec = MODEL_SPECS[name]
    row: dict[str, Any] = {c: math.nan for c in COLUMNS}
    row.update(model=name, family=spec["model"], evolution=spec["evolution"],
               method=spec.get("method", "-") if spec["evolution"] == "ode" else "-", epochs=cfg.epochs, error="")
    history: dict[str, list[float]] = {"epoch_time_s": [], "train_loss": [], "train_nfe": []}
    train_dm = dms[cfg.task]
    pl.seed_everything(cfg.seed if cfg.train_seed is None else cfg.train_seed, verbose=False)
    opts = module_options(cfg, name, train_dm.num_channels)
    module = ForecastingModule(**opts)
    row["params"] = int(sum(p.numel() for p in module.model.parameters() if p.requires_grad))
    timer = _epoch_timer(cfg.device)
    trainer = _eval_trainer(cfg, gradient_clip_val=cfg.gradient_clip, callbacks=[timer])
    try:
        trainer.fit(module, datamodule=train_dm)
        history.update(epoch_time_s=timer.times, train_loss=timer.losses, train_nfe=timer.nfes)
        if timer.times:
            row["epoch_time_s"] = statistics.median(timer.times)
            row["epoch_time_min_s"] = min(timer.times)
            row["train_time_s"] = float(sum(timer.times))
            row["final_train_loss"] = timer.losses[-1]
            row["train_nfe"] = timer.nfes[-1]
        module.eval()
        score_tasks(cfg, trainer, lambda dm: module, dms, row)
        model = module.model.to(cfg.device)
        lat, nfe = measure_latency(model, dms[scored_tasks(cfg)[0]].test_dataloader(), cfg.latency_reps, cfg.device)
        row["latency_p50_ms"] = float(np.percentile(lat, 50) * 1e3)
        row["latency_p95_ms"] = float(np.percentile(lat, 95) * 1e3)
        row["infer_nfe"] = nfe
    except SolverError as err:
        history.update(epoch_time_s=timer.times, train_loss=timer.losses, train_nfe=timer.nfes)
        row["error"] = "SolverError: " + " ".join(str(err).split())[:200]
    return row, history


# ---------------------------------------------------------------------------------------------- output
def _fmt(value: Any, col: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if col in ("params", "epochs"):
        return f"{int(value):,}"
    if col.endswith("_mse"):
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    if col.endswith("_skill"):
        return f"{value:.3g}" if abs(value) >= 1e3 else f"{value:.3f}"
    if col.endswith("_nfe"):
        return f"{value:.1f}"
    if col.endswith("_ms"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def markdown_table(df: pd.DataFrame, columns: Sequence[tuple[str, str]] = _MD_COLUMNS) -> str:
    """A GitHub markdown table of the result frame (an ``error`` column is added when a model failed; MSE and
    skill columns of tasks no row was scored on are left out)."""
    cols = [(c, h) for c, h in columns
            if c not in _MD_OPTIONAL or (c in df and pd.to_numeric(df[c], errors="coerce").notna().any())]
    if "error" in df and df["error"].fillna("").astype(str).str.len().gt(0).any():
        cols.append(("error", "error"))
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c), c) for c, _ in cols) + " |")
    return "\n".join(lines)


def plot_time_vs_mse(df: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Scatter of median training epoch time (x) against test MSE (y), log-log; one colour per model,
    circles for interpolation and triangles for extrapolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    cmap = plt.get_cmap("tab10")
    plotted = False
    for i, (_, r) in enumerate(df.iterrows()):
        x = r.get("epoch_time_s")
        for col, marker, label in (("interp_mse", "o", "interp"), ("extrap_mse", "^", "extrap")):
            y = r.get(col)
            if x is None or y is None or not (np.isfinite(x) and np.isfinite(y)) or x <= 0 or y <= 0:
                continue
            ax.scatter([x], [y], color=cmap(i % 10), marker=marker, s=60,
                       label=f"{r['model']} ({label})")
            ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
            plotted = True
    if plotted:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no finite results", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training time per epoch, median [s]")
    ax.set_ylabel("test MSE (o interpolation, ^ extrapolation)")
    ax.set_title(title or "epoch time vs test MSE")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(cfg: BenchmarkConfig, layout: str, dms: dict[str, Any]) -> str:
    """One paragraph saying what was run (data, split, tasks, budget, machine)."""
    dm = dms[cfg.task]
    src = f"synthetic `{cfg.dataset}` ({cfg.n_series} series)" if cfg.dataset else f"`{cfg.path}`"
    n = {k: len(dm.split[k]) for k in ("train", "val", "test")}
    shared = {k: v for k, v in cfg.model_options.items()}
    if cfg.task == "forecast":
        how = "by time (every series in each; test = its last horizon)" if dm.split_by == "time" else "by series"
        task = (f"forecast windows (horizon {cfg.horizon}, context {cfg.context or 'all history'}, "
                f"{dm.train_items_per_epoch} training windows per epoch; split {how})")
    else:
        task = f"{cfg.task} (obs_fraction {cfg.obs_fraction}, cut {cfg.cut})"
    what = {"interpolation": "interp = held-out points of the interpolation task",
            "extrapolation": "extrap = points after the cut of the extrapolation task",
            "forecast": "forecast = the last horizon of each test series"}
    return (
        f"Data: {src}, {dm.num_channels} channel(s), split train/val/test = {n['train']}/{n['val']}/{n['test']} "
        f"series, layout {layout}, scaler {cfg.scaler}. Training task: {task}; {cfg.epochs} epoch(s), batch "
        f"{cfg.batch_size}, seed {cfg.seed}, gradient clip {cfg.gradient_clip}, model options {shared or 'defaults'}. "
        f"Test MSE in {'data' if cfg.scaler == 'none' else 'model (scaled)'} units on the test split: "
        f"{'; '.join(what[t] for t in scored_tasks(cfg))}. Baseline rows (no training) are naive forecasts scored "
        f"by the same code; skill = MSE / the LOCF row's MSE of the same task (< 1: better than LOCF). "
        f"Device {cfg.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)."
    )


# --------------------------------------------------------------------------------------------- MLflow
class _Tracker:
    """Parent run + one nested run per model, written with MlflowClient between models (never while timed)."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str | None, params: dict) -> None:
        from mlflow.tracking import MlflowClient

        from ts_neuralode.tracking import resolve_tracking_uri

        self.uri = resolve_tracking_uri(tracking_uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(self.exp_id, run_name=run_name or "benchmark",
                                         tags={"ts_neuralode.subcommand": "benchmark"})
        except Exception as err:  # MlflowException, sqlalchemy errors: a user-fixable URI problem
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"--tracking_uri {self.uri}: cannot open the MLflow store ({first}); pass a "
                              "writable sqlite:///FILE.db or a reachable server URL, or --no_tracking") from err
        self.parent_id = run.info.run_id
        self._log(self.parent_id, params=params)

    def _log(self, run_id: str, params: dict | None = None, metrics: dict | None = None,
             history: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ps = [Param(k, str(v)[:250]) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
              if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for key, values in (history or {}).items():
            ms += [Metric(f"epoch/{key}", float(v), now, step) for step, v in enumerate(values) if math.isfinite(v)]
        for i in range(0, len(ps), 100):  # MLflow's per-call limits: 100 params, 1000 metrics
            self.client.log_batch(run_id, params=ps[i:i + 100])
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i:i + 1000])

    def child(self, name: str, params: dict, row: dict, history: dict) -> str:
        run = self.client.create_run(self.exp_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.parent_id, "ts_neuralode.subcommand": "benchmark",
                                           "ts_neuralode.benchmark_model": name})
        metrics = {k: v for k, v in row.items() if k not in ("model", "family", "evolution", "method", "error")}
        self._log(run.info.run_id, params=params, metrics=metrics, history=history)
        if row.get("error"):
            self.client.set_tag(run.info.run_id, "ts_neuralode.error", row["error"][:5000])
        self.client.set_terminated(run.info.run_id, "FAILED" if row.get("error") else "FINISHED")
        return run.info.run_id

    def finish(self, files: Sequence[Path], status: str = "FINISHED") -> None:
        for f in files:
            if Path(f).is_file():
                self.client.log_artifact(self.parent_id, str(f))
        self.client.set_terminated(self.parent_id, status)


# ------------------------------------------------------------------------------------------------ run
@dataclass
class BenchmarkResult:
    table: pd.DataFrame
    histories: dict[str, dict]
    description: str
    layout: str
    parent_run_id: str | None = None
    child_run_ids: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    tracking: bool = False,
    tracking_uri: str | None = None,
    experiment_name: str = "ts_neuralode_benchmark",
    run_name: str | None = None,
    progress: bool = True,
    artifacts: Callable[[BenchmarkResult], Sequence[Path]] | None = None,
) -> BenchmarkResult:
    """Train and score every model of ``cfg`` and score its baselines (see the module docstring); optionally
    track in MLflow. The table lists the models, then the baselines (scored first: a model's row, and its MLflow
    run, carries its skill against LOCF as soon as it is done).

    ``artifacts(result)`` is called before the parent run closes and returns files to attach to it.
    """
    cfg.validate()
    _quiet_lightning()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    df = load_frame(cfg)
    layout = choose_layout(cfg, df)
    dms = make_datamodules(cfg, df, layout)
    desc = describe(cfg, layout, dms)
    tracker = None
    if tracking:
        params = {k: v for k, v in asdict(cfg).items() if k not in ("model_overrides",)}
        params["models"] = ",".join(cfg.models)
        params["layout_used"] = layout
        tracker = _Tracker(tracking_uri, experiment_name, run_name, params)
    result = BenchmarkResult(pd.DataFrame(columns=list(COLUMNS)), {}, desc, layout,
                             parent_run_id=tracker.parent_id if tracker else None,
                             tracking_uri=tracker.uri if tracker else None)
    from tqdm.auto import tqdm

    from ts_neuralode.models.baselines import REFERENCE, baseline_names

    baselines = baseline_names(cfg.baselines, cfg.season)
    rows, base_rows = [], []
    bar = tqdm(baselines + list(cfg.models), desc="benchmark", unit="model", disable=not progress, file=sys.stderr)
    status = "FAILED"
    try:
        for name in bar:
            bar.set_postfix_str(name)
            if name in baselines:
                row, history = benchmark_baseline(cfg, name, dms), {}
                params = {"model": name, "family": "baseline", "season": cfg.season}
                base_rows.append(row)
            else:
                row, history = benchmark_model(cfg, name, dms)
                params = dict(module_options(cfg, name, dms[cfg.task].num_channels))
                rows.append(row)
            add_skill(row, next((r for r in base_rows if r["model"] == REFERENCE), None))
            result.histories[name] = history
            if row["error"]:
                print(f"{PROG}: {name} failed: {row['error']}", file=sys.stderr)
            if tracker is not None:
                result.child_run_ids[name] = tracker.child(name, params, row, history)
        result.table = pd.DataFrame(rows + base_rows, columns=list(COLUMNS))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        if tracker is not None:
            files = artifacts(result) if (artifacts is not None and status == "FINISHED") else []
            tracker.finish(files, status)
    return result


def write_outputs(result: BenchmarkResult, out_csv: str | Path, command: str, title: str = "",
                  plot: str | Path | None = None) -> tuple[Path, Path, Path]:
    """CSV, PNG chart and markdown (command, description, table) beside each other; returns their paths."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out_csv, index=False)
    png = Path(plot) if plot else out_csv.with_suffix(".png")
    plot_time_vs_mse(result.table, png, title)
    md = write_report(out_csv.with_suffix(".md"), title or "ts-neuralode benchmark", command,
                      [result.description, markdown_table(result.table), f"![epoch time vs test MSE]({png.name})"])
    return out_csv, png, md


# ------------------------------------------------------------------------------------------------ CLI
def _float_or_auto(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description="Train Neural ODE and Neural Flow models on the same data, seed and "
                "budget; report parameters, epoch time, latency, NFE and test MSE (table, CSV, PNG, MLflow).")
    src = p.add_argument_group("data (one of --dataset / --data.path)")
    src.add_argument("--dataset", default=None, help="synthetic set (ts-neuralode generate names), e.g. sine")
    src.add_argument("--n_series", type=int, default=1000, help="series of the synthetic set (default 1000)")
    src.add_argument("--n_points", type=int, default=None, help="points per synthetic series (default: the set's)")
    src.add_argument("--data.path", dest="path", default=None, help="CSV file (long or wide format)")
    src.add_argument("--data.format", dest="format", choices=("long", "wide"), default=None)
    src.add_argument("--data.id_col", dest="id_col", default=None)
    src.add_argument("--data.time_col", dest="time_col", default=None)
    src.add_argument("--data.value_cols", dest="value_cols", nargs="+", default=None)
    src.add_argument("--data.mask_cols", dest="mask_cols", nargs="+", default=None)
    src.add_argument("--data.time_unit", dest="time_unit", default=None)
    src.add_argument("--data.duplicates", dest="duplicates", choices=("error", "mean"), default=None)
    src.add_argument("--data.layout", "--layout", dest="layout", choices=LAYOUTS, default="auto",
                     help="auto (union when series share times, else padded)")
    src.add_argument("--data.scaler", "--scaler", dest="scaler", default="standard",
                     choices=("standard", "minmax", "robust", "none"))
    src.add_argument("--data.time_scale", dest="time_scale", type=_float_or_auto, default="auto")
    task = p.add_argument_group("task")
    task.add_argument("--task", "--data.task", dest="task", choices=TASKS, default="interpolation",
                      help="training task (interpolation and extrapolation are both scored; forecast adds its own "
                           "test, see --split_by); default interpolation")
    task.add_argument("--horizon", "--data.horizon", dest="horizon", default=None,
                      help="forecast task: how far after the cutoff targets are scored (e.g. 2D, 52W or a number of "
                           "time units); required with --task forecast")
    task.add_argument("--context", "--data.context", dest="context", default=None,
                      help="forecast task: how much history before the cutoff the models see (default: all)")
    task.add_argument("--windows_per_series", "--data.windows_per_series", dest="windows_per_series",
                      default="auto", help="forecast task: training windows per series per epoch (default auto: "
                                           "about one per horizon of the series)")
    task.add_argument("--split_by", "--data.split_by", dest="split_by", choices=SPLITS, default=None,
                      help="forecast task: hold out the last horizons of every series (time, the default) or whole "
                           "series (series)")
    task.add_argument("--obs_fraction", "--data.obs_fraction", dest="obs_fraction", type=float, default=0.5)
    task.add_argument("--cut", "--data.cut", dest="cut", type=float, default=0.5)
    task.add_argument("--extrap_obs_fraction", "--data.extrap_obs_fraction", dest="extrap_obs_fraction",
                      type=float, default=1.0)
    m = p.add_argument_group("models and budget")
    m.add_argument("--baselines", default=None,
                   help="naive baselines with rows of their own, comma-separated (locf, nearest, linear, mean, "
                        "seasonal) or 'none'; default locf,mean,linear (+ seasonal with --season)")
    m.add_argument("--season", "--data.season", dest="season", default=None,
                   help="period of the seasonal naive baseline: a duration (24h, 365D) or a number of time units")
    m.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma- or space-separated subset of: {', '.join(MODEL_SPECS)} (default: "
                        f"{', '.join(DEFAULT_MODELS)})")
    m.add_argument("--epochs", type=int, default=5)
    m.add_argument("--batch_size", "--data.batch_size", dest="batch_size", type=int, default=50)
    m.add_argument("--seed", type=int, default=0, help="data generation, split, subsampling and model init")
    m.add_argument("--latent_dim", type=int, default=None)
    m.add_argument("--hidden_dim", type=int, default=None)
    m.add_argument("--num_layers", type=int, default=None)
    m.add_argument("--flow_layers", type=int, default=None)
    m.add_argument("--lr", type=float, default=None)
    m.add_argument("--rtol", type=float, default=None)
    m.add_argument("--atol", type=float, default=None)
    m.add_argument("--step_size", type=float, default=None, help="fixed step of rk4 (default: output spacing)")
    m.add_argument("--gradient_clip", type=float, default=1.0)
    m.add_argument("--latency_reps", type=int, default=3)
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    m.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these small models run fastest and least noisily on one "
                        "thread per process, especially on a shared machine; 0 = torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="benchmark.csv", help="CSV path; the PNG and markdown go beside it")
    o.add_argument("--plot", default=None, help="PNG path (default <out stem>.png)")
    o.add_argument("--title", default=None)
    o.add_argument("--tracking_uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    o.add_argument("--experiment_name", default="ts_neuralode_benchmark")
    o.add_argument("--run_name", default=None)
    o.add_argument("--no_tracking", action="store_true", help="do not record MLflow runs")
    o.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    read = {k: getattr(args, k) for k in ("format", "id_col", "time_col", "value_cols", "mask_cols", "time_unit",
                                          "duplicates") if getattr(args, k) is not None}
    if read and args.path is None:
        raise ConfigError(f"--data.{next(iter(read))} applies to a CSV only; pass --data.path FILE.csv too")
    models = tuple(m for m in args.models.replace(",", " ").split() if m)
    shared = {k: getattr(args, k) for k in ("latent_dim", "hidden_dim", "num_layers", "flow_layers", "lr", "rtol",
                                            "atol", "step_size") if getattr(args, k) is not None}
    baselines = None
    if args.baselines is not None:
        baselines = tuple(b for b in args.baselines.replace(",", " ").split() if b and b != "none")
    return BenchmarkConfig(
        dataset=args.dataset, path=args.path, read_options=read, n_series=args.n_series, n_points=args.n_points,
        models=models, task=args.task, horizon=args.horizon, context=args.context,
        windows_per_series=args.windows_per_series, split_by=args.split_by, baselines=baselines, season=args.season,
        obs_fraction=args.obs_fraction, cut=args.cut,
        extrap_obs_fraction=args.extrap_obs_fraction, layout=args.layout, scaler=args.scaler,
        time_scale=args.time_scale, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        model_options=shared, gradient_clip=args.gradient_clip, latency_reps=args.latency_reps,
        device=args.device, threads=args.threads or None,
    )


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``ts-neuralode benchmark ...``; returns the exit status (user errors raise ConfigError/DataError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    cfg.validate()
    command = "ts-neuralode benchmark " + " ".join(shlex.quote(a) for a in argv)
    title = args.title or f"Neural ODE vs Neural Flow — {cfg.dataset or Path(cfg.path).name}"
    out_csv = Path(args.out)
    written: list[Path] = []

    def _artifacts(res: BenchmarkResult) -> list[Path]:
        written.extend(write_outputs(res, out_csv, command, title, args.plot))
        return written

    result = run_benchmark(cfg, tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                           experiment_name=args.experiment_name, run_name=args.run_name,
                           progress=not args.no_progress, artifacts=_artifacts)
    if not written:
        written.extend(write_outputs(result, out_csv, command, title, args.plot))
    print(markdown_table(result.table))
    print(f"\nwrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if result.parent_run_id:
        print(f"MLflow parent run {result.parent_run_id} ({len(result.child_run_ids)} nested) at "
              f"{result.tracking_uri}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(cli_main())


# ------------------------------------------------------------------------------- reproduction scripts
def script_command(script: str, argv: Sequence[str]) -> str:
    """The command line that reproduces a scripts/ run (for the header of its results file)."""
    return " ".join(["python", script, *(shlex.quote(a) for a in argv)])


def write_report(path: str | Path, title: str, command: str, sections: Sequence[str]) -> Path:
    """A results/ markdown file: title, the producing command, then the given sections (paragraphs, tables)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"# {title}", "", "Produced by:", "", "```", command, "```", ""]
    for sec in sections:
        body += [sec.rstrip(), ""]
    path.write_text("\n".join(body))
    return path


def script_parser(doc: str, out: str, seed: int = 0) -> argparse.ArgumentParser:
    """The options every reproduction script shares: --epochs, --n_series, --full, --device, --threads, --seed,
    --out (the defaults of --epochs / --n_series depend on --full; each script documents them)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: see the docstring)")
    p.add_argument("--n_series", type=int, default=None, help="series in the data set (default: see the docstring)")
    p.add_argument("--full", action="store_true", help="the paper's scale (for a GPU machine: --device cuda)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", default=out, help=f"results markdown (default {out})")
    return p

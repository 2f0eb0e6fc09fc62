"""The benchmark run: data modules, training and scoring of each model and baseline, the result table."""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ts_neuralode.api.benchmark.config import (
    COLUMNS,
    MODEL_SPECS,
    PROG,
    SCORES,
    BenchmarkConfig,
    BenchmarkResult,
    scored_tasks,
)
from ts_neuralode.api.benchmark.report import describe
from ts_neuralode.api.benchmark.tracker import BenchmarkTracker
from ts_neuralode.data.batching import auto_layout
from ts_neuralode.data.datamodule import TASKS, IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.models.baselines import REFERENCE, baseline_names
from ts_neuralode.models.evolution_config import merge_options
from ts_neuralode.solvers import SolverError
from ts_neuralode.training import ForecastingModule
from ts_neuralode.training.metrics import skill


# ----------------------------------------------------------------------------------------------- data
def _source_kwargs(cfg: BenchmarkConfig, df: pd.DataFrame | None) -> dict:
    if df is not None:
        return {"df": df}
    return {"path": cfg.path, **cfg.read_options}


def load_frame(cfg: BenchmarkConfig) -> pd.DataFrame | None:
    """The generated data set (None for a CSV, which each data module reads itself)."""
    if cfg.dataset is None:
        return None

    return generate(cfg.dataset, n_series=cfg.n_series, n_points=cfg.n_points, seed=cfg.seed)


def choose_layout(cfg: BenchmarkConfig, df: pd.DataFrame | None) -> str:
    """``auto``: the data module's rule on the data (:func:`~ts_neuralode.data.batching.auto_layout`, as on the
    interpolation task: the benchmark's tasks share one layout)."""
    if cfg.layout != "auto":
        return cfg.layout

    probe = IrregularTimeSeriesDataModule(
        **_source_kwargs(cfg, df),
        task="interpolation",
        seed=cfg.seed,
        layout="padded",
        scaler=cfg.scaler,
        time_scale=cfg.time_scale,
    )
    probe.setup()
    return auto_layout(probe.table.times, probe.arrays.counts, "interpolation")


def make_datamodules(cfg: BenchmarkConfig, df: pd.DataFrame | None, layout: str) -> dict[str, Any]:
    """One data module per task that is trained on or scored, sharing series, split, scaler and seed."""

    out = {}
    for task in TASKS:
        if task != cfg.task and task not in scored_tasks(cfg):
            continue
        extra = (
            dict(
                horizon=cfg.horizon,
                context=cfg.context,
                windows_per_series=cfg.windows_per_series,
                split_by=cfg.split_by,
            )
            if task == "forecast"
            else {}
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # series without points on both sides of a cut
            dm = IrregularTimeSeriesDataModule(
                **_source_kwargs(cfg, df),
                task=task,
                obs_fraction=cfg.obs_fraction,
                cut=cfg.cut,
                extrap_obs_fraction=cfg.extrap_obs_fraction,
                layout=layout,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                scaler=cfg.scaler,
                time_scale=cfg.time_scale,
                season=cfg.season,
                **extra,
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

    return merge_options(
        {"eval_samples": 1, "baselines": []},
        cfg.model_options,
        MODEL_SPECS[name],
        cfg.model_overrides.get(name, {}),
        {"input_dim": input_dim},
    )


def _eval_trainer(cfg: BenchmarkConfig, **kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.device,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=False,
        **kwargs,
    )


def score_tasks(cfg: BenchmarkConfig, trainer, module_for, dms: dict[str, Any], row: dict[str, Any]) -> None:
    """``row[<task>_mse]`` for every scored task: ``trainer.test`` of ``module_for(dm)`` on that task's data."""
    for task in scored_tasks(cfg):
        prefix, key = SCORES[task]
        row[f"{prefix}_mse"] = _test_metric(trainer, module_for(dms[task]), dms[task], key)


def add_skill(row: dict[str, Any], reference: dict[str, Any] | None) -> None:
    """``row[<task>_skill]`` = its MSE / the reference (LOCF) row's, for every task column."""

    for prefix, _ in SCORES.values():
        ref = reference.get(f"{prefix}_mse", math.nan) if reference else math.nan
        row[f"{prefix}_skill"] = skill(row.get(f"{prefix}_mse", math.nan), ref)


def benchmark_baseline(cfg: BenchmarkConfig, name: str, dms: dict[str, Any]) -> dict[str, Any]:
    """Score naive baseline ``name`` like a model (``trainer.test`` of a ForecastingModule around it): nothing to
    train, so no epoch time; latency of ``predict`` on the first scored task's test batches."""

    row: dict[str, Any] = {c: math.nan for c in COLUMNS}
    row.update(model=name, family="baseline", evolution="-", method="-", params=0, error="")
    first = dms[scored_tasks(cfg)[0]]

    def module_for(dm):
        return ForecastingModule(
            model=name, input_dim=dm.num_channels, baselines=[], eval_samples=1, season_period=dm.season_period
        )

    score_tasks(cfg, _eval_trainer(cfg), module_for, dms, row)
    record_latency(row, module_for(first).model, cfg, dms)
    return row


def record_latency(row: dict[str, Any], model: torch.nn.Module, cfg: BenchmarkConfig, dms: dict[str, Any]) -> None:
    """``row``'s latency percentiles and inference NFE: ``model.predict`` on the first scored task's test batches."""
    lat, nfe = measure_latency(model, dms[scored_tasks(cfg)[0]].test_dataloader(), cfg.latency_reps, cfg.device)
    row.update(
        latency_p50_ms=float(np.percentile(lat, 50) * 1e3),
        latency_p95_ms=float(np.percentile(lat, 95) * 1e3),
        infer_nfe=nfe,
    )


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

    spec = MODEL_SPECS[name]
    row: dict[str, Any] = {c: math.nan for c in COLUMNS}
    row.update(
        model=name,
        family=spec["model"],
        evolution=spec["evolution"],
        method=spec.get("method", "-") if spec["evolution"] == "ode" else "-",
        epochs=cfg.epochs,
        error="",
    )
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
        if timer.times:
            row["epoch_time_s"] = statistics.median(timer.times)
            row["epoch_time_min_s"] = min(timer.times)
            row["train_time_s"] = float(sum(timer.times))
            row["final_train_loss"] = timer.losses[-1]
            row["train_nfe"] = timer.nfes[-1]
        module.eval()
        score_tasks(cfg, trainer, lambda dm: module, dms, row)
        record_latency(row, module.model.to(cfg.device), cfg, dms)
    except SolverError as err:
        row["error"] = "SolverError: " + " ".join(str(err).split())[:200]
    finally:
        history.update(epoch_time_s=timer.times, train_loss=timer.losses, train_nfe=timer.nfes)
    return row, history


# ------------------------------------------------------------------------------------------------ run
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

    Args:
        cfg: the benchmark's settings.
        tracking: record an MLflow parent run (params: the shared settings; artifacts) with one nested run per
            model and baseline.
        tracking_uri: MLflow tracking URI (None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
        experiment_name: MLflow experiment of the runs.
        run_name: name of the parent run (None: benchmark).
        progress: show a progress bar on stderr.
        artifacts: ``artifacts(result)`` is called before the parent run closes and returns files to attach to it.

    ``ts-neuralode benchmark`` reads its options ``tracking`` ... ``progress`` from this signature.
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
        tracker = BenchmarkTracker(tracking_uri, experiment_name, run_name, params)
    result = BenchmarkResult(
        pd.DataFrame(columns=list(COLUMNS)),
        {},
        desc,
        layout,
        parent_run_id=tracker.parent_id if tracker else None,
        tracking_uri=tracker.uri if tracker else None,
    )
    from tqdm.auto import tqdm

    season = getattr(dms[cfg.task], "resolved_season", cfg.season)  # "auto": the period the data module chose
    baselines = baseline_names(cfg.baselines, season)
    rows, base_rows = [], []
    bar = tqdm(baselines + list(cfg.models), desc="benchmark", unit="model", disable=not progress, file=sys.stderr)
    status = "FAILED"
    history: dict[str, Any]  # per-epoch records of a trained model (none for a baseline)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            if name in baselines:
                row, history = benchmark_baseline(cfg, name, dms), {}
                params = {"model": name, "family": "baseline", "season": season}
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

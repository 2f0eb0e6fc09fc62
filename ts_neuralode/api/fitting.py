"""Training, the one code path of ``ts-neuralode fit``, :meth:`Forecaster.fit
<ts_neuralode.api.forecaster.Forecaster.fit>` and the backtest's refits.

:func:`train` takes the resolved options of a fit (a jsonargparse Namespace from the parser of
:mod:`ts_neuralode.training.options`, which declares them once) and builds the pieces itself: the data module
(from the file of ``data.path`` or from a DataFrame held in memory), the model (its input size, seasonal period
and covariates linked from the fitted data module), the callbacks (training guard, model export, the best and
``last`` checkpoints, MLflow tracking, the caller's own), the MLflow logger and the Trainer; it resumes from
``ckpt_path`` (a file or ``last``) and runs ``Trainer.fit``. It prints one line, at the fit's start, saying what
each column is used as (:class:`ColumnSummary`); the CLI prints the :class:`FitResult`. :func:`fit` resolves the Python
arguments into those options and returns the fitted
:class:`~ts_neuralode.api.forecaster.Forecaster`::

    fc = Forecaster.fit("data/demo.csv", "configs/demo.yaml", trainer={"max_epochs": 3}, tracking=False)
    fc = Forecaster.fit(df, "ode_rnn", data_options={"future_cols": ["rate"]},
                        model_options={"evolution": {"kind": "gru_flow"}}, trainer={"max_epochs": 20},
                        callbacks=[my_pruning_callback], tracking_uri="sqlite:///mlflow.db", experiment_name="pk")

Design: LightningCLI stays the *parser* of ``fit`` (its signature-generated ``--model.*``, ``--data.*``,
``--trainer.*`` options, ``--config`` files, ``--print_config``) but no longer runs anything; the classes are
instantiated here from the parsed config, so the CLI, the API and the refits share one implementation and the
library never calls the command line.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MethodType
from typing import Any

import pandas as pd
import torch
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, instantiate_class

from ts_neuralode.api import preflight
from ts_neuralode.api.export import ModelExportCallback
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.core.atomic import atomic_write_text
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow import tracking
from ts_neuralode.integrations.mlflow.fit_tracking import tracking_parts
from ts_neuralode.training.callbacks import TrainingGuard
from ts_neuralode.training.checkpoints import (
    TRAIN_MONITOR,
    VAL_MONITOR,
    checkpoint_callbacks,
    has_validation_series,
    progress_bar,
    with_atomic_checkpoints,
)
from ts_neuralode.training.multinode import check_launch
from ts_neuralode.training.options import check_model_options, fit_options, merge_options


@dataclass
class FitResult:
    """What a fit produced (every path is local; ``run_id`` None when nothing was tracked)."""

    model_dir: Path
    checkpoint_dir: Path
    best_checkpoint: str
    model_dir_written: Path | None
    run_id: str | None
    tracking_uri: str | None
    tracking_failed: bool
    monitor: str
    best_score: float
    is_global_zero: bool
    config: dict = field(default_factory=dict)
    #: what the model export and the tracking callback report, when they do (a calibration summary, a models:/ URI)
    calibration_line: str | None = None
    model_uri: str | None = None
    #: the correction weight chosen on the validation windows and its relative errors (correction_gate), if any
    correction_gate: dict | None = None


# -- resolving the options --------------------------------------------------------------------------------------
def _parse_error(what: str, err: BaseException) -> ConfigError:
    return ConfigError(f"{what}: {' '.join(str(err).split())}")


def resolve_config(
    model: str | os.PathLike | None = None,
    *,
    data_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    fit_args: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    what: str = "Forecaster.fit",
):
    """(parser, config) of a fit: the command-line options ``fit_args`` (e.g. ``["--config", "configs/demo.yaml"]``),
    then ``model`` (a model name, or a config file), then the option dicts, then ``overrides`` (top-level options
    such as ``{"tracking": False}``), each overriding the ones before."""
    check_model_options(model_options)
    try:
        parser, cfg = fit_options(list(fit_args))
        if model is not None:
            m = str(model)
            if m.endswith((".yaml", ".yml", ".json")) or Path(m).is_file():
                if not Path(m).is_file():
                    raise ConfigError(
                        f"model={m!r}: config file not found; pass a model name (latent_ode, ode_rnn, "
                        "gru_ode) or the path of a config such as configs/ode_rnn.yaml"
                    )
                _, cfg = fit_options([*fit_args, "--config", m])
            else:
                cfg = merge_options(parser, cfg, {"model": {"model": m}})
        groups = {"data": data_options, "model": model_options, "trainer": trainer}
        nested = {k: dict(v) for k, v in groups.items() if v}
        if nested:
            cfg = merge_options(parser, cfg, nested)
        if overrides:
            cfg = merge_options(parser, cfg, dict(overrides))
    except argparse.ArgumentError as err:  # jsonargparse: an unknown or ill-typed option
        raise _parse_error(what, err) from err
    return parser, cfg


# -- training ---------------------------------------------------------------------------------------------------
def _checkpoint_hparams(parser, cfg, ckpt: str):
    """Lightning's ``--ckpt_path`` rule: the model options stored in the checkpoint replace the config's."""
    hparams = torch.load(ckpt, weights_only=True, map_location="cpu").get("hyper_parameters", {}) or {}
    hparams = {k: v for k, v in hparams.items() if k not in ("_instantiator", "_class_path")}
    if not hparams:
        return cfg
    return merge_options(parser, cfg, {"model": hparams})


def _resume(parser, cfg, ckpt_dir: Path):
    """Resolve ``ckpt_path`` (``last``, a file) in ``cfg``; returns (cfg, MLflow run id to continue or None)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt and Path(ckpt).is_file():
        preflight.checkpoint_file(ckpt)  # a damaged or foreign file is one line instead of torch's traceback
        cfg = _checkpoint_hparams(parser, cfg, ckpt)
    if ckpt == "last":
        last = ckpt_dir / "last.ckpt"
        if last.is_file():
            cfg.ckpt_path = str(last)
        else:
            warnings.warn(f"--ckpt_path last: no {last} yet; training from scratch", stacklevel=1)
            cfg.ckpt_path = None
    elif ckpt not in (None, "best", "hpc", "registry") and not Path(ckpt).is_file():
        raise ConfigError(
            f"--ckpt_path {ckpt}: checkpoint file not found; pass the path of a .ckpt "
            "file, or 'last' to resume from the checkpoint directory"
        )
    if cfg.get("weights_only") is None:
        cfg.weights_only = True
    run_id = None
    if cfg.get("ckpt_path"):
        run_id = tracking.run_id_from_checkpoint(cfg.ckpt_path)
        if run_id is None:
            run_id = (tracking.read_run_file(Path(cfg.ckpt_path).parent) or {}).get("run_id")
    return cfg, run_id


class BestScore(Callback):
    """The lowest finite value of ``monitor`` seen at the end of a training epoch."""

    def __init__(self, monitor: str) -> None:
        self.monitor, self.best = monitor, math.nan

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        v = trainer.callback_metrics.get(self.monitor)
        if v is not None and math.isfinite(float(v)) and not float(v) >= self.best:
            self.best = float(v)


class ColumnSummary(Callback):
    """One line at the start of every fit (rank 0): what each column of the data is used as (targets, masks,
    covariates, ignored; :attr:`IrregularTimeSeriesDataModule.column_summary`)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if trainer.is_global_zero and dm is not None and hasattr(dm, "column_summary"):
            print(dm.column_summary, file=sys.stderr)


def train(
    parser,
    cfg,
    data: pd.DataFrame | None = None,
    callbacks: Sequence[Any] | None = None,
    forecaster_cls: type[Predictor] = Predictor,
) -> FitResult:
    """Fit the model of the resolved options ``cfg`` (see the module docstring); ``data``: a DataFrame that replaces
    ``data.path`` (read in memory, never written); ``callbacks``: extra Lightning callbacks for the Trainer;
    ``forecaster_cls``: the class the model export builds."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # no "Seed set to 0" noise
    root = Path(cfg.trainer.get("default_root_dir") or os.getcwd())
    ckpt_dir = Path(cfg.get("checkpoint_dir") or root / "checkpoints")
    model_dir = Path(cfg.get("model_dir") or ckpt_dir / "model")
    if data is not None:
        if not isinstance(data, pd.DataFrame):
            raise ConfigError(
                f"data of type {type(data).__name__} is not supported; pass a pandas DataFrame or a CSV/Parquet path"
            )
        cfg.data.path = None
    preflight.lightning_run("fit", cfg, ckpt_dir)  # before any data is read or model built
    if cfg.get("register_as") and not (cfg.get("tracking") and cfg.get("log_model")):
        raise ConfigError(
            f"--register_as {cfg.get('register_as')} registers the model logged to MLflow; it needs "
            "--tracking true and --log_model true"
        )
    cfg, resume_run_id = _resume(parser, cfg, ckpt_dir)
    seed = cfg.get("seed_everything")
    if seed is not False:
        cfg.seed_everything = seed_everything(None if seed is True else seed, workers=True)
    if data is not None:  # the DataFrame goes to the data module as it is (no file in between)
        parser.add_instantiator(
            lambda cls, *a, **kw: cls(*a, **{**kw, "path": None, "df": data}),
            IrregularTimeSeriesDataModule,
            subclasses=False,
        )
    init = parser.instantiate_classes(cfg)
    datamodule, module = init.data, init.model
    _configure_optimizers(parser, init, module)
    trainer_cfg = dict(init.trainer)
    check_launch(trainer_cfg)  # torchrun / srun: the Trainer's nodes x devices must be their world size
    user_cbs = trainer_cfg.pop("callbacks", None) or []
    user_cbs = list(user_cbs) if isinstance(user_cbs, (list, tuple)) else [user_cbs]
    own = [TrainingGuard(ckpt_dir), ModelExportCallback(model_dir, forecaster_cls=forecaster_cls), ColumnSummary()]
    logger, track_cbs = tracking_parts(cfg, "fit", ckpt_dir, resume_run_id)
    if logger is not None:
        trainer_cfg["logger"] = logger
    has_val = has_validation_series(datamodule) and trainer_cfg.get("limit_val_batches") not in (0, 0.0)
    ckpts = []
    if trainer_cfg.get("enable_checkpointing", True) is not False and not any(
        isinstance(c, ModelCheckpoint) for c in user_cbs
    ):
        ckpts = checkpoint_callbacks(ckpt_dir, has_val)
    monitor = VAL_MONITOR if has_val else TRAIN_MONITOR
    best = BestScore(monitor)
    config_cb = []
    if not trainer_cfg.get("fast_dev_run", False):
        config_cb = [tracking.MlflowSaveConfigCallback(parser, cfg, overwrite=True)]
    trainer_cfg["plugins"] = with_atomic_checkpoints(trainer_cfg.get("plugins"))
    # the order LightningCLI used: the config's callbacks, then the project's, then the config recorder
    bar = progress_bar(trainer_cfg, [*user_cbs, *(callbacks or ())])
    trainer = Trainer(
        **trainer_cfg, callbacks=[*user_cbs, *own, *track_cbs, *ckpts, *(callbacks or ()), best, *config_cb, *bar]
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=cfg.get("weights_only"))
    export = own[1]
    cb = track_cbs[0] if track_cbs else None
    ckpt = trainer.checkpoint_callback
    best_path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    score = best.best
    if ckpt is not None and getattr(ckpt, "monitor", None) == monitor and ckpt.best_model_score is not None:
        score = float(ckpt.best_model_score)  # kept across a resume, unlike the epochs seen by this call
    return FitResult(
        model_dir=model_dir,
        checkpoint_dir=ckpt_dir,
        best_checkpoint=best_path or "",
        model_dir_written=export.model_dir_written,
        run_id=cb.run_id if cb is not None else None,
        tracking_uri=cb.tracking_uri if cb is not None else None,
        tracking_failed=any(getattr(lg, "tracking_failed", False) for lg in trainer.loggers),
        monitor=monitor,
        best_score=score,
        is_global_zero=trainer.is_global_zero,
        config=_as_dict(parser, cfg),
        calibration_line=getattr(export, "calibration_line", None),
        model_uri=getattr(cb, "model_uri", None),
        correction_gate=getattr(export, "correction_gate", None),
    )


def _as_dict(parser, cfg) -> dict:
    return yaml.safe_load(parser.dump(cfg, skip_none=False))


def _configure_optimizers(parser, init, module) -> None:
    """``--optimizer`` / ``--lr_scheduler`` (LightningCLI's automatic optimizer options), when given, replace the
    model's own optimizer (``--model.lr``, ``--model.lr_schedule``), as LightningCLI does."""
    opt, sched = init.get("optimizer"), init.get("lr_scheduler")
    if not opt:
        return
    optimizer = instantiate_class(module.parameters(), opt)
    scheduler = instantiate_class(optimizer, sched) if sched else None
    fn = partial(LightningCLI.configure_optimizers, module, optimizer=optimizer, lr_scheduler=scheduler)
    module.configure_optimizers = MethodType(lambda self: fn(), module)


# -- the API -----------------------------------------------------------------------------------------------------
def forecaster_of(
    result: FitResult, parser, cfg, what: str, reproduce: list[str], forecaster_cls: type[Predictor] = Predictor
):
    """The fitted :class:`Forecaster` of a fit (from the model directory it wrote), ``fit_info`` set."""
    if not (result.model_dir / "config.json").is_file():
        raise ConfigError(f"{what}: the fit wrote no model directory at {result.model_dir} (no fitted weights)")
    fc = forecaster_cls.load(result.model_dir)
    fc.fit_info = {
        "argv": reproduce,
        "config": result.config,
        "model_dir": str(result.model_dir),
        "checkpoint_dir": str(result.checkpoint_dir),
        "best_checkpoint": result.best_checkpoint,
        "run_id": result.run_id,
        "tracking_uri": result.tracking_uri,
        "monitor": result.monitor,
        "best_score": result.best_score,
        "correction_gate": result.correction_gate,
    }
    return fc


def _record_config(parser, cfg, out: Path, data: Any) -> list[str]:
    """Write the resolved options to ``out/config.yaml``; returns the ``ts-neuralode fit`` command line that
    reproduces the fit (a DataFrame: save it as a file and add ``--data.path FILE``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    atomic_write_text(path, parser.dump(cfg, skip_none=False))
    argv = ["fit", "--config", str(path)]
    return argv + (["--data.path", "<the DataFrame, saved as a CSV file>"] if isinstance(data, pd.DataFrame) else [])


def fit(
    data: Any,
    model: str | os.PathLike = "latent_ode",
    *,
    data_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] | None = None,
    output_dir: str | os.PathLike = "ts_neuralode_fit",
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
    log_model: bool = True,
    seed: int | None = 0,
    what: str = "Forecaster.fit",
    forecaster_cls: type[Predictor] = Predictor,
):
    """Train like ``ts-neuralode fit`` and return the fitted :class:`~ts_neuralode.api.forecaster.Forecaster` (see
    :meth:`Forecaster.fit <ts_neuralode.api.forecaster.Forecaster.fit>` for the arguments)."""
    if not isinstance(data, (pd.DataFrame, str, os.PathLike)):
        raise ConfigError(f"data of type {type(data).__name__} is not supported; pass a pandas DataFrame or a CSV path")
    out = Path(output_dir)
    top: dict[str, Any] = {
        "checkpoint_dir": str(out / "checkpoints"),
        "model_dir": str(out / "model"),
        "tracking": bool(tracking),
        "log_model": bool(log_model),
    }
    if seed is not None:
        top["seed_everything"] = int(seed)
    for name, val in (("tracking_uri", tracking_uri), ("experiment_name", experiment_name), ("run_name", run_name)):
        if val is not None:
            top[name] = str(val)
    trainer = {**(trainer or {}), "default_root_dir": str(out)}
    data_options = dict(data_options or {})
    if not isinstance(data, pd.DataFrame):
        data_options["path"] = str(data)
    parser, cfg = resolve_config(
        model, data_options=data_options, model_options=model_options, trainer=trainer, overrides=top, what=what
    )
    frame = data if isinstance(data, pd.DataFrame) else None
    if frame is not None:
        cfg.data.path = None
    reproduce = _record_config(parser, cfg, out, data)
    result = train(parser, cfg, frame, callbacks, forecaster_cls)
    return forecaster_of(result, parser, cfg, what, reproduce, forecaster_cls)


def refit(
    fit_args: Sequence[str],
    data: pd.DataFrame,
    workdir: str | os.PathLike,
    callbacks=None,
    forecaster_cls: type[Predictor] = Predictor,
):
    """A new :class:`Forecaster` trained on ``data`` (in memory) with the ``ts-neuralode fit`` options ``fit_args``
    (e.g. ``["--config", "configs/demo.yaml", "--trainer.max_epochs", "20"]``): no MLflow run, checkpoints and the
    model directory under ``workdir``, the seed of ``fit_args`` (or its config)."""
    out = Path(workdir)
    what = f"refit (fit options {' '.join(fit_args)})"
    overrides = {
        "trainer": {"default_root_dir": str(out)},
        "checkpoint_dir": str(out / "checkpoints"),
        "model_dir": str(out / "model"),
        "tracking": False,
        "log_model": False,
    }
    parser, cfg = resolve_config(fit_args=fit_args, overrides=overrides, what=what)
    cfg.data.path = None
    reproduce = _record_config(parser, cfg, out, data)
    return forecaster_of(
        train(parser, cfg, data, callbacks, forecaster_cls), parser, cfg, what, reproduce, forecaster_cls
    )


def run_fit(
    argv: Sequence[str], model_dir: Path | None = None, what: str = "fit", forecaster_cls: type[Predictor] = Predictor
):
    """Train from a ``ts-neuralode fit`` command line (``argv``, with or without the word ``fit``) and return the
    fitted forecaster (``model_dir``: where it expects the model directory; default: the one the options name)."""
    args = list(argv)[1:] if list(argv)[:1] == ["fit"] else list(argv)
    parser, cfg = resolve_config(fit_args=args, what=what)
    result = train(parser, cfg, forecaster_cls=forecaster_cls)
    if model_dir is not None and Path(model_dir) != result.model_dir:
        raise ConfigError(f"{what}: the fit wrote its model directory to {result.model_dir}, not {model_dir}")
    return forecaster_of(result, parser, cfg, what, ["fit", *args], forecaster_cls)


__all__ = ["FitResult", "fit", "refit", "resolve_config", "run_fit", "train"]

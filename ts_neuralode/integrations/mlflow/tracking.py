"""MLflow tracking for ``ts-neuralode fit`` (and validate/test).

Where runs go:

* ``--tracking_uri URI`` if given, else ``$MLFLOW_TRACKING_URI``, else a sqlite store ``mlflow.db`` in the
  working directory (``sqlite:///<abs path>/mlflow.db``, MLflow's own default since 3.7). The URI is always
  passed explicitly to Lightning's :class:`MLFlowLogger`, which would otherwise fall back to the ``./mlruns``
  file store (an error on MLflow >= 3.13).

What a fit records (rank 0 only; other DDP ranks never touch MLflow):

* params: the model's and data module's hyperparameters (Lightning logs them), ``seed_everything`` and the
  main trainer options (``trainer/max_epochs``, ``trainer/devices``, ``trainer/strategy`` …);
* ``config.yaml``: the full resolved LightningCLI config (:class:`MlflowSaveConfigCallback`);
* per-epoch metrics with ``step = epoch`` under ``epoch/…``: ``train_loss`` (mean over the epoch's batches;
  under DDP over every rank's batches),
  every validation metric the module logs (loss, interpolation / extrapolation MSE, function evaluations …)
  and ``epoch_time_s`` (training time of the epoch, validation excluded);
* artifacts at the end of the fit: the best checkpoint (``checkpoints/``), the reloadable model directory of
  :class:`ts_neuralode.api.forecaster.Forecaster` (``model/``: weights + JSON config, no pickles), the same model as
  an MLflow pyfunc model (logged model ``forecaster``, :mod:`ts_neuralode.integrations.mlflow.logged_model`; registered
  with
  ``--register_as NAME``) and forecast plots of a few validation series (``plots/``);
* the experiment is tagged as a forecasting one (``mlflow.experimentKind``) unless it has another kind already;
* the MLflow model is logged at the best checkpoint's epoch (its ``step``), so the Logged Models page shows that
  epoch's metrics; its ``models:/`` URI is ``model_uri`` (``fit`` prints it).

Resuming: the run id is stored in every checkpoint (this callback's state) and in ``mlflow_run.json`` beside the
checkpoints, so ``fit --ckpt_path last`` continues the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.tracking
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ts_neuralode.core.atomic import read_json
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow.io import MAX_PARAM_LENGTH
from ts_neuralode.training.callbacks import find_logger
from ts_neuralode.training.module import clean_hparams

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
RUN_FILE = "mlflow_run.json"
EPOCH_PREFIX = "epoch/"
TRAINER_PARAMS = (
    "max_epochs",
    "accelerator",
    "devices",
    "strategy",
    "precision",
    "gradient_clip_val",
    "accumulate_grad_batches",
)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    A bare filesystem path ending in ``.db`` is turned into a sqlite URI, and a relative sqlite path
    (``sqlite:///runs/mlflow.db``) into an absolute one, so that the URI recorded for a run (``mlflow_run.json``,
    the printed ``mlflow ui`` command) works from any directory. The plain-directory file store (``./mlruns``)
    is refused with a hint, since MLflow >= 3.13 rejects it anyway.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return "sqlite:///" + str(Path(DEFAULT_DB).resolve())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and ":" not in uri.split("/")[0]:
        if uri.endswith(".db"):
            return "sqlite:///" + str(Path(uri).resolve())
        raise ConfigError(
            f"tracking URI {uri!r} is a directory (the MLflow file store, rejected by MLflow >= 3.13); "
            f"use a sqlite file (e.g. --tracking_uri sqlite:///mlflow.db) or a server URL (http://host:port)"
        )
    return uri


class TrackingLogger(MLFlowLogger):
    """:class:`MLFlowLogger` that tolerates resumed runs and a tracking store that goes away.

    MLflow refuses to change a param's value within a run. When a fit resumes into its old run with, say, a
    larger ``max_epochs``, the params already present keep their first value and a warning names them.

    Tracking never stops training: the first MLflow call that fails (a server that went away, a full disk)
    prints one warning, and from then on this logger and :class:`MlflowTrackingCallback` skip MLflow; the
    checkpoints and the model directory are still written locally. Every MLflow call goes through
    :meth:`safe_call`.
    """

    tracking_failed: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if rank_zero_only.rank == 0:
            super().__init__(*args, **kwargs)
            return
        # Other ranks never call MLflow (Lightning routes every logger call to rank 0), so they open no store:
        # under torchrun / srun all ranks start at once, and two processes creating one fresh sqlite store race on
        # its schema migration ("duplicate column name"). See ts_neuralode.training.multinode.
        real = mlflow.tracking.MlflowClient
        setattr(mlflow.tracking, "MlflowClient", lambda *a, **k: None)  # noqa: B010 (a module attribute, briefly)
        try:
            super().__init__(*args, **kwargs)
        finally:
            setattr(mlflow.tracking, "MlflowClient", real)  # noqa: B010

    def safe_call(self, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None once tracking has failed (the first failure is reported)."""
        if self.tracking_failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException, requests/urllib3 errors, OSError: all mean "store is gone"
            self.tracking_failed = True
            first = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else type(err).__name__
            print(
                f"ts-neuralode: warning: MLflow tracking at {self._tracking_uri} failed ({first[:300]}); "
                "training goes on without it (checkpoints and the model directory are still written locally)",
                file=sys.stderr,
                flush=True,
            )
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.safe_call(super().log_metrics, metrics, step)

    def finalize(self, status: str = "success") -> None:
        self.safe_call(super().finalize, status)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.safe_call(super().after_save_checkpoint, checkpoint_callback)

    def log_hyperparams(self, params: Any) -> None:  # noqa: D102 - see class docstring
        self.safe_call(self._log_hyperparams, params)

    def _log_hyperparams(self, params: Any) -> None:
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank != 0:
            return

        flat = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in _flatten_dict(clean_hparams(_convert_params(params))).items()}
        existing = self.experiment.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("resumed MLflow run keeps its first value of params %s", ", ".join(changed))
        fresh = {k: v for k, v in flat.items() if k not in existing}
        if fresh:
            super().log_hyperparams(fresh)


def resolve_artifact_location(location: str | None) -> str | None:
    """A local path -> absolute ``file://`` URI (so the store works from any directory); URIs unchanged."""
    if not location:
        return None
    if "://" in location:
        return location
    return Path(location).resolve().as_uri()


def make_logger(
    tracking_uri: str | None = None,
    experiment_name: str = "ts_neuralode",
    run_name: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    artifact_location: str | None = None,
) -> TrackingLogger:
    """A :class:`TrackingLogger` on the resolved tracking URI (see :func:`resolve_tracking_uri`).

    ``artifact_location`` is used only when the experiment is created (MLflow's default for a sqlite store is
    ``./mlruns`` of the working directory).
    """
    return TrackingLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=resolve_tracking_uri(tracking_uri),
        run_id=run_id,
        tags=dict(tags or {}),
        artifact_location=resolve_artifact_location(artifact_location),
    )


def tracked(logger: MLFlowLogger, fn, *args: Any, **kwargs: Any) -> Any:
    """Call an MLflow function through the logger's :meth:`TrackingLogger.safe_call` when it has one."""
    safe = getattr(logger, "safe_call", None)
    return safe(fn, *args, **kwargs) if safe is not None else fn(*args, **kwargs)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.detach().float().item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def read_run_file(ckpt_dir: str | os.PathLike) -> dict | None:
    try:
        return read_json(Path(ckpt_dir) / RUN_FILE)
    except (OSError, ValueError):
        return None


def run_id_from_checkpoint(ckpt_path: str | os.PathLike) -> str | None:
    """The MLflow run id stored in a checkpoint by :class:`MlflowTrackingCallback`, if any."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or not weights-only: fall back to the run file
        return None
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "MlflowTrackingCallback" in str(key) and isinstance(state, dict) and state.get("run_id"):
            return str(state["run_id"])
    return None


class MlflowSaveConfigCallback(SaveConfigCallback):
    """Writes the resolved config to MLflow as ``config.yaml`` (and not to a log dir, which MLflow lacks).

    Lightning calls :meth:`save_config` on rank 0 only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = find_logger(trainer)
        if logger is None:
            return
        text = self.parser.dump(self.config, skip_none=False)
        tracked(logger, lambda: logger.experiment.log_text(logger.run_id, text, self.config_filename))
        trainer_cfg = self.config.get("trainer") or {}
        extra = {"seed_everything": self.config.get("seed_everything")}
        for key in TRAINER_PARAMS:
            extra[f"trainer/{key}"] = trainer_cfg.get(key)
        logger.log_hyperparams(extra)

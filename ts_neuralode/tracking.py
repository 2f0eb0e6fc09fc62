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
  :class:`ts_neuralode.forecaster.Forecaster` (``model/``: weights + JSON config, no pickles), the same model as
  an MLflow pyfunc model (logged model ``forecaster``, :mod:`ts_neuralode.mlflow_model`; registered with
  ``--register_as NAME``) and forecast plots of a few validation series (``plots/``);
* the experiment is tagged as a forecasting one (``mlflow.experimentKind``) unless it has another kind already;
* the MLflow model is logged at the best checkpoint's epoch (its ``step``), so the Logged Models page shows that
  epoch's metrics; its ``models:/`` URI is ``model_uri`` (``fit`` prints it).

Resuming: the run id is stored in every checkpoint (this callback's state) and in ``mlflow_run.json`` beside the
checkpoints, so ``fit --ckpt_path last`` continues the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from ts_neuralode.atomic import atomic_write_text
from ts_neuralode.errors import ConfigError, ForecastError, TSNeuralODEError
from ts_neuralode.mlflow_io import log_batch

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
RUN_FILE = "mlflow_run.json"
EPOCH_PREFIX = "epoch/"
TRAIN_KEYS = ("train_loss", "nfe", "batch_time_s")  # per-batch training means of MlflowTrackingCallback
TRAINER_PARAMS = ("max_epochs", "accelerator", "devices", "strategy", "precision", "gradient_clip_val",
                  "accumulate_grad_batches")


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
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
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
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:
            super().__init__(*args, **kwargs)
            return
        # Other ranks never call MLflow (Lightning routes every logger call to rank 0), so they open no store:
        # under torchrun / srun all ranks start at once, and two processes creating one fresh sqlite store race on
        # its schema migration ("duplicate column name"). See ts_neuralode.multinode.
        import mlflow.tracking

        real = mlflow.tracking.MlflowClient
        mlflow.tracking.MlflowClient = lambda *a, **k: None
        try:
            super().__init__(*args, **kwargs)
        finally:
            mlflow.tracking.MlflowClient = real

    def safe_call(self, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None once tracking has failed (the first failure is reported)."""
        if self.tracking_failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException, requests/urllib3 errors, OSError: all mean "store is gone"
            self.tracking_failed = True
            first = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else type(err).__name__
            print(f"ts-neuralode: warning: MLflow tracking at {self._tracking_uri} failed ({first[:300]}); "
                  "training goes on without it (checkpoints and the model directory are still written locally)",
                  file=sys.stderr, flush=True)
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
        from ts_neuralode.mlflow_io import MAX_PARAM_LENGTH
        from ts_neuralode.model_store import clean_hparams

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


def find_logger(trainer: Trainer) -> MLFlowLogger | None:
    """The run's MLflow logger, or None (also once tracking has failed, see :class:`TrackingLogger`)."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return None if getattr(logger, "tracking_failed", False) else logger
    return None


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
    path = Path(ckpt_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
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


def scale_params(trainer: Trainer) -> dict[str, Any]:
    """What the run was spread over, logged once by rank 0: world size, nodes, strategy, the global batch size
    (series per optimizer step over every rank) and the torch thread choice (:mod:`ts_neuralode.threads`)."""
    from ts_neuralode.threads import current_choice

    world = int(getattr(trainer, "world_size", 1) or 1)
    per_rank = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    params: dict[str, Any] = {"world_size": world, "num_nodes": int(getattr(trainer, "num_nodes", 1) or 1),
                              "strategy": type(trainer.strategy).__name__}
    if per_rank is not None:
        params["global_batch_size"] = int(per_rank) * world * accumulate
    choice = current_choice()
    if choice is not None:
        params.update(choice.params())
    params["torch_threads"] = torch.get_num_threads()  # what runs (Lightning's DDP may set it after the choice)
    return params


class MlflowTrackingCallback(Callback):
    """Per-epoch metrics (``step = epoch``), epoch time and end-of-fit artifacts; see the module docstring.
    Does nothing without an MLflow logger. The model directory itself is written by
    :class:`ts_neuralode.export.ModelExportCallback` (whose forecaster this callback logs when it is there).

    Args:
        ckpt_dir: where checkpoints and ``mlflow_run.json`` live (the run file enables resuming).
        log_model: log the model directory and forecast plots to MLflow at the end of the fit.
        plot_series: how many validation series to plot.
        forecast_samples: latent samples per plotted forecast.
        register_as: also register the logged MLflow model under this name (``--register_as``).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike | None = None,
        log_model: bool = True,
        plot_series: int = 3,
        forecast_samples: int = 50,
        register_as: str | None = None,
    ) -> None:
        self.register_as = register_as
        self._model_error: str | None = None  # why the MLflow model was not logged (see on_fit_end)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.log_model = log_model
        self.plot_series = plot_series
        self.forecast_samples = forecast_samples
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        self.model_uri: str | None = None  # models:/<model id> of the logged MLflow model
        self._epoch_start = 0.0
        self._epoch_time = 0.0
        self._batch_start = 0.0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._logged_epoch = -1

    # -- run identity (stored in checkpoints so that a resumed fit continues the run) --
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = state_dict.get("run_id") or self.run_id

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = find_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        self.run_id = logger.run_id
        self.tracking_uri = logger._tracking_uri
        from ts_neuralode.mlflow_io import mark_training_experiment

        tracked(logger, mark_training_experiment, logger.experiment, logger.experiment_id)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After every callback's setup (ModelCheckpoint warns about a non-empty directory in its setup).
        logger = find_logger(trainer)
        if logger is None or not trainer.is_global_zero or self.ckpt_dir is None:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        info = {"run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": self.tracking_uri}
        atomic_write_text(self.ckpt_dir / RUN_FILE, json.dumps(info, indent=2) + "\n")
        tracked(logger, lambda: logger.experiment.set_tag(logger.run_id, "ts_neuralode.checkpoint_dir",
                                                          str(self.ckpt_dir.resolve())))
        logger.log_hyperparams(scale_params(trainer))

    # -- per-epoch metrics --
    def _add(self, key: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_time = 0.0
        self._sums, self._counts = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self._add("train_loss", _scalar(loss))
        model = getattr(pl_module, "model", pl_module)
        self._add("nfe", _scalar(getattr(model, "last_nfe", None)))
        self._add("batch_time_s", time.perf_counter() - self._batch_start)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.training and self._epoch_start:
            self._epoch_time = time.perf_counter() - self._epoch_start

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs before ModelCheckpoint's own on_validation_end (Lightning puts checkpoint callbacks last),
        # so an epoch's metrics are in MLflow before its checkpoint exists: a resume never leaves a gap.
        if trainer.sanity_checking or not trainer.training:
            return
        self._log_epoch(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._logged_epoch != trainer.current_epoch:  # no validation this epoch
            self._epoch_time = self._epoch_time or time.perf_counter() - self._epoch_start
            self._log_epoch(trainer)

    def _sync_train_sums(self, trainer: Trainer) -> None:
        """Under DDP, sum the training sums/counts over the ranks, so ``train_loss`` is the mean over every
        rank's batches (the global batch), not rank 0's shard. A collective: every rank calls it, same keys."""
        if getattr(trainer, "world_size", 1) <= 1:
            return
        keys = TRAIN_KEYS
        local = torch.tensor([[self._sums.get(k, 0.0) for k in keys], [float(self._counts.get(k, 0)) for k in keys]],
                             dtype=torch.float64, device=trainer.strategy.root_device)
        total = trainer.strategy.reduce(local, reduce_op="sum").cpu()
        self._sums = {k: float(total[0, i]) for i, k in enumerate(keys) if total[1, i] > 0}
        self._counts = {k: int(total[1, i]) for i, k in enumerate(keys) if total[1, i] > 0}

    def epoch_metrics(self, trainer: Trainer) -> dict[str, float]:
        """This epoch's metrics: training means (loss, nfe, batch time), epoch time and validation metrics."""
        metrics = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts.get(k)}
        if self._epoch_time:
            metrics["epoch_time_s"] = self._epoch_time
        for key, value in trainer.callback_metrics.items():
            v = _scalar(value)
            if v is not None and key.startswith("val_") and not key.endswith("_step"):
                metrics[key.removesuffix("_epoch")] = v
        return metrics

    def _log_epoch(self, trainer: Trainer) -> None:
        self._logged_epoch = trainer.current_epoch
        self._sync_train_sums(trainer)
        logger = find_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        metrics = self.epoch_metrics(trainer)
        if not metrics:
            return
        batch = [(EPOCH_PREFIX + k, v, trainer.current_epoch) for k, v in sorted(metrics.items())]
        tracked(logger, lambda: log_batch(logger.experiment, logger.run_id, metrics=batch))

    # -- end of fit: best checkpoint, model directory, plots --
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logger = find_logger(trainer)
        if logger is None:
            return
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        if best and Path(best).is_file():
            tracked(logger, lambda: (logger.experiment.log_artifact(logger.run_id, best, "checkpoints"),
                                     logger.experiment.set_tag(logger.run_id, "ts_neuralode.best_checkpoint",
                                                               str(Path(best).resolve()))))
        if not self.log_model:
            return
        from ts_neuralode.export import ModelExportCallback, fitted_forecaster

        export = next((c for c in trainer.callbacks if isinstance(c, ModelExportCallback)), None)
        forecaster = export.forecaster if export is not None else fitted_forecaster(trainer, pl_module)
        written = export.model_dir_written if export is not None else None
        if forecaster is not None:
            self._model_error = None
            logged = tracked(logger, self._log_model, logger, forecaster, trainer.datamodule, written,
                             self._best_step(best))
            self.model_uri = getattr(logged, "model_uri", None)
            if self.register_as and not logged:  # asked to register: no model is a failed command, not a warning
                why = self._model_error or "MLflow tracking failed; see the warning above"
                raise ForecastError(f"--register_as {self.register_as}: the MLflow model was not logged and "
                                    f"registered ({why}); the local model directory is written: fix the cause and "
                                    "fit again")

    def _best_step(self, best: str) -> int:
        """The epoch of the best checkpoint (the step its metrics were logged at), else the last logged epoch."""
        if best and Path(best).is_file():
            try:
                return int(torch.load(best, map_location="cpu", weights_only=True).get("epoch", 0))
            except Exception:  # an unreadable checkpoint: fall back to the last epoch
                pass
        return max(self._logged_epoch, 0)

    def _log_model(self, logger: MLFlowLogger, forecaster, datamodule, model_dir: Path | None = None,
                   step: int = 0) -> Any:
        """The model directory (``model_dir`` when the export callback has written it, else saved here) and
        validation forecast plots as artifacts of the run."""
        from ts_neuralode.callbacks import solver_failure

        client, run_id = logger.experiment, logger.run_id
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = model_dir or forecaster.save(Path(tmp) / "model")
            client.log_artifacts(run_id, str(model_dir), "model")
            from ts_neuralode.mlflow_model import log_pyfunc  # the same directory as an MLflow (pyfunc) model

            try:
                info = log_pyfunc(self.tracking_uri or logger._tracking_uri, run_id, model_dir, forecaster,
                                  datamodule, self.register_as, step)
            except Exception as err:  # its example forecast failed (MLflow's own errors go on to tracked(), unless
                # the model is to be registered: then any failure ends the fit with one error line, in on_fit_end)
                if not (isinstance(err, TSNeuralODEError) or solver_failure(err) or self.register_as):
                    raise
                first = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else type(err).__name__
                self._model_error = (first if not (isinstance(err, TSNeuralODEError) or solver_failure(err))
                                     else f"its example forecast failed: {first}")
                info = None
                if not self.register_as:
                    log.warning("MLflow model not logged (%s); model/ is logged", self._model_error)
            try:
                pngs = forecaster.plot_validation_forecasts(
                    datamodule, Path(tmp) / "plots", n_series=self.plot_series, num_samples=self.forecast_samples
                )
            except Exception as err:  # plots are a courtesy; never fail a finished fit over them
                if not (isinstance(err, TSNeuralODEError) or solver_failure(err)):
                    raise
                log.warning("forecast plots not logged: %s", err)
                pngs = []
            for png in pngs:
                client.log_artifact(run_id, str(png), "plots")
        return info

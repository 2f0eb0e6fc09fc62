"""What a fit records in MLflow (:class:`MlflowTrackingCallback`: per-epoch metrics, the scale of the run, and at the
end the best checkpoint, the model directory, the logged pyfunc model and forecast plots), and the logger + callback
of a stage (:func:`tracking_parts`). The logger, the run file and the store live in
:mod:`ts_neuralode.integrations.mlflow.tracking`, whose docstring says what a fit records."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger

from ts_neuralode.core.atomic import write_json
from ts_neuralode.core.threads import current_choice
from ts_neuralode.errors import ForecastError, TSNeuralODEError
from ts_neuralode.integrations.mlflow.io import log_batch, mark_training_experiment
from ts_neuralode.integrations.mlflow.logged_model import log_pyfunc
from ts_neuralode.integrations.mlflow.tracking import (
    EPOCH_PREFIX,
    RUN_FILE,
    _scalar,
    make_logger,
    resolve_tracking_uri,
    tracked,
)
from ts_neuralode.training.callbacks import find_logger, solver_failure

log = logging.getLogger(__name__)


TRAIN_KEYS = ("train_loss", "nfe", "batch_time_s")  # per-batch training means of MlflowTrackingCallback


def scale_params(trainer: Trainer) -> dict[str, Any]:
    """What the run was spread over, logged once by rank 0: world size, nodes, strategy, the cluster environment
    that started the processes (``TorchElasticEnvironment`` under torchrun, ``SLURMEnvironment`` under srun,
    ``LightningEnvironment`` where Lightning started them), the global batch size (series per optimizer step over
    every rank) and the torch thread choice (:mod:`ts_neuralode.core.threads`)."""

    world = int(getattr(trainer, "world_size", 1) or 1)
    per_rank = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    params: dict[str, Any] = {
        "world_size": world,
        "num_nodes": int(getattr(trainer, "num_nodes", 1) or 1),
        "strategy": type(trainer.strategy).__name__,
    }
    cluster = getattr(trainer.strategy, "cluster_environment", None)
    if cluster is not None:
        params["cluster_environment"] = type(cluster).__name__
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
    :class:`ts_neuralode.api.export.ModelExportCallback` (whose forecaster this callback logs when it is there).

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

        tracked(logger, mark_training_experiment, logger.experiment, logger.experiment_id)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After every callback's setup (ModelCheckpoint warns about a non-empty directory in its setup).
        logger = find_logger(trainer)
        if logger is None or not trainer.is_global_zero or self.ckpt_dir is None:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        info = {"run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": self.tracking_uri}
        write_json(self.ckpt_dir / RUN_FILE, info)
        tracked(
            logger,
            lambda: logger.experiment.set_tag(
                logger.run_id, "ts_neuralode.checkpoint_dir", str(self.ckpt_dir.resolve())
            ),
        )
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
        local = torch.tensor(
            [[self._sums.get(k, 0.0) for k in keys], [float(self._counts.get(k, 0)) for k in keys]],
            dtype=torch.float64,
            device=trainer.strategy.root_device,
        )
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
            tracked(
                logger,
                lambda: (
                    logger.experiment.log_artifact(logger.run_id, best, "checkpoints"),
                    logger.experiment.set_tag(logger.run_id, "ts_neuralode.best_checkpoint", str(Path(best).resolve())),
                ),
            )
        if not self.log_model:
            return
        # the fitted forecaster comes from the model export callback of the fit (ts_neuralode.api.export), found by
        # what it offers: this layer sits under the API and does not build forecasters itself
        export = next((c for c in trainer.callbacks if hasattr(c, "model_dir_written")), None)
        forecaster = getattr(export, "forecaster", None)
        written = getattr(export, "model_dir_written", None)
        if forecaster is not None:
            self._model_error = None
            logged = tracked(
                logger, self._log_model, logger, forecaster, trainer.datamodule, written, self._best_step(best)
            )
            self.model_uri = getattr(logged, "model_uri", None)
            if self.register_as and not logged:  # asked to register: no model is a failed command, not a warning
                why = self._model_error or "MLflow tracking failed; see the warning above"
                raise ForecastError(
                    f"--register_as {self.register_as}: the MLflow model was not logged and "
                    f"registered ({why}); the local model directory is written: fix the cause and "
                    "fit again"
                )

    def _best_step(self, best: str) -> int:
        """The epoch of the best checkpoint (the step its metrics were logged at), else the last logged epoch."""
        if best and Path(best).is_file():
            try:
                return int(torch.load(best, map_location="cpu", weights_only=True).get("epoch", 0))
            except Exception:  # an unreadable checkpoint: fall back to the last epoch
                pass
        return max(self._logged_epoch, 0)

    def _log_model(
        self, logger: MLFlowLogger, forecaster, datamodule, model_dir: Path | None = None, step: int = 0
    ) -> Any:
        """The model directory (``model_dir`` when the export callback has written it, else saved here) and
        validation forecast plots as artifacts of the run."""
        client, run_id = logger.experiment, logger.run_id
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = model_dir or forecaster.save(Path(tmp) / "model")
            client.log_artifacts(run_id, str(model_dir), "model")

            try:
                info = log_pyfunc(
                    self.tracking_uri or logger._tracking_uri,
                    run_id,
                    model_dir,
                    forecaster,
                    datamodule,
                    self.register_as,
                    step,
                )
            except Exception as err:  # its example forecast failed (MLflow's own errors go on to tracked(), unless
                # the model is to be registered: then any failure ends the fit with one error line, in on_fit_end)
                if not (isinstance(err, TSNeuralODEError) or solver_failure(err) or self.register_as):
                    raise
                first = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else type(err).__name__
                self._model_error = (
                    first
                    if not (isinstance(err, TSNeuralODEError) or solver_failure(err))
                    else f"its example forecast failed: {first}"
                )
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


def tracking_parts(cfg, stage: str, ckpt_dir: Path, run_id: str | None = None):
    """(logger, callbacks) of MLflow tracking for ``stage`` (``fit`` | ``validate`` | ...), (None, []) when the
    config tracks nothing or names its own logger."""
    if not cfg.get("tracking") or cfg.trainer.get("logger") not in (None, True):
        return None, []
    logger = make_logger(
        resolve_tracking_uri(cfg.get("tracking_uri")),
        cfg.get("experiment_name"),
        cfg.get("run_name"),
        run_id=run_id,
        tags={"ts_neuralode.subcommand": stage},
        artifact_location=cfg.get("artifact_location"),
    )
    cb = MlflowTrackingCallback(
        ckpt_dir=ckpt_dir, log_model=bool(cfg.get("log_model")), register_as=cfg.get("register_as")
    )
    return logger, [cb]

"""The reloadable model directory at the end of a fit: :class:`ModelExportCallback`.

The directory (:mod:`ts_neuralode.training.model_store`: weights + JSON config, no pickles) holds the best checkpoint's
weights when a checkpoint callback kept one, else the last ones, with the data module's fitted transform, so
``ts-neuralode forecast --model <dir>`` works without the training data. Written on rank 0, before anything is
logged to MLflow (local files do not depend on the tracking store).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from ts_neuralode.api.calibration import fit_calibration
from ts_neuralode.api.correction_gate import gate_correction
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.api.training_extent import training_extent
from ts_neuralode.errors import TSNeuralODEError
from ts_neuralode.training.callbacks import solver_failure

log = logging.getLogger(__name__)


def fitted_forecaster(trainer: Trainer, pl_module: LightningModule, forecaster_cls: type[Predictor] = Predictor):
    """A ``forecaster_cls`` (a :class:`~ts_neuralode.api.predictor.Predictor`) of the fit's best weights (None without a
    fitted transform)."""

    datamodule = trainer.datamodule
    if datamodule is None or getattr(datamodule, "transform", None) is None:
        log.warning("no fitted data transform: the model directory is not written")
        return None
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    module = _module_with_checkpoint(pl_module, best) if best and Path(best).is_file() else pl_module
    return forecaster_cls.from_module(module, datamodule)


def _module_with_checkpoint(pl_module: LightningModule, ckpt_path: str) -> LightningModule:
    """A copy of ``pl_module`` (same class and hparams) holding the weights of ``ckpt_path``."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module = type(pl_module).from_hparams(pl_module.hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def calibrate_fitted(forecaster, datamodule) -> str:
    """Weight a window model's learned correction (:func:`ts_neuralode.api.correction_gate.gate_correction`), then
    fit ``forecaster``'s band calibration on the fit's held-out validation windows
    (:func:`ts_neuralode.api.calibration.fit_calibration`) and record what it trained on (:mod:`training_extent`, which
    ``backtest --calibrate`` checks); returns the line saying what was done. A forecast that fails there (a solver
    that cannot reach the validation horizon) leaves the bands uncalibrated and says why: it never fails the fit."""
    forecaster.training_extent = training_extent(datamodule)
    gate = None
    try:
        gate = gate_correction(forecaster, datamodule)  # before the bands: they are calibrated as it forecasts
        forecaster.calibration, line = fit_calibration(forecaster, datamodule)
    except Exception as err:
        if not (isinstance(err, TSNeuralODEError) or solver_failure(err)):
            raise
        first = " ".join(str(err).strip().splitlines()[0].split())
        forecaster.calibration, line = None, f"bands left uncalibrated: the validation forecasts failed ({first})"
    return line if gate is None else f"{gate}; {line}"


class ModelExportCallback(Callback):
    """At the end of a fit, calibrate the bands on the held-out validation windows (``calibrate``, default on:
    :func:`calibrate_fitted`) and write the model directory to ``model_dir``; ``forecaster``, ``calibration_line``
    and ``model_dir_written`` are set afterwards (the tracking callback logs that directory)."""

    def __init__(
        self, model_dir: str | os.PathLike, calibrate: bool = True, forecaster_cls: type[Predictor] = Predictor
    ) -> None:
        self.forecaster_cls = forecaster_cls
        self.model_dir = Path(model_dir)
        self.calibrate = calibrate
        self.forecaster = None
        self.calibration_line: str | None = None
        self.correction_gate: dict | None = None  # what the correction gate chose (correction_gate.gate_correction)
        self.model_dir_written: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.forecaster = fitted_forecaster(trainer, pl_module, self.forecaster_cls)
        if self.forecaster is not None:
            self.forecaster.training_extent = training_extent(trainer.datamodule)
            if self.calibrate:
                self.calibration_line = calibrate_fitted(self.forecaster, trainer.datamodule)
                self.correction_gate = getattr(self.forecaster, "correction_gate", None)
            self.model_dir_written = self.forecaster.save(self.model_dir)

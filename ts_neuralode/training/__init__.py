"""Training: the Lightning wrapper :class:`ForecastingModule` (thin), its options, callbacks, checkpoints, the
model store and the training metrics."""

from ts_neuralode.training.module import ForecastingModule

__all__ = ["ForecastingModule"]

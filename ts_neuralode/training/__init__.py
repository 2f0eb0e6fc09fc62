"""Lightning wrappers (thin): :class:`ForecastingModule`."""

from ts_neuralode.lightning.module import ForecastingModule

__all__ = ["ForecastingModule"]

"""The defaults of a forecast's predictive sampling, declared once for every layer that forecasts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """The defaults of how a forecast samples its predictive distribution, declared once: ``Predictor.predict``,
    the backtest, the ensemble, the band calibration, the served MLflow model's params and the ``forecast`` /
    ``backtest`` options read them here.

    num_samples: predictive samples per series.  level: central interval levels in percent.  batch_size: series
    per forward pass.  seed: sampling seed (None: not seeded).
    """

    num_samples: int = 100
    level: tuple[float, ...] = (50.0, 90.0)
    batch_size: int = 64
    seed: int | None = 0


#: the defaults every forecast entry point takes its sampling options from
SAMPLING = Sampling()

__all__ = ["Sampling", "SAMPLING"]

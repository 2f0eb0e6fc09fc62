"""Rolling-origin backtesting: forecast from many cutoffs, score what came after, in the user's units.

:func:`cross_validation` (``Forecaster.cross_validation``) returns Nixtla-style rows
``unique_id, ds, [channel,] cutoff, y, <model>, <model>-lo-L, <model>-hi-L, <model>-q-P, locf, mean``: one per
observed value after each cutoff, at the series' own (irregular) observation times.

Windows, per series (times in the data's units; durations as numbers or strings such as ``"2D"``):

* ``n_windows`` (with ``step``, default the horizon): nominal cuts ``last - horizon - k * step`` for
  ``k = n_windows - 1 … 0`` (the last window ends at the series' last observation: the backtest of the
  forecast you would have made one horizon ago, and of the ``split_by time`` test window of the forecast task);
* ``cutoffs``: explicit times shared by every series.

A window's forecast is the one made at time ``cutoff`` with everything observed up to it: the model conditions on
the series' observations at or before the cutoff (as :meth:`Forecaster.predict` on that history would) and is
scored at its observations in ``(cutoff, cutoff + horizon]``. A series with no observation up to a cutoff or none
in the window after it sits that window out.

``refit``: ``False`` (one model for every window — it may have seen the later windows in training), ``True``
(train a new model on each window's history) or ``k`` (every ``k`` windows); a refit trains through the same
code path as ``ts-neuralode fit`` (:func:`refit_forecaster`) with the options of ``fit_args``.

Baselines scored by the same code: ``locf`` (the last value observed up to the cutoff) and ``mean`` (the mean of
the series' values up to the cutoff). :func:`evaluate` scores every model column with utilsforecast's losses (MAE, RMSE,
CRPS, interval coverage and Winkler score), the band width and a MASE-style ``scaled_mae`` (errors over each
series' ``locf`` MAE), overall, per series and per horizon bucket.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ts_neuralode.api.calibration import calibrate, fit_calibration
from ts_neuralode.api.fitting import refit
from ts_neuralode.api.held_out import held_out_windows
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.api.scoring import (
    DEFAULT_BUCKETS,
    bucket_edges,
    bucket_labels,
    bucket_of,
    evaluate,
    horizon_in_units,
    lead_times,
    markdown_report,
    md_table,
    mlflow_metrics,
    model_columns,
    plot_error_vs_horizon,
)
from ts_neuralode.api.windows import (
    BASELINES,
    CRPS_QUANTILES,
    WindowRefit,
    _only_series,
    _refit_every,
    _row_cutter,
    _run_windows,
    window_cuts,
)
from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.data.io import as_frame, read_frame
from ts_neuralode.errors import ConfigError, ForecastError


def refit_forecaster(
    fit_args: Sequence[str] | str,
    data: pd.DataFrame,
    workdir: str | os.PathLike,
    forecaster_cls: type[Predictor] = Predictor,
):
    """A new :class:`Forecaster` trained on ``data`` (a DataFrame, in memory) with the ``ts-neuralode fit`` options
    ``fit_args`` (e.g. ``["--config", "configs/demo.yaml"]``) through the API every fit goes through
    (:func:`ts_neuralode.api.fitting.refit`: the same parser, data module, callbacks and model export); no MLflow run,
    checkpoints and model directory under ``workdir``."""
    args = shlex.split(fit_args) if isinstance(fit_args, str) else list(fit_args)
    return refit(args, data, workdir, forecaster_cls=forecaster_cls)


def _source_frame(history: Any) -> pd.DataFrame | None:
    if isinstance(history, pd.DataFrame):
        return history
    if isinstance(history, (str, os.PathLike)):
        return read_frame(history)
    return None


def cross_validation(
    fc,
    history: Any,
    horizon: float | str | pd.Timedelta,
    *,
    n_windows: int | None = None,
    cutoffs: Sequence | None = None,
    step: float | str | pd.Timedelta | None = None,
    refit: bool | int = False,
    fit_args: Sequence[str] | str | None = None,
    level: Iterable[float] | float | None = SAMPLING.level,
    quantiles: Iterable[float] | None = CRPS_QUANTILES,
    num_samples: int = SAMPLING.num_samples,
    context: float | str | pd.Timedelta | None = None,
    seed: int | None = SAMPLING.seed,
    batch_size: int = SAMPLING.batch_size,
    calibrated: bool = False,
    progress: bool = False,
    workdir: str | os.PathLike | None = None,
    future: pd.DataFrame | str | os.PathLike | None = None,
    series: Sequence[Any] | None = None,
    forecaster_cls: type[Predictor] = Predictor,
    **read_options: Any,
) -> pd.DataFrame:
    """Backtest ``fc`` on ``history`` (see the module docstring); returns the rows of every window.

    Covariates: a model's known-future and static covariates are read once from the whole ``history`` plus
    ``future`` (values after the history's end, as :meth:`Forecaster.predict`'s ``future``); a window's forecast
    reads them after its cutoff too — they are known in advance, unlike the targets and past-only covariates, which
    stop at the cutoff.

    ``series``: backtest only these series ids (e.g. ``Forecaster.split_ids("val")``, the series a fit held out);
    ForecastError naming the ids the history lacks. ``forecaster_cls``: the class of the refitted models."""
    history, future = as_frame(history), as_frame(future)
    table = fc.read_history(history, **read_options)
    if series is not None:
        table = _only_series(table, series)
    spec = fc.covariate_spec
    covariates = None
    if spec is not None and (spec.future_cols or spec.static_cols):
        covariates = fc.read_covariates(history, future, table)
    elif future is not None:
        raise ConfigError("future=... gives known-future covariates, but the model reads none; drop it")
    codec = table.codec
    h = codec.duration(horizon, "horizon", ConfigError)
    if not h > 0:
        raise ConfigError(f"horizon={horizon!r} must be positive")
    step_raw = None if step is None else codec.duration(step, "step", ConfigError)
    cuts, cuts_ns = window_cuts(table, h, n_windows, cutoffs, step_raw)
    every = _refit_every(refit)
    if every and not fit_args:
        raise ConfigError(
            "refit needs fit_args: the options of 'ts-neuralode fit' that train a model (e.g. "
            "['--config', 'configs/demo.yaml'])"
        )
    source = _source_frame(history) if every else None
    if every and source is None:
        raise ConfigError(
            "refit needs the history as a DataFrame or a file path (a new model is trained on each window's part of it)"
        )
    window_refit = None
    if every:
        window_refit = WindowRefit(
            every,
            lambda data, folder: refit_forecaster(fit_args, data, folder, forecaster_cls),
            _row_cutter(source, table),
            workdir,
        )
    predict_options = dict(
        level=level,
        quantiles=quantiles,
        num_samples=num_samples,
        context=context,
        seed=seed,
        batch_size=batch_size,
        calibrated=calibrated,
        covariates=covariates,
    )
    frames = _run_windows(fc, table, cuts, cuts_ns, h, predict_options, refit=window_refit, progress=progress)
    if not frames:
        raise ForecastError(
            "no backtest window has a series with history before its cutoff and an observation within "
            "the horizon after it; use fewer windows, a shorter step or other cutoffs"
        )
    return pd.concat(frames, ignore_index=True)


__all__ = [
    "BASELINES",
    "CRPS_QUANTILES",
    "DEFAULT_BUCKETS",
    "bucket_edges",
    "bucket_labels",
    "bucket_of",
    "calibrate",
    "cross_validation",
    "evaluate",
    "fit_calibration",
    "held_out_windows",
    "horizon_in_units",
    "lead_times",
    "markdown_report",
    "md_table",
    "mlflow_metrics",
    "model_columns",
    "plot_error_vs_horizon",
    "refit_forecaster",
    "window_cuts",
]

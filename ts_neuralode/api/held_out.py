"""The fit's held-out validation windows, on which ``fit`` calibrates a model's bands and gates its learned
correction: which windows (:func:`held_out_windows`), a model's forecasts on them (:func:`held_out_forecasts`,
:func:`window_forecasts`), and their record in a calibration file (:func:`windows_record`), so that a refit is
calibrated on the same windows (:func:`ts_neuralode.api.calibration.transfer_calibration`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.api.windows import _run_windows
from ts_neuralode.core.sampling import SAMPLING

#: the band levels ``fit`` calibrates (a level too high for the number of held-out points is left out)
FIT_LEVELS = (50.0, 80.0, 90.0, 95.0, 99.0)


#: rolling windows per held-out stretch (cutoffs a quarter horizon apart)
FIT_WINDOWS = 4

#: at most this many validation series (a seeded sample of them) are forecast for the calibration and the
#: correction gate: at 5,000 series the forecasts of every validation series were a third of a whole fit
#: (results/many_series.md), and 256 series × FIT_WINDOWS windows give thousands of held-out points per fit
FIT_MAX_SERIES = 256


def held_out_windows(datamodule) -> tuple[list, np.ndarray, np.ndarray, float] | None:
    """The backtest windows of a fit's data that the model never trained on: ``(ids, cuts [W, n], limit [n],
    horizon)`` in raw times (no target after ``limit``), or None without a validation split.

    * forecast task split by time: per series, cutoffs from its validation cutoff on, a quarter horizon apart, with
      targets up to the end of the validation horizon (the training targets stop at the validation cutoff; the test
      horizon after it stays untouched);
    * forecast task split by series: the validation series' last ``FIT_WINDOWS`` half-horizon-spaced windows;
    * interpolation / extrapolation: the validation series, cutoffs from the extrapolation cut (interpolation: the
      middle of the series) to the series' end, horizon = the longest stretch after the cut.
    The validation windows choose the best checkpoint, nothing else: they are held out from the weights. With more
    than ``FIT_MAX_SERIES`` validation series, a seeded sample of that many."""
    split = getattr(datamodule, "split", None)
    if split is None or len(split.get("val", [])) == 0:
        return None
    table = datamodule.table
    val = np.asarray(split["val"], dtype=np.int64)
    if len(val) > FIT_MAX_SERIES:  # a seeded sample, in the split's order: the same series every time
        keep = np.random.default_rng(0).choice(len(val), FIT_MAX_SERIES, replace=False)
        val = val[np.sort(keep)]
    ids = [table.ids[i] for i in val]
    k = np.arange(FIT_WINDOWS, dtype=np.float64)[:, None]
    first, last = table.first_times()[val], table.last_times()[val]
    if datamodule.task == "forecast":
        spec = datamodule._specs["val"]
        h = float(spec.horizon)
        if datamodule.split_by == "time":
            c0 = np.asarray(spec.cutoff, dtype=np.float64)[val]
            return ids, c0[None, :] + k * h / FIT_WINDOWS, c0 + h, h
        return ids, (last - h)[None, :] - k[::-1] * h / 2, np.full(len(val), np.inf), h
    if datamodule.task == "extrapolation" and datamodule.cut_time is not None:
        cut = np.full(len(val), float(table.codec.to_float([datamodule.cut_time])[0]))
    else:
        frac = datamodule.cut if datamodule.task == "extrapolation" else 0.5
        cut = first + frac * (last - first)
    span = last - cut
    h = float(np.max(span)) if len(span) else 0.0
    if not h > 0:
        return None
    return ids, cut[None, :] + k * span[None, :] / FIT_WINDOWS, np.full(len(val), np.inf), h


def held_out_forecasts(
    fc,
    datamodule,
    num_samples: int = SAMPLING.num_samples,
    seed: int | None = SAMPLING.seed,
    levels: Sequence[float] | None = FIT_LEVELS,
):
    """``fc``'s forecasts on the fit's held-out validation windows (:func:`held_out_windows`) as a
    cross-validation frame, with the history table, the horizon and the series: ``(cv, table, horizon, ids)``;
    None without a validation split, or for a Parquet folder read in shards (no in-memory table to run windows on)."""
    if getattr(datamodule, "streams_shards", False):
        return None
    windows = held_out_windows(datamodule)
    if windows is None:
        return None
    return window_forecasts(fc, data_source(datamodule), windows, num_samples, seed, levels)


def data_source(datamodule) -> Any:
    """The data a data module read: its DataFrame, else its path."""
    return datamodule.df if getattr(datamodule, "df", None) is not None else datamodule.path


def window_forecasts(
    fc,
    source: Any,
    windows: tuple,
    num_samples: int = SAMPLING.num_samples,
    seed: int | None = SAMPLING.seed,
    levels: Sequence[float] | None = FIT_LEVELS,
):
    """``fc``'s forecasts from the history ``source`` (a DataFrame or a path) on ``windows`` = ``(ids, cuts [W, n],
    limit [n], horizon)`` (:func:`held_out_windows`' form, raw times: no target after ``limit``), as
    :func:`held_out_forecasts` returns them."""
    ids, cuts, limit, h = windows
    table = fc.read_history(source)
    pos = {str(u): i for i, u in enumerate(table.ids)}
    full = np.full((cuts.shape[0], table.n_series), np.nan)
    lim = np.full(table.n_series, np.inf)
    for j, u in enumerate(ids):
        i = pos.get(str(u))
        if i is not None:
            full[:, i], lim[i] = cuts[:, j], limit[j]
    codec = table.codec
    cuts_ns = codec.float_to_ns(np.nan_to_num(full)).reshape(full.shape) if codec.is_datetime else None
    spec = fc.covariate_spec
    covariates = (
        fc.read_covariates(source, None, table) if spec is not None and (spec.future_cols or spec.static_cols) else None
    )
    predict_options = dict(
        level=list(levels or []),
        quantiles=None,
        num_samples=num_samples,
        context=None,
        seed=seed,
        batch_size=64,
        calibrated=False,
        covariates=covariates,
    )
    frames = _run_windows(fc, table, full, cuts_ns, h, predict_options, limit=lim)
    cv = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return cv, table, h, ids


def windows_record(windows: tuple) -> dict:
    """``windows`` (:func:`held_out_windows`' form) as JSON-able lists (an infinite limit as None): stored with a
    calibration fitted on them (``fitted_on.windows``), so a refit can be calibrated on the same windows."""
    ids, cuts, limit, h = windows
    return {
        "ids": [str(u) for u in ids],
        "cuts": np.asarray(cuts, dtype=np.float64).tolist(),
        "limit": [None if not math.isfinite(x) else float(x) for x in np.asarray(limit, dtype=np.float64)],
        "horizon": float(h),
    }


def windows_from_record(record: Mapping[str, Any]) -> tuple:
    """The inverse of :func:`windows_record`."""
    limit = np.asarray([math.inf if x is None else x for x in record["limit"]], dtype=np.float64)
    return list(record["ids"]), np.asarray(record["cuts"], dtype=np.float64), limit, float(record["horizon"])


__all__ = [
    "FIT_LEVELS",
    "FIT_MAX_SERIES",
    "FIT_WINDOWS",
    "held_out_forecasts",
    "held_out_windows",
    "window_forecasts",
    "windows_from_record",
    "windows_record",
]

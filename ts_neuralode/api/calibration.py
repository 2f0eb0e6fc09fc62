"""Conformal calibration of the forecast bands, per horizon bucket, from backtest residuals.

A model's L% band ``[lo, hi]`` covers L% of what happens only when the model's predictive distribution is right.
Split conformal calibration measures how far off it is on backtest windows
(:func:`ts_neuralode.api.backtest.cross_validation`) and rescales the band about its own midpoint
``mid = (lo + hi) / 2`` (half-width ``w = (hi - lo) / 2``): for each point the score

    s = |y - mid| / (w + f)

is the factor by which the band must be stretched to reach ``y``; the factor ``c`` of level L in horizon bucket b
is the ``ceil((n + 1) L/100)``-th smallest of the bucket's n scores, so the stretched band
``[mid - c (w + f), mid + c (w + f)]`` covers at least L% of exchangeable new points.

Why this score. It is multiplicative: one factor per bucket serves series of any scale, and each band keeps its
own shape (wider where the model is less sure). An additive CQR offset ``max(lo - y, y - hi)`` is in the data's
units, so the pooled quantile would be set by the largest-scale series (narrow series would get bands far too
wide). It is centred on the band itself, not on the point forecast (the sample mean of latent and flow models,
which need not lie inside a sampled band), so it is defined for any band with ``lo <= hi``. ``f`` is an additive
floor per level in the data's units, stored with the factors: 1e-3 x the median half-width of the calibration
bands, or, when every band has zero width (``num_samples=1``), the median ``|y - mid|`` — then the calibrated band
is the plain absolute-residual conformal interval ``mid ± c f``.

Buckets are equal slices of the backtest horizon by lead time: the time after the last observation the forecast
conditioned on (:func:`lead_since_last`, the same function for calibration and for ``predict``; leads beyond the
horizon use the last bucket). A bucket with fewer than ``MIN_POINTS`` scores takes the factor pooled over all
buckets.

The calibration is a small JSON file in the model directory (``calibration.json``), read by
``Forecaster.load`` and applied by ``Forecaster.predict(..., calibrated=True)`` /
``ts-neuralode forecast --calibrated``. It calibrates the central bands only: a calibrated forecast has no
``-q-P`` quantile columns (they would describe the uncalibrated distribution; ``backtest --calibrated`` therefore
reports coverage and Winkler scores but no CRPS). The MLflow model logged by ``fit`` is a copy of the model
directory as it was then: a calibration made later by ``backtest --calibrate`` is not in it
(:mod:`ts_neuralode.integrations.mlflow.pyfunc`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.api.forecast_frame import band_col, fmt_level, levels_of, quantile_columns
from ts_neuralode.api.scoring import DEFAULT_BUCKETS, bucket_edges, bucket_of, lead_times
from ts_neuralode.api.training_extent import refuse_trained_windows
from ts_neuralode.api.windows import _run_windows
from ts_neuralode.core.atomic import read_json, write_json
from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.data.batching import segment_searchsorted
from ts_neuralode.errors import ConfigError, ForecastError

FILE = "calibration.json"
FORMAT = "ts_neuralode.api.calibration/2"
MIN_POINTS = 20
#: the additive floor of the half-width, as a fraction of the calibration bands' median half-width
FLOOR_FRACTION = 1e-3


def conformal_factor(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores`` for coverage ``level`` percent (inf when too few scores)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    k = math.ceil((n + 1) * level / 100.0)
    return float(s[k - 1]) if 1 <= k <= n else math.inf


def width_floor(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """The additive floor ``f`` of the half-width (see the module docstring)."""
    half = (np.asarray(hi, np.float64) - np.asarray(lo, np.float64)) / 2.0
    positive = half[half > 0]
    if positive.size:
        f = FLOOR_FRACTION * float(np.median(positive))
    else:
        f = float(np.median(np.abs(np.asarray(y, np.float64) - (np.asarray(lo) + np.asarray(hi)) / 2.0)))
    return f if f > 0 else 1e-12


def band_scores(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, floor: float) -> np.ndarray:
    """The stretch factor about each band's midpoint that makes it reach its ``y`` (see the module docstring)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return np.abs(np.asarray(y, np.float64) - (lo + hi) / 2.0) / (np.abs(hi - lo) / 2.0 + floor)


def lead_since_last(table, unique_id: Any, ds: Any, cutoff: Any = None) -> np.ndarray:
    """Each row's time (raw units) after the last observation of its series ``unique_id`` in ``table`` — at or
    before the row's ``cutoff`` when given (a backtest row), else the history's last one (a forecast row). What
    the calibration buckets by, both when it is fitted and when ``predict`` applies it."""

    codec = table.codec
    pos = {str(u): i for i, u in enumerate(table.ids)}
    sid = pd.Series(np.asarray(unique_id, dtype=object)).astype(str)
    s = sid.map(pos)
    if s.isna().any():
        raise ForecastError(
            f"series {sid[s.isna()].iloc[0]!r} is not in the history the lead times are counted from; "
            "pass the history the forecasts were made from"
        )
    s = s.to_numpy(np.int64)
    start, count = table.offsets[:-1][s], table.counts[s]
    n = count if cutoff is None else segment_searchsorted(table.times, start, count, codec.to_float(cutoff), "right")
    if np.any(n < 1):
        raise ForecastError(
            "a row's cutoff lies before its series' first observation; pass the history the backtest was made from"
        )
    return codec.to_float(ds) - table.times[start + n - 1]


def fit(
    cv: pd.DataFrame,
    model: str,
    horizon: float,
    buckets: int = 4,
    unit_ns: int | None = None,
    levels: list[float] | None = None,
    lead: np.ndarray | None = None,
    drop_unreachable: bool = False,
) -> dict:
    """Per-bucket conformal factors of ``model``'s bands from a cross-validation frame (raw time units). ``lead``:
    each row's time after the last observation its forecast conditioned on (:func:`lead_since_last`, what
    ``predict`` buckets by); default ``ds - cutoff`` (``unit_ns``: the data's time unit for datetimes).
    ``drop_unreachable``: leave out levels too high for the number of points (their factor would be infinite)
    instead of storing an infinite factor. A bucket whose own factor is infinite takes the pooled one."""

    edges = bucket_edges(horizon, buckets)
    b = bucket_of(lead_times(cv, unit_ns) if lead is None else np.asarray(lead, dtype=np.float64), edges)
    found = levels_of(cv, model)
    levels = found if levels is None else [lv for lv in found if float(lv) in {float(x) for x in levels}]
    if not levels:
        raise ForecastError(f"the backtest frame has no bands of {model!r} to calibrate; pass level=[...]")
    factors: dict[str, list[float]] = {}
    floors: dict[str, float] = {}
    counts = [int((b == k).sum()) for k in range(len(edges) - 1)]
    y = cv["y"].to_numpy(float)
    for lv in levels:
        tag = fmt_level(lv)
        lo, hi = cv[band_col(model, "lo", lv)].to_numpy(float), cv[band_col(model, "hi", lv)].to_numpy(float)
        floors[tag] = width_floor(y, lo, hi)
        s = band_scores(y, lo, hi, floors[tag])
        pooled = conformal_factor(s, float(lv))
        # too few points for this level's guarantee (e.g. 99% from 50 points): the level is left out
        if not math.isfinite(pooled) and drop_unreachable:
            del floors[tag]
            continue
        per_bucket = [
            conformal_factor(s[b == k], float(lv)) if counts[k] >= MIN_POINTS else pooled for k in range(len(edges) - 1)
        ]
        factors[tag] = [f if math.isfinite(f) else pooled for f in per_bucket]
    if not factors:
        raise ForecastError(
            f"{len(y)} backtest points are too few for a conformal band of any of the levels "
            f"{', '.join(fmt_level(lv) for lv in levels)}; backtest more windows or series"
        )
    return {
        "format": FORMAT,
        "model": model,
        "horizon": float(horizon),
        "edges": edges.tolist(),
        "points": counts,
        "factors": factors,
        "floors": floors,
    }


def apply(frame: pd.DataFrame, calibration: Mapping[str, Any], name: str, lead: np.ndarray) -> pd.DataFrame:
    """``frame`` (a forecast) with every level's band stretched about its midpoint by its bucket's factor and
    without the ``-q-P`` quantile columns (see the module docstring); ``lead`` is each row's time after its series'
    last observation (raw units, :func:`lead_since_last`). Levels without a factor raise ForecastError."""

    edges = np.asarray(calibration["edges"], dtype=np.float64)
    b = bucket_of(np.asarray(lead, dtype=np.float64), edges)
    out = frame.drop(columns=quantile_columns(frame, name)[0])
    for lv in levels_of(out, name):
        tag = fmt_level(lv)
        f = calibration["factors"].get(tag)
        if f is None:
            raise ForecastError(
                f"the model's calibration has no factors for level {tag} (it has "
                f"{', '.join(calibration['factors'])}); ask for those levels or calibrate again"
            )
        c = np.asarray(f, dtype=np.float64)[b]
        lo_col, hi_col = band_col(name, "lo", lv), band_col(name, "hi", lv)
        lo, hi = out[lo_col].to_numpy(float), out[hi_col].to_numpy(float)
        mid, half = (lo + hi) / 2.0, np.abs(hi - lo) / 2.0 + float(calibration["floors"][tag])
        out[lo_col], out[hi_col] = mid - c * half, mid + c * half
    return out


def save(model_dir: str | os.PathLike, calibration: Mapping[str, Any]) -> Path:
    return write_json(Path(model_dir) / FILE, dict(calibration))


def load(model_dir: str | os.PathLike) -> dict | None:
    """The calibration stored in a model directory, or None."""
    path = Path(model_dir) / FILE
    try:
        data = read_json(path)
    except ValueError as err:
        raise ForecastError(f"{path}: not valid JSON ({err}); calibrate the model again") from err
    if data is None:
        return None
    if data.get("format") != FORMAT:
        raise ForecastError(f"{path}: unknown calibration format {data.get('format')!r}; calibrate the model again")
    return data


# -- calibrating a forecaster: on backtest rows, or at the end of a fit on its held-out windows ---------------
def calibrate(
    fc,
    cv: pd.DataFrame,
    horizon: float | str | pd.Timedelta,
    buckets: int = DEFAULT_BUCKETS,
    history: Any = None,
    save_to: str | os.PathLike | None = None,
    refit: bool = False,
    **read_options: Any,
) -> dict:
    """Fit the conformal band calibration of ``fc`` on the backtest rows ``cv`` (made with uncalibrated bands),
    per horizon bucket (:mod:`ts_neuralode.api.calibration`); sets ``fc.calibration`` and, with ``save_to`` (a model
    directory), stores it there. Returns it.

    With ``history`` (the backtest's history) a row's lead time is counted from the last observation up to its
    cutoff, as ``predict`` counts it from a history's last observation; without it, from the cutoff.

    Rows that score observations ``fc`` trained on (its ``training_extent``) are refused with one line saying what
    to pass, unless ``refit`` (each window's model trained only on the history before its cutoff)."""
    codec = fc.transform.codec
    if not refit:
        refuse_trained_windows(getattr(fc, "training_extent", None), cv, codec)
    h = codec.duration(horizon, "horizon", ConfigError)
    lead = None
    if history is not None:
        table = fc.read_history(history, **read_options)
        lead = lead_since_last(table, cv["unique_id"], cv["ds"], cv["cutoff"])
    cal = fit(cv, fc.name, h, buckets, codec.unit_ns if codec.is_datetime else None, lead=lead)
    fc.calibration = cal
    if save_to is not None:
        save(save_to, cal)
    return cal


#: the band levels ``fit`` calibrates (a level too high for the number of held-out points is left out)
FIT_LEVELS = (50.0, 80.0, 90.0, 95.0, 99.0)


#: fewer held-out points than this: ``fit`` leaves the bands uncalibrated (and says so)
MIN_FIT_POINTS = 50


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
    return window_forecasts(fc, _source(datamodule), windows, num_samples, seed, levels)


def _source(datamodule) -> Any:
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


def transfer_calibration(
    fc, donor, source: Any, calibration: Mapping[str, Any], buckets: int = DEFAULT_BUCKETS
) -> dict | None:
    """The calibration of ``fc``'s bands from the held-out windows another model, ``donor``, was calibrated on
    (``calibration["fitted_on"]["windows"]``): ``fc`` trained on them (a refit on train + validation), so its own
    errors there are not held out, but the donor's are. Each point's score is the donor's error over ``fc``'s band
    half-width there, ``|y - mid_donor| / (w_fc + f)``: the factors stretch ``fc``'s own bands as far as the donor's
    held-out errors need, whatever the ratio of the two models' band widths (a refit trained longer on more data
    can sample a wider or a narrower band than its trial: measured on the demo sensors, its own 90% band covered
    100% where the trial's covered 98.6%, and the trial's factors left it at 100%). None when the calibration
    records no windows or the two forecasts do not line up."""
    record = (calibration.get("fitted_on") or {}).get("windows")
    levels = [float(lv) for lv in (calibration.get("factors") or {})]
    if not record or not levels:
        return None
    windows = windows_from_record(record)
    mine, table, h, ids = window_forecasts(fc, source, windows, levels=levels)
    theirs = window_forecasts(donor, source, windows, levels=levels)[0]
    keys = ["unique_id", "ds", "cutoff"] + (["channel"] if "channel" in mine.columns else [])
    if len(mine) < MIN_FIT_POINTS or len(mine) != len(theirs) or not mine[keys].equals(theirs[keys]):
        return None
    frame = mine[[*keys, "y"]].copy()
    for lv in levels:
        half = (mine[band_col(fc.name, "hi", lv)] - mine[band_col(fc.name, "lo", lv)]).abs() / 2.0
        mid = (theirs[band_col(donor.name, "hi", lv)] + theirs[band_col(donor.name, "lo", lv)]) / 2.0
        frame[band_col(fc.name, "lo", lv)], frame[band_col(fc.name, "hi", lv)] = mid - half, mid + half
    codec = table.codec
    lead = lead_since_last(table, frame["unique_id"], frame["ds"], frame["cutoff"])
    unit_ns = codec.unit_ns if codec.is_datetime else None
    cal = fit(frame, fc.name, h, buckets, unit_ns, lead=lead, drop_unreachable=True)
    cal["fitted_on"] = {**dict(calibration.get("fitted_on") or {}), "points": int(len(frame)), "series": len(ids)}
    return cal


def fit_calibration(
    fc,
    datamodule,
    num_samples: int = SAMPLING.num_samples,
    buckets: int = DEFAULT_BUCKETS,
    seed: int | None = SAMPLING.seed,
) -> tuple[dict | None, str]:
    """The conformal calibration of ``fc``'s bands from the fit's held-out validation windows
    (:func:`held_out_windows`), and a line saying what it was fitted on — or ``(None, why not)``."""
    if getattr(datamodule, "streams_shards", False):
        return None, (
            "bands left uncalibrated: the data is a Parquet folder read in shards; calibrate with "
            "'ts-neuralode backtest --calibrate' on held-out data"
        )
    windows = held_out_windows(datamodule)
    if windows is None:
        return None, (
            "no validation split to calibrate on (val_fraction 0); the bands are the model's own: "
            "calibrate with 'ts-neuralode backtest --calibrate' on windows the model did not train on"
        )
    cv, table, h, ids = window_forecasts(fc, _source(datamodule), windows, num_samples, seed)
    codec = table.codec
    if len(cv) < MIN_FIT_POINTS:
        return None, (
            f"only {len(cv)} held-out validation points to calibrate on (at least {MIN_FIT_POINTS}); "
            "the bands are the model's own: raise --data.val_fraction, or calibrate with 'ts-neuralode "
            "backtest --calibrate' on windows the model did not train on"
        )
    lead = lead_since_last(table, cv["unique_id"], cv["ds"], cv["cutoff"])
    cal = fit(cv, fc.name, h, buckets, codec.unit_ns if codec.is_datetime else None, lead=lead, drop_unreachable=True)
    cal["fitted_on"] = {
        "what": "held-out validation windows of the fit",
        "points": int(len(cv)),
        "series": len(ids),
        "windows": windows_record(windows),
    }
    levels = "/".join(cal["factors"])
    f90 = cal["factors"].get("90")
    stretch = f" (90% band stretched x{min(f90):.2f}-{max(f90):.2f})" if f90 else ""
    return cal, (
        f"calibrated the {levels}% bands on {len(cv)} held-out validation points of {len(ids)} series{stretch}"
    )

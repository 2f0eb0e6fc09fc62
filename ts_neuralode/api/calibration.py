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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.api.forecast_frame import band_col, fmt_level, levels_of, quantile_columns
from ts_neuralode.api.held_out import (
    data_source,
    held_out_windows,
    window_forecasts,
    windows_from_record,
    windows_record,
)
from ts_neuralode.api.scoring import DEFAULT_BUCKETS, bucket_edges, bucket_of, lead_times
from ts_neuralode.api.training_extent import refuse_trained_windows
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


#: fewer held-out points than this: ``fit`` leaves the bands uncalibrated (and says so)
MIN_FIT_POINTS = 50


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
    cv, table, h, ids = window_forecasts(fc, data_source(datamodule), windows, num_samples, seed)
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

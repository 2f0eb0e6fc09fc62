"""The per-channel scalers of a data set's values (center, scale per channel, as scikit-learn's scalers give) and the
automatic time scale: fitted on the values in memory (:func:`fit_scaler`) or merged from per-series statistics
streamed shard by shard (:func:`merge_scaler`, the Parquet folders)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ts_neuralode.errors import ConfigError, DataError

SCALERS = ("standard", "minmax", "robust", "none", "log")
#: ``"log"``: the natural log of the forecast channels, then the standard scaler (a multiplicative season or growth
#: becomes additive; forecasts and bands map back through ``exp``, so they stay positive). Past covariates are scaled
#: as by ``"standard"``.
LOG = "log"


def log_channels(v: np.ndarray, which: np.ndarray) -> np.ndarray:
    """``v`` [..., D] with the natural log of the channels ``which`` [D] (bool); non-positive values give NaN / -inf
    there (:meth:`~ts_neuralode.data.transform.SeriesTransform.check_table` refuses them first)."""
    out = np.array(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[..., which] = np.log(out[..., which])
    return out


def exp_channels(v: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The inverse of :func:`log_channels` (in place on ``v``, a float64 array it owns)."""
    with np.errstate(over="ignore"):
        v[..., which] = np.exp(v[..., which])
    return v


def fit_scaler(kind: str, x: np.ndarray) -> tuple[float, float]:
    """Fit one scikit-learn scaler on the observed values ``x`` [n]; return (center, scale).

    Values near the float64 limits (e.g. 1e308, whose sum or square overflows, or 1e-310) are first divided by
    a power of two near their largest magnitude (exact), so the statistics are computed in range; center and
    scale are multiplied back. The result may still be non-finite (a range wider than float64); the caller
    reports that."""
    if kind == "none" or x.size == 0:
        return 0.0, 1.0
    if kind == LOG:  # the caller took the log of a forecast channel (or it is a past covariate): standardised
        kind = "standard"
    big = float(np.max(np.abs(x)))
    pow2 = 1.0
    if big > 1e100 or 0.0 < big < 1e-100:
        pow2 = math.ldexp(1.0, math.frexp(big)[1] - 1)  # a power of two in (big / 2, big]
        x = x / pow2
    center, scale = _fit_scaler_unit(kind, x)
    with np.errstate(over="ignore"):
        return center * pow2, scale * pow2


def _fit_scaler_unit(kind: str, x: np.ndarray) -> tuple[float, float]:
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    col = x.reshape(-1, 1)
    if kind == "standard":
        s = StandardScaler().fit(col)
        center, scale = float(s.mean_[0]), float(s.scale_[0])
    elif kind == "minmax":
        s = MinMaxScaler().fit(col)
        center, scale = float(s.data_min_[0]), float(s.data_range_[0])
    elif kind == "robust":
        s = RobustScaler().fit(col)
        center, scale = float(s.center_[0]), float(s.scale_[0])
    else:
        raise ConfigError(f"scaler={kind!r} is not supported; use one of {', '.join(SCALERS)}")
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return center, scale


def auto_time_scale(max_span: float) -> float:
    """Smallest power of 10 such that ``max_span / scale <= 10`` (1.0 for an empty/zero span)."""
    if not np.isfinite(max_span) or max_span <= 0:
        return 1.0
    return float(10.0 ** math.ceil(math.log10(max_span / 10.0) - 1e-12))


def merge_scaler(
    kind: str, n: np.ndarray, mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[list[float], list[float]]:
    """Per-channel (center, scale) of scaler ``kind`` from per-series statistics ``[S, D]`` (count, mean, sum of
    squared deviations, min, max): the standard scaler's mean and population standard deviation merged exactly
    (Chan et al.), as scikit-learn's ``StandardScaler`` / ``MinMaxScaler`` give on all the values; a constant channel
    gets scale 1 as there."""
    d = n.shape[1]
    if kind == "none":
        return [0.0] * d, [1.0] * d
    centers, scales = [], []
    for c in range(d):
        nc = n[:, c]
        tot = float(nc.sum())
        if tot == 0:
            centers.append(0.0)
            scales.append(1.0)
            continue
        if kind == "standard":
            mu = float((nc * mean[:, c]).sum() / tot)
            var = float((m2[:, c].sum() + (nc * (mean[:, c] - mu) ** 2).sum()) / tot)
            center, scale = mu, math.sqrt(var) if var > 0 else 1.0
            if scale < 10 * np.finfo(np.float64).eps * max(1.0, abs(mu)):
                scale = 1.0
        else:  # minmax
            center = float(lo[:, c].min())
            scale = float(hi[:, c].max()) - center
        centers.append(center)
        scales.append(scale if math.isfinite(scale) and scale > 0 else 1.0 if math.isfinite(scale) else scale)
    return centers, scales


def fit_channel_scalers(table, rows: np.ndarray, scaler: str) -> tuple[list[float], list[float], list[bool]]:
    """Per-channel (center, scale) of scaler ``scaler`` fitted on the observed values of ``rows`` [N] (bool) of a
    SeriesTable, and the channels scaled by their log (scaler ``"log"``: the forecast channels, not the past
    covariates). DataError naming file, column and row for a value <= 0 in a log channel, or a column whose values
    span more than float64 can scale."""
    log = [scaler == LOG and bool(t) for t in target_channels(table)]
    refuse_non_positive(table, log)
    centers, scales = [], []
    for d in range(table.num_channels):
        x = table.values[rows & table.mask[:, d], d]
        c, s = fit_scaler(scaler, np.log(x) if log[d] else x)
        if not (math.isfinite(c) and math.isfinite(s)):
            obs = np.flatnonzero(rows & table.mask[:, d])
            k = int(obs[np.argmax(np.abs(table.values[obs, d]))])
            raise DataError(
                f"{table.where(table.channel_names[d], k)}: value {table.values[k, d]:g}: the column's "
                f"values span more than float64 can scale ({scaler} scaler); rescale the column "
                "(e.g. divide it by 1e300) or fix the value"
            )
        centers.append(c)
        scales.append(s)
    return centers, scales, log


def target_channels(table) -> np.ndarray:
    """``[D]`` bool: the channels of a SeriesTable that are forecast (the value columns, not the past covariates read
    after them)."""
    n_past = len((table.extra.get("columns") or {}).get("past") or [])
    return np.arange(table.num_channels) < table.num_channels - n_past


def positive_targets(table) -> bool:
    """Whether every observed value of the forecast channels is > 0 (what scaler ``"log"`` needs)."""
    return all(bool((table.values[table.mask[:, d], d] > 0).all()) for d in np.flatnonzero(target_channels(table)))


def refuse_non_positive(table, log: Sequence[bool]) -> None:
    """DataError naming file, column and row for the first observed value <= 0 of a channel scaled by its log."""
    for d in np.flatnonzero(np.asarray(log, dtype=bool)):
        bad = np.flatnonzero(table.mask[:, d] & ~(table.values[:, d] > 0))
        if bad.size:
            raise DataError(
                f"{table.where(table.channel_names[d], int(bad[0]))}: value {table.values[bad[0], d]:g}: scaler "
                "'log' needs positive values; fix the value, or pass --data.scaler standard"
            )


def resolve_time_scale(time_scale: float | str, span: Callable[[], float]) -> float:
    """The time scale as a number: ``"auto"`` -> :func:`auto_time_scale` of ``span()`` (the longest stretch of raw time
    the data module fits on); a positive number as given; anything else a ConfigError."""
    if time_scale == "auto":
        return auto_time_scale(span())
    try:
        ts = float(time_scale)
    except (TypeError, ValueError):
        ts = math.nan
    if not (ts > 0 and math.isfinite(ts)):
        raise ConfigError(f"time_scale={time_scale!r} must be 'auto' or a positive number")
    return ts


__all__ = [
    "LOG",
    "SCALERS",
    "auto_time_scale",
    "exp_channels",
    "fit_channel_scalers",
    "fit_scaler",
    "log_channels",
    "merge_scaler",
    "positive_targets",
    "refuse_non_positive",
    "resolve_time_scale",
    "target_channels",
]

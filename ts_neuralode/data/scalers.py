"""The per-channel scalers of a data set's values (center, scale per channel, as scikit-learn's scalers give) and the
automatic time scale: fitted on the values in memory (:func:`fit_scaler`) or merged from per-series statistics
streamed shard by shard (:func:`merge_scaler`, the Parquet folders)."""

from __future__ import annotations

import math

import numpy as np

from ts_neuralode.errors import ConfigError

SCALERS = ("standard", "minmax", "robust", "none")


def fit_scaler(kind: str, x: np.ndarray) -> tuple[float, float]:
    """Fit one scikit-learn scaler on the observed values ``x`` [n]; return (center, scale).

    Values near the float64 limits (e.g. 1e308, whose sum or square overflows, or 1e-310) are first divided by
    a power of two near their largest magnitude (exact), so the statistics are computed in range; center and
    scale are multiplied back. The result may still be non-finite (a range wider than float64); the caller
    reports that."""
    if kind == "none" or x.size == 0:
        return 0.0, 1.0
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


__all__ = ["SCALERS", "fit_scaler", "merge_scaler", "auto_time_scale"]

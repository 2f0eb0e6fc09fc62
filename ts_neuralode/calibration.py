"""Conformal calibration of the forecast bands, per horizon bucket, from backtest residuals.

A model's L% band ``[lo, hi]`` around its point forecast ``m`` covers L% of what happens only when the model's
predictive distribution is right. Split conformal calibration measures how far off it is on backtest windows
(:func:`ts_neuralode.backtest.cross_validation`) and rescales the band: for each point the score

    s = max((m - y) / (m - lo), (y - m) / (hi - m))

is the factor by which the band must be stretched (about ``m``, each side keeping its own width) to reach ``y``;
the factor ``c`` of level L in horizon bucket b is the ``ceil((n + 1) L/100)``-th smallest of the bucket's n
scores, so the stretched band ``[m - c (m - lo), m + c (hi - m)]`` covers at least L% of exchangeable new points.
Buckets are equal slices of the backtest horizon by lead time (time after the cutoff; in ``predict``: after the
series' last observation; leads beyond the horizon use the last bucket). A bucket with fewer than
``MIN_POINTS`` scores takes the factor pooled over all buckets.

The calibration is a small JSON file in the model directory (``calibration.json``), read by
``Forecaster.load`` and applied by ``Forecaster.predict(..., calibrated=True)`` /
``ts-neuralode forecast --calibrated``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ts_neuralode.errors import ForecastError

FILE = "calibration.json"
FORMAT = "ts_neuralode.calibration/1"
MIN_POINTS = 20


def conformal_factor(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores`` for coverage ``level`` percent (inf when too few scores)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    k = math.ceil((n + 1) * level / 100.0)
    return float(s[k - 1]) if 1 <= k <= n else math.inf


def band_scores(y: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The stretch factor that makes each band reach its ``y`` (see the module docstring)."""
    tiny = 1e-12 * np.maximum(1.0, np.abs(mean))
    below = (mean - y) / np.maximum(mean - lo, tiny)
    above = (y - mean) / np.maximum(hi - mean, tiny)
    return np.maximum(below, above)


def fit(cv: pd.DataFrame, model: str, horizon: float, buckets: int = 4, unit_ns: int | None = None,
        levels: list[float] | None = None, lead: np.ndarray | None = None) -> dict:
    """Per-bucket conformal factors of ``model``'s bands from a cross-validation frame (raw time units). ``lead``:
    each row's time after the last observation its forecast conditioned on (what ``predict`` buckets by);
    default ``ds - cutoff``."""
    from ts_neuralode.backtest import bucket_edges, bucket_of, lead_times, levels_of

    edges = bucket_edges(horizon, buckets)
    b = bucket_of(lead_times(cv, unit_ns) if lead is None else np.asarray(lead, dtype=np.float64), edges)
    found = levels_of(cv, model)
    levels = found if levels is None else [lv for lv in found if float(lv) in {float(x) for x in levels}]
    if not levels:
        raise ForecastError(f"the backtest frame has no bands of {model!r} to calibrate; pass level=[...]")
    factors: dict[str, list[float]] = {}
    counts = [int((b == k).sum()) for k in range(len(edges) - 1)]
    y, m = cv["y"].to_numpy(float), cv[model].to_numpy(float)
    for lv in levels:
        tag = f"{float(lv):g}"
        s = band_scores(y, m, cv[f"{model}-lo-{tag}"].to_numpy(float), cv[f"{model}-hi-{tag}"].to_numpy(float))
        pooled = conformal_factor(s, float(lv))
        factors[tag] = [conformal_factor(s[b == k], float(lv)) if counts[k] >= MIN_POINTS else pooled
                        for k in range(len(edges) - 1)]
    return {"format": FORMAT, "model": model, "horizon": float(horizon), "edges": edges.tolist(),
            "points": counts, "factors": factors}


def apply(frame: pd.DataFrame, calibration: Mapping[str, Any], name: str, lead: np.ndarray) -> pd.DataFrame:
    """``frame`` (a forecast) with every calibrated level's band stretched by its bucket's factor; ``lead`` is each
    row's time after its series' last observation (raw units). Levels without a factor raise ForecastError."""
    from ts_neuralode.backtest import bucket_of

    edges = np.asarray(calibration["edges"], dtype=np.float64)
    b = bucket_of(np.asarray(lead, dtype=np.float64), edges)
    out = frame.copy()
    m = out[name].to_numpy(float)
    for col in [c for c in out.columns if c.startswith(f"{name}-lo-")]:
        tag = col[len(name) + 4:]
        f = calibration["factors"].get(f"{float(tag):g}")
        if f is None:
            raise ForecastError(f"the model's calibration has no factors for level {tag} (it has "
                                f"{', '.join(calibration['factors'])}); ask for those levels or calibrate again")
        c = np.asarray(f, dtype=np.float64)[b]
        out[col] = m - c * (m - out[col].to_numpy(float))
        hi = f"{name}-hi-{tag}"
        out[hi] = m + c * (out[hi].to_numpy(float) - m)
    return out


def save(model_dir: str | os.PathLike, calibration: Mapping[str, Any]) -> Path:
    from ts_neuralode.atomic import atomic_write_text

    path = Path(model_dir) / FILE
    atomic_write_text(path, json.dumps(dict(calibration), indent=2) + "\n")
    return path


def load(model_dir: str | os.PathLike) -> dict | None:
    """The calibration stored in a model directory, or None."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ForecastError(f"{path}: not valid JSON ({err}); calibrate the model again") from err
    if data.get("format") != FORMAT:
        raise ForecastError(f"{path}: unknown calibration format {data.get('format')!r}; calibrate the model again")
    return data

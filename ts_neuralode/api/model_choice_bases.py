"""Which base forecasts the automatic model choice searches, judged on the history before any trial trains.

A window model learns a correction on top of a base forecast from its context (:mod:`ts_neuralode.models.window`).
Trials are scored on one validation horizon per series; with one or a few series that is a handful of points, and a
base that extrapolates, such as the context's least-squares line, can win it by chance and then forecast far worse
than the last value: on daily ozone readings the trend base through the last horizon won the validation horizon
(0.64 against 1.06 for the last value, in scaled units) and forecast the held-out windows at 1.83x the last value's
MAE; on the lynx cycle 1.62x (results/peers_irregular.md, "Unseen data").

A base needs no training, so it can be scored over many forecast origins of the history at once:
:func:`rolling_ratio` forecasts each sampled series from up to :data:`MAX_ORIGINS` origins (observation times with a
context before them and a horizon after them) with the base and with the last value (:class:`WindowStats`, the
code the models use), and returns the median over series and channels of the base's MAE over the last value's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ts_neuralode.data.batch import Batch, rows_batch
from ts_neuralode.data.scalers import target_channels
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.window import WindowStats

#: series sampled (seeded) for the screen
MAX_SERIES = 64
#: forecast origins per series, evenly spread over the history (the latest always among them)
MAX_ORIGINS = 16
#: points of a window's context, and of its horizon, kept (evenly thinned): the screen's memory stays bounded
MAX_POINTS = 200
#: windows needed (over all sampled series) for the screen to judge; with fewer it keeps the base
MIN_WINDOWS = 4


def _thin(idx: np.ndarray) -> np.ndarray:
    """At most :data:`MAX_POINTS` of ``idx``, evenly spaced, its first and last kept."""
    if len(idx) <= MAX_POINTS:
        return idx
    return idx[np.linspace(0, len(idx) - 1, MAX_POINTS).round().astype(np.int64)]


def _windows(table: Any, series: np.ndarray, horizon: float, context: float, channels: np.ndarray) -> Batch | None:
    """One batch row per (series, origin): the context ``(o - context, o]`` observed, the horizon ``(o, o + horizon]``
    the targets, raw times and values (float64), ``series_idx`` the row's position in ``series``; None without a
    window."""
    rows: list[tuple[np.ndarray, np.ndarray, int]] = []
    for k, s in enumerate(series):
        lo, hi = int(table.offsets[s]), int(table.offsets[s + 1])
        t = table.times[lo:hi]
        seen = table.mask[lo:hi][:, channels].any(1)
        ok = seen & (t - t[0] >= context) & (t <= t[-1] - horizon)
        cand = np.flatnonzero(ok)
        if cand.size > MAX_ORIGINS:
            cand = cand[np.linspace(0, cand.size - 1, MAX_ORIGINS).round().astype(np.int64)]
        for i in cand:
            o = t[i]
            a = int(np.searchsorted(t, o - context, "right"))
            b = int(np.searchsorted(t, o + horizon, "right"))
            rows.append((_thin(np.arange(lo + a, lo + i + 1)), _thin(np.arange(lo + i + 1, lo + b)), k))
    rows = [(c, h, k) for c, h, k in rows if len(c) >= 2 and len(h) >= 1]
    if not rows:
        return None
    batch = rows_batch(table, [np.concatenate([c, h]) for c, h, _ in rows], [len(c) for c, _, _ in rows], channels)
    return replace(batch, series_idx=torch.as_tensor([k for _, _, k in rows], dtype=torch.long))


def rolling_ratio(
    table: Any, horizon: float, context: float, base: str, period: float | None = None, seed: int = 0
) -> tuple[float | None, int]:
    """``(ratio, windows)``: the median over the sampled series and forecast channels of ``base``'s MAE over the last
    value's (each channel in its own units), both forecast from the context ``context`` before each origin over the
    next ``horizon`` (raw time units); None with fewer than :data:`MIN_WINDOWS` windows (or where the last value never
    missed)."""
    rng = np.random.default_rng(seed)
    n = table.n_series
    series = np.sort(rng.choice(n, MAX_SERIES, replace=False)) if n > MAX_SERIES else np.arange(n)
    batch = _windows(table, series, horizon, context, np.flatnonzero(target_channels(table)))
    if batch is None or batch.batch_size < MIN_WINDOWS:
        return None, 0 if batch is None else batch.batch_size
    q = batch.times_per_sample().unsqueeze(-1).expand_as(batch.values)
    w = batch.target_mask
    err = {
        kind: ((WindowStats(batch, "none", kind, period).base(q) - batch.values).abs() * w).sum(1)
        for kind in ("last", base)
    }
    # per series and channel: its windows' errors summed
    owner, shape = batch.series_idx, (len(series), batch.values.shape[-1])
    last = torch.zeros(shape, dtype=w.dtype).index_add_(0, owner, err["last"])
    mine = torch.zeros(shape, dtype=w.dtype).index_add_(0, owner, err[base])
    judged = last > 0
    if not bool(judged.any()):
        return None, batch.batch_size
    return float((mine[judged] / last[judged]).median()), batch.batch_size


def trend_is_searched(fixed: dict[str, Any], table: Any, seed: int = 0) -> tuple[bool, str | None]:
    """Whether the search tries the trend base (``model.base`` = ``"trend"``, a starting point on the last horizon of
    context): without a season, unless its rolling forecasts over the history lose to the last value's (median ratio
    >= 1). Returns the decision and a line saying what was measured (None when nothing was measured)."""
    if table is None or fixed.get("data.season") is not None or "model.base" in fixed:
        return True, None
    horizon = float(table.codec.duration(fixed.get("data.horizon"), "horizon", ConfigError))
    ratio, n = rolling_ratio(table, horizon, horizon, "trend", seed=seed)
    if ratio is None:
        return True, None
    keep = ratio < 1.0
    verdict = "searched" if keep else "not searched"
    return keep, (
        f"base screen: the trend through the last horizon forecast the history at {ratio:.2f}x the last value's MAE "
        f"(median over series and channels, {n} rolling windows): the trend base is {verdict}"
    )


__all__ = ["MAX_ORIGINS", "MAX_SERIES", "rolling_ratio", "trend_is_searched"]

"""Building :class:`~ts_neuralode.data.batch.Batch` objects from precomputed per-series arrays.

Everything per series is computed once (:class:`SeriesArrays`, :class:`TaskSpec`, :class:`ForecastSpec`); a
collate call is a handful of vectorised numpy gathers/scatters (no per-series Python loop), so it is cheap
enough to run in the main process or in DataLoader workers.

Forecast windows (:class:`ForecastSpec`): a batch item is a window of one series around a cutoff ``c``:
the context ``c - context <= t <= c`` (every observed value; ``context=None``: all history up to ``c``) is the
conditioning set (``obs_mask``), the horizon ``c < t <= c + horizon`` holds the targets (``target_mask``), and
nothing else of the series enters the batch. Boundaries are inclusive as written, up to a relative 1e-9 for
float rounding of the raw times. Training draws a new cutoff for every item of every batch (uniformly among
the observation times whose next observation lies within the horizon, so every window has a target —
the same situation as a forecast from a history that ends at an observation); validation/test windows have
fixed cutoffs. With ``time_origin="series"`` the window's model times start at 0 at its first point (the
forecaster, given a history — cut to ``context`` or not — starts its series at 0 the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.errors import ConfigError

LAYOUTS = ("union", "padded")


def auto_layout(times: np.ndarray, counts: np.ndarray, task: str) -> str:
    """What ``layout="auto"`` batches with: one union grid where the series (nearly) share their time stamps (at most
    twice as many distinct ``times`` as the longest series has points), else per-series padded grids. A union over
    series with their own times has up to B × T points and every recurrent model steps through each of them
    (measured: an ODE-RNN epoch on 30 irregular series, 65 s as a union, 8 s padded). The forecast task pads always:
    its windows start at different cutoffs, so even shared stamps do not make one short grid."""
    if task == "forecast" or len(counts) == 0:
        return "padded"
    return "union" if len(np.unique(times)) <= 2 * int(np.max(counts)) else "padded"


@dataclass
class SeriesArrays:
    """Concatenated per-series arrays in model units.

    Attributes:
        times: ``[N]`` float32 model times (strictly increasing within a series).
        values: ``[N, D]`` float32 normalised values, 0 where not observed.
        mask: ``[N, D]`` bool observed; ``mask_f`` the same as float32.
        starts / counts: ``[S]`` int64 first row and number of rows of each series.
        raw_times: ``[N]`` float64 raw times (the table's; forecast windows are measured on them), or None.
        covariates: known-future covariates of the series
            (:class:`~ts_neuralode.data.covariates.CovariateSource`), attached to every batch; or None.
        scored: ``[D]`` float 0/1: channels that may be targets (0: past-only covariates); None: all.
    """

    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    raw_times: np.ndarray | None = None
    covariates: Any = None
    scored: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mask_f = self.mask.astype(np.float32)

    @classmethod
    def from_table(cls, table, transform, origins: np.ndarray) -> SeriesArrays:
        counts = table.counts.astype(np.int64)
        origin_rows = np.repeat(np.asarray(origins, dtype=np.float64), counts)
        times = transform.raw_to_model_time(table.times, origin_rows).astype(np.float32)
        values = np.where(table.mask, transform.transform_values(np.nan_to_num(table.values)), 0.0).astype(np.float32)
        return cls(
            times=times,
            values=values,
            mask=table.mask.copy(),
            starts=table.offsets[:-1].astype(np.int64),
            counts=counts,
            raw_times=np.asarray(table.times, dtype=np.float64),
        )

    @property
    def n_series(self) -> int:
        return len(self.counts)


@dataclass
class TaskSpec:
    """What is observed and what is a target, per series.

    Attributes:
        cond_count: ``[S]`` int64: the first ``cond_count[s]`` points of series ``s`` may be observed
            (all points for interpolation/prediction; the points up to the cut for extrapolation).
        targets_after: False: every point is a target (interpolation: reconstruct all); True: only the
            points after the conditioning window (extrapolation).
        fraction: fraction of the conditioning candidates observed (at least one per series).
        fixed_obs: ``[N]`` bool precomputed selection (validation/test: same subsample every epoch), or
            None to draw a fresh random subsample at every collate (training).
        cutoff: ``[S]`` float32 model-time cut (extrapolation), or None: each series' last time (so for
            interpolation every target lies at or before the cutoff, held-out tail points included).
    """

    cond_count: np.ndarray
    targets_after: bool = False
    fraction: float = 1.0
    fixed_obs: np.ndarray | None = None
    cutoff: np.ndarray | None = None


#: Relative slack of the window boundaries (float rounding of raw times, e.g. datetimes in hours).
WINDOW_RTOL = 1e-9


def segment_searchsorted(
    times: np.ndarray, start: np.ndarray, count: np.ndarray, x: np.ndarray, side: str = "left"
) -> np.ndarray:
    """Per item ``i``: how many of ``times[start[i] : start[i] + count[i]]`` (sorted) are ``< x[i]`` (``side
    "left"``) or ``<= x[i]`` (``"right"``) — ``np.searchsorted`` on many segments at once, by a vectorised
    bisection (``log2(max count)`` numpy steps, exact, no Python loop over segments)."""
    start, count = np.asarray(start, dtype=np.int64), np.asarray(count, dtype=np.int64)
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.zeros_like(count), count.copy()
    last = np.maximum(count - 1, 0)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        v = times[start + np.minimum(mid, last)] if len(times) else np.zeros(len(mid))
        right = (v <= x) if side == "right" else (v < x)
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)


def window_slack(cutoff: np.ndarray, *durations: float | None) -> np.ndarray:
    """The absolute slack :data:`WINDOW_RTOL` allows around window boundaries near ``cutoff``."""
    scale = np.abs(np.asarray(cutoff, dtype=np.float64)) + 1.0
    for d in durations:
        if d is not None:
            scale = scale + abs(float(d))
    return WINDOW_RTOL * scale


def context_start(
    times: np.ndarray,
    start: np.ndarray,
    count: np.ndarray,
    cutoff: np.ndarray,
    context: float | None,
    horizon: float | None = None,
) -> np.ndarray:
    """Per segment: the position (within it) of the first time ``>= cutoff - context`` — where a context
    window of duration ``context`` before ``cutoff`` starts (0 for ``context=None``: all history). One rule for
    training windows and for a forecast conditioned on the recent history (``Forecaster.predict(context=)``)."""
    if context is None:
        return np.zeros(len(np.atleast_1d(cutoff)), dtype=np.int64)
    eps = window_slack(cutoff, context, horizon)
    return segment_searchsorted(times, start, count, np.asarray(cutoff, dtype=np.float64) - context - eps, "left")


def subset_table(table, idx, lo=None, hi=None):
    """A SeriesTable with series ``idx`` only (in that order), and of each only rows ``lo[k]:hi[k]`` (positions
    within the series; default all). Each range is clipped to keep at least one row of its series."""
    idx = np.asarray(list(idx), dtype=np.int64)
    count = table.counts[idx].astype(np.int64)
    lo = np.zeros_like(count) if lo is None else np.clip(np.asarray(lo, dtype=np.int64), 0, count - 1)
    hi = count if hi is None else np.clip(np.asarray(hi, dtype=np.int64), lo + 1, count)
    n = hi - lo
    first = np.cumsum(n) - n
    rows = np.repeat(table.offsets[idx] + lo, n) + np.arange(int(n.sum())) - np.repeat(first, n)
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    return table.take(rows, offsets, np.asarray(table.ids)[idx])  # row-aligned fields (exact times, rows) too


@dataclass
class ForecastSpec:
    """Forecast windows (see the module docstring); times and durations in raw units.

    Attributes:
        horizon: how far after the cutoff the targets reach (> 0).
        context: how far before the cutoff the conditioning window reaches, or None: all history.
        end: ``[S]`` no target after this raw time (training under a time split: the validation cutoff;
            ``inf`` otherwise).
        origin: ``[S]`` raw time origin of each series (the transform's); time_scale: raw units per model unit.
        shift: True (``time_origin="series"``): a window's model time 0 is its first point; False: ``origin``.
        cutoff: ``[S]`` fixed cutoffs (validation/test), or None: draw one per item from the anchors.
        anchor_rows / anchor_start / anchor_count: the candidate cutoff rows of each series (rows into the
            arrays, grouped by series: series ``s`` owns ``anchor_rows[anchor_start[s]:][:anchor_count[s]]``).
    """

    horizon: float
    context: float | None
    end: np.ndarray
    origin: np.ndarray
    time_scale: float
    shift: bool = True
    cutoff: np.ndarray | None = None
    anchor_rows: np.ndarray | None = None
    anchor_start: np.ndarray | None = None
    anchor_count: np.ndarray | None = None

    def with_anchors(self, arrays: SeriesArrays) -> ForecastSpec:
        """The same spec drawing random cutoffs: every observation whose next observation (same series) lies
        in ``(t, min(t + horizon, end)]``."""
        raw = arrays.raw_times
        n = len(raw)
        seg = np.repeat(np.arange(arrays.n_series), arrays.counts)
        has_next = np.zeros(n, dtype=bool)
        if n:
            has_next[:-1] = seg[1:] == seg[:-1]
        nxt = np.append(raw[1:], np.inf)[:n]
        reach = np.minimum(raw + self.horizon, self.end[seg]) + window_slack(raw, self.horizon)
        cand = has_next & (nxt <= reach)
        rows = np.flatnonzero(cand)
        count = np.bincount(seg[rows], minlength=arrays.n_series).astype(np.int64)
        start = (np.cumsum(count) - count).astype(np.int64)
        return ForecastSpec(
            self.horizon, self.context, self.end, self.origin, self.time_scale, self.shift, None, rows, start, count
        )

    def cutoffs(self, arrays: SeriesArrays, idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """``[b]`` raw cutoffs of items ``idx``: the fixed ones, or a uniform draw among each series' anchors."""
        if self.cutoff is not None:
            return self.cutoff[idx]
        rng = rng if rng is not None else _torch_seeded_rng()
        pick = np.floor(rng.random(len(idx)) * self.anchor_count[idx]).astype(np.int64)
        return arrays.raw_times[self.anchor_rows[self.anchor_start[idx] + pick]]

    def windows(
        self, arrays: SeriesArrays, idx: np.ndarray, cutoff: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(first row, rows, conditioning rows)`` ``[b]`` of each item's window around ``cutoff``."""
        raw, start, count = arrays.raw_times, arrays.starts[idx], arrays.counts[idx]
        eps = window_slack(cutoff, self.horizon, self.context)
        lo = context_start(raw, start, count, cutoff, self.context, self.horizon)
        cond_end = segment_searchsorted(raw, start, count, cutoff + eps, "right")
        hi = segment_searchsorted(raw, start, count, np.minimum(cutoff + self.horizon, self.end[idx]) + eps, "right")
        return start + lo, hi - lo, cond_end - lo


def subsample(
    seg: np.ndarray, cand: np.ndarray, counts: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Pick ``max(1, round(fraction * n_cand))`` random candidates in each segment.

    ``seg`` [n] segment id per point, sorted (points of a segment are contiguous), ``cand`` [n] bool,
    ``counts`` [n_seg] points per segment. Returns a bool [n] selection. One sort, no Python loop: each
    point gets the key ``2 * seg + u`` (``u ~ U(0, 1)`` for candidates, 1.5 otherwise); the k-th smallest
    key of a segment is its threshold."""
    if fraction >= 1.0:
        return cand.copy()
    key = seg * 2.0 + np.where(cand, rng.random(len(seg)), 1.5)
    srt = np.sort(key)
    n_cand = np.bincount(seg, weights=cand, minlength=len(counts)).astype(np.int64)
    k = np.maximum(1, np.rint(fraction * n_cand).astype(np.int64))
    seg_start = np.cumsum(counts) - counts
    thr = srt[seg_start + np.minimum(k, counts) - 1]
    return cand & (key <= thr[seg])


def collate(
    arrays: SeriesArrays,
    idx,
    layout: str = "union",
    spec: TaskSpec | ForecastSpec | None = None,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Batch of series ``idx`` (positions into ``arrays``; with a :class:`ForecastSpec`, one window each).

    ``spec=None`` conditions on every observed value and targets every observed value (prediction).
    ``layout``: "union" (``times`` [T], the sorted union of the batch's times) or "padded" (``times``
    [B, T], each row the series' own times, padded by repeating the last time)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r} is not supported; use 'union' or 'padded'")
    idx = np.asarray(idx, dtype=np.int64)
    b = len(idx)
    if isinstance(spec, ForecastSpec):
        cut_raw = spec.cutoffs(arrays, idx, rng)
        row0, cnt, n_cond = spec.windows(arrays, idx, cut_raw)
    else:
        row0, cnt = arrays.starts[idx], arrays.counts[idx]
    n = int(cnt.sum())
    seg = np.repeat(np.arange(b), cnt)
    first = np.cumsum(cnt) - cnt
    pos = np.arange(n) - np.repeat(first, cnt)
    flat = np.repeat(row0, cnt) + pos
    v = arrays.values[flat]
    m = arrays.mask_f[flat]

    origin = None
    if isinstance(spec, ForecastSpec):
        origin = arrays.raw_times[row0] if spec.shift else spec.origin[idx]
        t = ((arrays.raw_times[flat] - np.repeat(origin, cnt)) / spec.time_scale).astype(np.float32)
        cutoff = (cut_raw - origin) / spec.time_scale
        cond = pos < np.repeat(n_cond, cnt)
        obs_mask, tgt_mask = m * cond[:, None], m * ~cond[:, None]
    else:
        t = arrays.times[flat]
        cutoff = t[first + cnt - 1]  # each series' last time (interpolation / prediction)
        if spec is None:
            obs_mask = tgt_mask = m
        else:
            cond = pos < np.repeat(spec.cond_count[idx], cnt)
            if spec.fixed_obs is not None:
                obs_pt = spec.fixed_obs[flat]
            else:
                obs_pt = subsample(seg, cond, cnt, spec.fraction, rng if rng is not None else _torch_seeded_rng())
            obs_mask = m * obs_pt[:, None]
            tgt_mask = m * ~cond[:, None] if spec.targets_after else m
            if spec.cutoff is not None:
                cutoff = spec.cutoff[idx]

    d = v.shape[1]
    if layout == "union":
        grid, col = np.unique(t, return_inverse=True)
        tt = grid.astype(np.float32)
        width = len(grid)
    else:
        width = int(cnt.max()) if b else 0
        col = pos
        tt = np.repeat(t[first + cnt - 1][:, None], width, axis=1)
    lin = seg * width + col
    if layout == "padded":
        tt.reshape(-1)[lin] = t
    out = np.zeros((3, b * width, d), dtype=np.float32)
    out[0, lin] = v
    out[1, lin] = obs_mask
    out[2, lin] = tgt_mask if arrays.scored is None else tgt_mask * arrays.scored
    out = torch.from_numpy(out).view(3, b, width, d)
    time_mask = np.zeros(b * width, dtype=bool)
    time_mask[lin] = True
    cov = None
    if arrays.covariates is not None:  # a forecast window needs u on its own span only
        span = (arrays.raw_times[row0], arrays.raw_times[row0 + cnt - 1]) if origin is not None else (None, None)
        cov = arrays.covariates.batch(idx, origin, *span)
    return Batch(
        times=torch.from_numpy(tt),
        values=out[0],
        obs_mask=out[1],
        target_mask=out[2],
        time_mask=torch.from_numpy(time_mask).view(b, width),
        series_idx=torch.from_numpy(idx.copy()),
        cutoff=torch.from_numpy(np.asarray(cutoff, dtype=np.float32)),
        covariates=cov,
    )


def _torch_seeded_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's RNG (torch seeds each DataLoader worker differently, and
    Lightning's seed_everything seeds torch), so random subsamples are reproducible and differ by worker."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class Collator:
    """Picklable ``collate_fn`` for DataLoaders whose dataset yields series indices."""

    def __init__(self, arrays: SeriesArrays, layout: str, spec: TaskSpec | ForecastSpec | None):
        self.arrays, self.layout, self.spec = arrays, layout, spec

    def __call__(self, items) -> Batch:
        return collate(self.arrays, np.asarray(items, dtype=np.int64), self.layout, self.spec)

"""Building :class:`~ts_neuralode.data.batch.Batch` objects from precomputed per-series arrays.

Everything per series is computed once (:class:`SeriesArrays`, :class:`TaskSpec`); a collate call is a
handful of vectorised numpy gathers/scatters (no per-series Python loop), so it is cheap enough to run in
the main process or in DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.errors import ConfigError

LAYOUTS = ("union", "padded")


@dataclass
class SeriesArrays:
    """Concatenated per-series arrays in model units.

    Attributes:
        times: ``[N]`` float32 model times (strictly increasing within a series).
        values: ``[N, D]`` float32 normalised values, 0 where not observed.
        mask: ``[N, D]`` bool observed.
        starts / counts: ``[S]`` int64 first row and number of rows of each series.
    """

    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_table(cls, table, transform, origins: np.ndarray) -> "SeriesArrays":
        counts = table.counts.astype(np.int64)
        origin_rows = np.repeat(np.asarray(origins, dtype=np.float64), counts)
        times = transform.raw_to_model_time(table.times, origin_rows).astype(np.float32)
        values = np.where(table.mask, transform.transform_values(np.nan_to_num(table.values)), 0.0).astype(np.float32)
        return cls(times=times, values=values, mask=table.mask.copy(), starts=table.offsets[:-1].astype(np.int64),
                   counts=counts)

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
        cutoff: ``[S]`` float32 model-time cut (extrapolation), or None: the last observed time.
    """

    cond_count: np.ndarray
    targets_after: bool = False
    fraction: float = 1.0
    fixed_obs: np.ndarray | None = None
    cutoff: np.ndarray | None = None


def subsample(seg: np.ndarray, cand: np.ndarray, counts: np.ndarray, fraction: float,
              rng: np.random.Generator) -> np.ndarray:
    """Pick ``max(1, round(fraction * n_cand))`` random candidates in each segment.

    ``seg`` [n] segment id per point, sorted (points of a segment are contiguous), ``cand`` [n] bool,
    ``counts`` [n_seg] points per segment. Returns a bool [n] selection. One argsort, no Python loop."""
    if fraction >= 1.0:
        return cand.copy()
    n = len(seg)
    key = seg * 2.0 + np.where(cand, rng.random(n), 1.5)
    order = np.argsort(key)
    seg_start = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(seg_start, counts)
    n_cand = np.bincount(seg, weights=cand, minlength=len(counts))
    k = np.maximum(1, np.rint(fraction * n_cand)).astype(np.int64)
    return cand & (rank < k[seg])


def collate(arrays: SeriesArrays, idx, layout: str = "union", spec: TaskSpec | None = None,
            rng: np.random.Generator | None = None) -> Batch:
    """Batch of series ``idx`` (positions into ``arrays``).

    ``spec=None`` conditions on every observed value and targets every observed value (prediction).
    ``layout``: "union" (``times`` [T], the sorted union of the batch's times) or "padded" (``times``
    [B, T], each row the series' own times, padded by repeating the last time)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r} is not supported; use 'union' or 'padded'")
    idx = np.asarray(idx, dtype=np.int64)
    b = len(idx)
    cnt = arrays.counts[idx]
    n = int(cnt.sum())
    seg = np.repeat(np.arange(b), cnt)
    first = np.cumsum(cnt) - cnt
    pos = np.arange(n) - np.repeat(first, cnt)
    flat = np.repeat(arrays.starts[idx], cnt) + pos
    t = arrays.times[flat]
    v = arrays.values[flat]
    m = arrays.mask[flat]

    if spec is None:
        obs_pt = np.ones(n, dtype=bool)
        tgt_pt = obs_pt
        cutoff = None
    else:
        cond = pos < np.repeat(spec.cond_count[idx], cnt)
        if spec.fixed_obs is not None:
            obs_pt = spec.fixed_obs[flat]
        else:
            obs_pt = subsample(seg, cond, cnt, spec.fraction, rng if rng is not None else _torch_seeded_rng())
        tgt_pt = ~cond if spec.targets_after else np.ones(n, dtype=bool)
        cutoff = None if spec.cutoff is None else spec.cutoff[idx]
    if cutoff is None:
        cutoff = np.maximum.reduceat(np.where(obs_pt, t, -np.inf), first).astype(np.float32)
    obs_mask = m & obs_pt[:, None]
    tgt_mask = m & tgt_pt[:, None]

    d = v.shape[1]
    if layout == "union":
        grid, col = np.unique(t, return_inverse=True)
        tt = grid.astype(np.float32)
        width = len(grid)
    else:
        width = int(cnt.max()) if b else 0
        col = pos
        tt = np.repeat(t[first + cnt - 1][:, None], width, axis=1)
        tt[seg, col] = t
    values = np.zeros((b, width, d), dtype=np.float32)
    om = np.zeros((b, width, d), dtype=np.float32)
    tm_ = np.zeros((b, width, d), dtype=np.float32)
    time_mask = np.zeros((b, width), dtype=bool)
    values[seg, col] = v
    om[seg, col] = obs_mask
    tm_[seg, col] = tgt_mask
    time_mask[seg, col] = True
    return Batch(times=torch.from_numpy(np.ascontiguousarray(tt)), values=torch.from_numpy(values),
                 obs_mask=torch.from_numpy(om), target_mask=torch.from_numpy(tm_),
                 time_mask=torch.from_numpy(time_mask), series_idx=torch.from_numpy(idx.copy()),
                 cutoff=torch.from_numpy(np.asarray(cutoff, dtype=np.float32)))


def _torch_seeded_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's RNG (torch seeds each DataLoader worker differently, and
    Lightning's seed_everything seeds torch), so random subsamples are reproducible and differ by worker."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class Collator:
    """Picklable ``collate_fn`` for DataLoaders whose dataset yields series indices."""

    def __init__(self, arrays: SeriesArrays, layout: str, spec: TaskSpec | None):
        self.arrays, self.layout, self.spec = arrays, layout, spec

    def __call__(self, items) -> Batch:
        return collate(self.arrays, np.asarray(items, dtype=np.int64), self.layout, self.spec)

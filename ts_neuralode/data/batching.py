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
        mask: ``[N, D]`` bool observed; ``mask_f`` the same as float32.
        starts / counts: ``[S]`` int64 first row and number of rows of each series.
    """

    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        self.mask_f = self.mask.astype(np.float32)

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
        cutoff: ``[S]`` float32 model-time cut (extrapolation), or None: each series' last time (so for
            interpolation every target lies at or before the cutoff, held-out tail points included).
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
    m = arrays.mask_f[flat]

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
    out[2, lin] = tgt_mask
    out = torch.from_numpy(out).view(3, b, width, d)
    time_mask = np.zeros(b * width, dtype=bool)
    time_mask[lin] = True
    return Batch(times=torch.from_numpy(tt), values=out[0], obs_mask=out[1], target_mask=out[2],
                 time_mask=torch.from_numpy(time_mask).view(b, width), series_idx=torch.from_numpy(idx.copy()),
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

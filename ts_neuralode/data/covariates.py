"""Known-future covariates: inputs given for any time (a dosing schedule, a price plan, the calendar) that drive
a model's dynamics as a control, ``dh/dt = f(t, h, u(t))``.

Input: extra numeric columns of the same long CSV/DataFrame as the target (``future_cols``). Each column has
its own sample grid per series — the rows where its cell is filled; a row may carry a covariate and no target
value (a dose given when nothing was measured), and a target row may leave the covariate empty. Between its
samples a column is interpolated, per column (``interp``): ``"constant"`` (piecewise constant, right-continuous:
the last sample's value holds until the next sample — a rate switched at known times) or ``"linear"``. Before a
series' first sample a column holds its first value, after its last one its last value (in training; a forecast
must cover its query times, see :meth:`CovariateArrays.check_coverage`). Values are standardised with the
training series' mean and std (``center`` / ``scale``).

Calendar features (``calendar``: ``time_of_day``, ``day_of_week``, ``day_of_year``) need datetimes and are
computed, not interpolated: each is a ``(sin, cos)`` pair of the local wall-clock phase (periods 1 day, 7 days
from Monday 00:00, 365.2425 days from 1 January of 1970; a DST change shifts a series by its offset change).

In a :class:`~ts_neuralode.data.batch.Batch` the covariates are a :class:`~ts_neuralode.data.batch.CovariateBatch`
(defined beside the batch, re-exported here): each series' knots (the union of its columns' sample times, every
column resampled onto them by its own rule — exact for both rules), in the batch's model time, plus the calendar
phases at model time 0. ``CovariateBatch(t)`` evaluates
``u(t)`` for any model time; the models hand it to their evolution (:mod:`ts_neuralode.models.control`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ts_neuralode.data.batch import CovariateBatch
from ts_neuralode.data.batching import segment_searchsorted
from ts_neuralode.data.covariate_spec import CALENDAR, INTERPOLATIONS, CovariateSpec
from ts_neuralode.data.io import _to_numeric, _Where, read_frame
from ts_neuralode.data.timecodec import parse_time_column
from ts_neuralode.errors import DataError, ForecastError


def _read_static(df: pd.DataFrame, code: np.ndarray, out: np.ndarray, cols: list[str], where, ids) -> None:
    """Fill ``out[s, k]`` with series ``s``'s value of static column ``cols[k]`` (DataError when a series holds two
    different values, here or against ``out``'s earlier ones)."""
    for k, c in enumerate(cols):
        ok = df[c].notna().to_numpy() & (code >= 0)
        rows = np.flatnonzero(ok)
        v = df[c].to_numpy(dtype=object)[rows]
        first = pd.Series(v).groupby(code[rows], sort=True).first()
        for s, val in first.items():
            if out[s, k] is None:
                out[s, k] = val
        ref = np.array([out[s, k] for s in code[rows]], dtype=object)
        bad = np.flatnonzero(v != ref)
        if bad.size:
            i, s = int(rows[bad[0]]), int(code[rows[bad[0]]])
            raise DataError(
                f"{where.at(c, i)}: static covariate '{c}' of series {ids[s]!r} is {v[bad[0]]!r} here but "
                f"{out[s, k]!r} elsewhere; a static covariate has one value per series"
            )


def _numeric(col: pd.Series, name: str, where) -> np.ndarray:
    return _to_numeric(col, name, where)


@dataclass
class CovariateArrays:
    """Per-series covariate knots in raw time (aligned with a SeriesTable's series).

    Attributes:
        knots: ``[M]`` float64 raw times, sorted within each series (the union of its columns' sample times).
        values: ``[M, C]`` float64 original values, each column resampled onto the knots by its own rule.
        starts / counts: ``[S]`` the rows of each series.  last: ``[S, C]`` raw time of each column's last sample.
        raw_samples: per column, per series, the sampled values (for fitting the scaler).
        raw_sample_times: per column, per series, the raw times of those samples (None: not recorded).
        static: ``[S, n_static]`` object: each series' static covariate values as read.
        ids: the series ids, in row order (None: not recorded); :meth:`align` matches another table's series.
    """

    knots: np.ndarray
    values: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    last: np.ndarray
    raw_samples: list
    static: np.ndarray = None
    ids: list | None = None
    raw_sample_times: list | None = None

    @classmethod
    def read(
        cls,
        sources: Sequence[Any],
        table,
        spec: CovariateSpec,
        *,
        id_col: str | None,
        time_col: str,
        what: str = "future_cols",
    ) -> CovariateArrays:
        """Read ``spec.future_cols`` from ``sources`` (CSV paths or DataFrames: the history, then optionally a frame
        of future values) and ``spec.static_cols`` (from the first source; later ones may repeat them) for the series
        of ``table`` (matched by id).

        The later sources *replace* the first one's samples: per series and column, from the first time a later
        source holds a value on, only the later sources' samples count (a what-if plan passed as ``future``
        overrides the history's own schedule from its first row on; before it the history's samples stand).
        Samples of one source at the same (series, time) are averaged. With several series every source needs the
        id column (DataError otherwise)."""

        cols, S = spec.future_cols, table.n_series
        per_col: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in cols]
        pos = {str(i): k for k, i in enumerate(table.ids)}
        static = np.full((S, len(spec.static_cols)), None, dtype=object)
        for n_src, src in enumerate(sources if cols or spec.static_cols else ()):
            if isinstance(src, pd.DataFrame):
                df, where = src, _Where("<DataFrame>", False)
            else:
                df, where = read_frame(src), _Where(os.fspath(src), True)
            df = df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c)
            statics = spec.static_cols if n_src == 0 else [c for c in spec.static_cols if c in df.columns]
            for c, what in [(c, "known-future") for c in cols] + [(c, "static") for c in statics]:
                if c not in df.columns:
                    option = "future_cols" if what == "known-future" else "static_cols"
                    raise DataError(
                        f"{where.source}: missing {what} covariate column '{c}' (columns: "
                        f"{', '.join(map(str, df.columns))}); add it or drop it from {option}"
                    )
            if time_col not in df.columns:
                raise DataError(f"{where.source}: missing time column '{time_col}'; the covariate rows need it")
            if len(df) == 0:
                continue
            t, _, _ = parse_time_column(df[time_col], time_col, where, None, table.codec)
            if id_col is not None and id_col in df.columns:
                code = np.array([pos.get(str(v), -1) for v in df[id_col].to_numpy()], dtype=np.int64)
            elif S == 1:
                code = np.zeros(len(df), dtype=np.int64)
            else:
                raise DataError(
                    f"{where.source}: no '{id_col}' column, but the history has {S} series; add the "
                    "series id to every row"
                )
            _read_static(df, code, static, statics, where, table.ids)
            for k, c in enumerate(cols):
                v = _numeric(df[c], c, where)
                ok = ~np.isnan(v) & (code >= 0)
                per_col[k].append((code[ok], t[ok], v[ok], np.full(int(ok.sum()), n_src > 0)))
        # per column: sorted (series, time) samples, the later sources' replacing the first's; duplicates averaged
        samples = []
        for k, c in enumerate(cols):
            code = np.concatenate([p[0] for p in per_col[k]]) if per_col[k] else np.zeros(0, np.int64)
            t = np.concatenate([p[1] for p in per_col[k]]) if per_col[k] else np.zeros(0)
            v = np.concatenate([p[2] for p in per_col[k]]) if per_col[k] else np.zeros(0)
            later = np.concatenate([p[3] for p in per_col[k]]) if per_col[k] else np.zeros(0, bool)
            if later.any():
                first = np.full(S, np.inf)
                np.minimum.at(first, code[later], t[later])
                keep = later | (t < first[code])
                code, t, v = code[keep], t[keep], v[keep]
            order = np.lexsort((t, code))
            code, t, v = code[order], t[order], v[order]
            new = np.ones(len(t), dtype=bool)
            new[1:] = (code[1:] != code[:-1]) | (t[1:] != t[:-1])
            grp = np.flatnonzero(new)
            if len(grp) < len(t):
                v = np.add.reduceat(v, grp) / np.diff(np.append(grp, len(t)))
                code, t = code[grp], t[grp]
            cnt = np.bincount(code, minlength=S)
            if (cnt == 0).any():
                sid = table.ids[int(np.flatnonzero(cnt == 0)[0])]
                raise DataError(
                    f"{table.source}: known-future covariate '{c}' has no value for series {sid!r}; "
                    "fill it in for every series (it drives the model at every time)"
                )
            off = np.concatenate([[0], np.cumsum(cnt)])
            samples.append([(t[off[s] : off[s + 1]], v[off[s] : off[s + 1]]) for s in range(S)])
        knots, values, counts, last = [], [], np.zeros(S, np.int64), np.zeros((S, len(cols)))
        for s in range(S):
            ks = np.unique(np.concatenate([samples[k][s][0] for k in range(len(cols))])) if cols else np.zeros(0)
            vs = np.empty((len(ks), len(cols)))
            for k in range(len(cols)):
                ts, v = samples[k][s]
                last[s, k] = ts[-1]
                if spec.interp[k] == "linear":
                    vs[:, k] = np.interp(ks, ts, v)
                else:
                    vs[:, k] = v[np.clip(np.searchsorted(ts, ks, side="right") - 1, 0, len(ts) - 1)]
            knots.append(ks)
            values.append(vs)
            counts[s] = len(ks)
        starts = (np.cumsum(counts) - counts).astype(np.int64)
        raw = [[samples[k][s][1] for s in range(S)] for k in range(len(cols))]
        raw_t = [[samples[k][s][0] for s in range(S)] for k in range(len(cols))]
        cat = lambda a, w: np.concatenate(a) if a else np.zeros((0,) * w)  # noqa: E731
        missing = [(s, k) for s in range(S) for k in range(len(spec.static_cols)) if static[s, k] is None]
        if missing:
            s, k = missing[0]
            raise DataError(
                f"{table.source}: static covariate '{spec.static_cols[k]}' has no value for series "
                f"{table.ids[s]!r}; fill it in on at least one row of the series"
            )
        return cls(
            cat(knots, 1),
            np.concatenate(values) if values else np.zeros((0, len(cols))),
            starts,
            counts,
            last,
            raw,
            static,
            list(table.ids),
            raw_t,
        )

    def subset(self, idx: Sequence[int]) -> CovariateArrays:
        """The arrays of series ``idx`` (in that order)."""
        idx = np.asarray(list(idx), dtype=np.int64)
        n = self.counts[idx]
        rows = (
            np.concatenate([np.arange(self.starts[i], self.starts[i] + self.counts[i]) for i in idx])
            if len(idx)
            else np.zeros(0, np.int64)
        )
        starts = (np.cumsum(n) - n).astype(np.int64)
        raw = [[col[i] for i in idx] for col in self.raw_samples]
        raw_t = None if self.raw_sample_times is None else [[col[i] for i in idx] for col in self.raw_sample_times]
        ids = None if self.ids is None else [self.ids[i] for i in idx]
        return CovariateArrays(
            self.knots[rows], self.values[rows], starts, n, self.last[idx], raw, self.static[idx], ids, raw_t
        )

    def align(self, ids: Sequence) -> CovariateArrays:
        """The arrays of the series ``ids`` (matched as strings; ForecastError naming one that is not here)."""
        pos = {str(i): k for k, i in enumerate(self.ids or [])}
        missing = [i for i in ids if str(i) not in pos]
        if missing:
            raise ForecastError(f"no covariates were read for series {missing[:5]}")
        return self.subset([pos[str(i)] for i in ids])

    def check_coverage(self, spec: CovariateSpec, ids: Sequence, idx: Sequence[int], until: np.ndarray, codec) -> None:
        """ForecastError naming the column and series when a column's last sample of series ``idx[i]`` lies before
        ``until[i]`` (its latest query time): a known-future covariate must be known for every query time."""
        for i, s in enumerate(idx):
            short = np.flatnonzero(self.last[s] < until[i])
            if short.size:
                c = spec.future_cols[int(short[0])]
                fmt = lambda x: str(codec.from_float(np.array([x]))[0])  # noqa: E731
                raise ForecastError(
                    f"known-future covariate '{c}' is missing for query time {fmt(until[i])} of series "
                    f"{ids[s]!r} (its last value is at {fmt(self.last[s, int(short[0])])}); pass "
                    f"future=DataFrame with {c} up to the last query time"
                )

    def batch(
        self,
        spec: CovariateSpec,
        idx: np.ndarray,
        origin: np.ndarray,
        time_scale: float,
        codec,
        lo: np.ndarray | None = None,
        hi: np.ndarray | None = None,
    ) -> CovariateBatch:
        """The :class:`CovariateBatch` of series ``idx`` whose model time 0 is raw time ``origin`` [b]. With
        ``lo``/``hi`` (raw) only the knots that matter on ``[lo, hi]`` are kept (the last one at or before ``lo``
        through the first one at or after ``hi``)."""

        idx = np.asarray(idx, dtype=np.int64)
        start, count = self.starts[idx], self.counts[idx]
        a = (
            np.zeros(len(idx), np.int64)
            if lo is None
            else np.maximum(segment_searchsorted(self.knots, start, count, lo, "right") - 1, 0)
        )
        b = count if hi is None else np.minimum(segment_searchsorted(self.knots, start, count, hi, "left") + 1, count)
        b = np.maximum(b, a + 1)
        n = b - a
        width = int(n.max()) if len(idx) else 0
        pos = np.minimum(np.arange(width)[None, :], (n - 1)[:, None])  # padding repeats the last knot
        rows = (start + a)[:, None] + pos
        c = len(spec.future_cols)
        knots = (self.knots[rows] - origin[:, None]) / time_scale if c else np.zeros((len(idx), 1))
        vals = (
            (self.values[rows] - np.asarray(spec.center)) / np.asarray(spec.scale) if c else np.zeros((len(idx), 1, 0))
        )
        phase = np.zeros((len(idx), len(spec.calendar)))
        if spec.calendar:
            ns = codec.from_float(np.asarray(origin, dtype=np.float64))
            local = (ns.tz_localize(None) if ns.tz is not None else ns).asi8
            for p, name in enumerate(spec.calendar):
                period, offset = CALENDAR[name]
                phase[:, p] = np.mod(local + offset, period) / period
        as_t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)  # noqa: E731
        return CovariateBatch(
            as_t(knots),
            as_t(vals),
            torch.tensor([k == "linear" for k in spec.interp], dtype=torch.bool),
            as_t(phase),
            torch.tensor(spec.freq, dtype=torch.float32),
            as_t(spec.encode_static(self.static[idx])),
        )


@dataclass
class CovariateSource:
    """What a collate needs to attach covariates to a batch: the spec, the series' arrays, the time codec and
    scale, and each series' model-time origin (raw)."""

    spec: CovariateSpec
    arrays: CovariateArrays
    codec: Any
    time_scale: float
    origins: np.ndarray

    def batch(
        self,
        idx: np.ndarray,
        origin: np.ndarray | None = None,
        lo: np.ndarray | None = None,
        hi: np.ndarray | None = None,
    ) -> CovariateBatch:
        origin = self.origins[np.asarray(idx, dtype=np.int64)] if origin is None else origin
        return self.arrays.batch(
            self.spec, idx, np.asarray(origin, dtype=np.float64), self.time_scale, self.codec, lo, hi
        )


__all__ = ["CovariateSpec", "CovariateArrays", "CovariateSource", "CovariateBatch", "CALENDAR", "INTERPOLATIONS"]

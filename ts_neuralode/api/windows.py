"""The backtest's windows: where they cut each series (:func:`window_cuts`) and the forecast of each, scored at
the observations after its cutoff (:func:`_run_windows`). Shared by the rolling-origin backtest
(:mod:`ts_neuralode.api.backtest`) and the band calibration at the end of a fit (:mod:`ts_neuralode.api.calibration`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ts_neuralode.api.forecast_frame import table_to_long
from ts_neuralode.core.progress import show_progress
from ts_neuralode.data.batching import segment_searchsorted, subset_table, window_slack
from ts_neuralode.data.io import _Where
from ts_neuralode.data.timecodec import parse_time_column
from ts_neuralode.errors import ConfigError, ForecastError

#: the quantile grid behind the CRPS (midpoints of 20 equal slices of (0, 1); CRPS = 2 x mean pinball loss)
CRPS_QUANTILES = tuple((np.arange(20) + 0.5) / 20)
BASELINES = ("locf", "mean")


def window_cuts(
    table, horizon: float, n_windows: int | None, cutoffs: Sequence | None, step: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``[W, S]`` cut times (see the module docstring): raw floats, and for datetime data the same instants as
    int64 ns (exact: the ``cutoff`` column shows them, and the float times are computed from them)."""
    codec = table.codec
    if (n_windows is None) == (cutoffs is None):
        raise ConfigError("pass either n_windows=... (with an optional step) or cutoffs=[...], not both or neither")
    s = table.n_series
    if cutoffs is not None:
        if len(list(cutoffs)) == 0:
            raise ConfigError("cutoffs=[] is empty; pass at least one time")
        if codec.is_datetime:
            ns = np.sort(codec.datetimes_to_ns(list(cutoffs)))
            ns = np.repeat(ns[:, None], s, axis=1)
            return codec.ns_to_float(ns), ns
        cut = np.sort(np.asarray(codec.to_float(list(cutoffs)), dtype=np.float64).reshape(-1))
        return np.repeat(cut[:, None], s, axis=1), None
    n = int(n_windows)
    if n < 1:
        raise ConfigError(f"n_windows={n_windows} must be >= 1")
    step = horizon if step is None else step
    if not step > 0:
        raise ConfigError(f"step={step!r} must be a positive duration")
    k = np.arange(n - 1, -1, -1, dtype=np.int64)[:, None]
    if codec.is_datetime and table.time_ns is not None:
        last_ns = table.time_ns[table.offsets[1:] - 1][None, :]
        ns = last_ns - int(round(horizon * codec.unit_ns)) - k * int(round(step * codec.unit_ns))
        return codec.ns_to_float(ns), ns
    return table.last_times()[None, :] - horizon - k * step, None


def _window_rows(table, cut: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Per series: rows up to the cut ``n_hist`` and up to cut + horizon ``n_end`` (positions within it)."""

    start, count = table.offsets[:-1], table.counts
    n_hist = segment_searchsorted(table.times, start, count, cut, "right")
    end = cut + horizon
    n_end = segment_searchsorted(table.times, start, count, end + window_slack(end, horizon), "right")
    return n_hist, n_end


def _only_series(table, series: Sequence[Any]):
    """``table`` restricted to the series ``series`` (ids compared as text, in the table's order)."""
    if isinstance(series, (str, bytes)) or not hasattr(series, "__iter__"):
        series = [series]
    wanted = [str(s) for s in series]
    if not wanted:
        raise ConfigError("series=[] names no series; pass some ids, or leave it out for all of them")
    pos = {str(u): i for i, u in enumerate(table.ids)}
    missing = [s for s in wanted if s not in pos]
    if missing:
        shown = ", ".join(map(str, list(table.ids)[:5])) + (" …" if table.n_series > 5 else "")
        raise ForecastError(
            f"series {missing[:5]} not in the history (it has {table.n_series} series: {shown}); "
            "pass ids of the history's id column"
        )
    return _subset(table, sorted({pos[s] for s in wanted}))


def _refit_every(refit: bool | int) -> int:
    if isinstance(refit, bool):
        return 1 if refit else 0
    try:
        k = int(refit)
    except (TypeError, ValueError):
        k = -1
    if k < 0:
        raise ConfigError(f"refit={refit!r}: pass False, True or a number of windows k >= 1 (refit every k windows)")
    return k


def _row_cutter(source: pd.DataFrame, table):
    """``cut(ok, n_hist, cut)``: the rows of ``source`` of the series ``ok`` up to each one's cutoff — every row
    with a time at or before it, also those holding only a covariate (a dose row without a target value). A
    source without the id column (one series, or the wide format) is cut by the table's rows as read."""

    id_col, time_col = table.id_col, table.time_col
    if id_col in source.columns and time_col in source.columns:
        t, _, _ = parse_time_column(source[time_col], time_col, _Where("<history>", False), None, table.codec)
        pos = {str(i): k for k, i in enumerate(table.ids)}
        code = np.array([pos.get(str(v), -1) for v in source[id_col].to_numpy()], dtype=np.int64)

        def cut_by_time(ok, n_hist, cut):
            limit = np.full(table.n_series + 1, -np.inf)  # code -1 (another series) -> the last entry: never
            limit[ok] = cut[ok]
            return source[t <= limit[code]]

        return cut_by_time
    if table.rows is None:
        raise ConfigError(
            "refit needs the history as a DataFrame or a file path (a new model is trained on each window's part of it)"
        )

    def cut_by_rows(ok, n_hist, cut):
        rows = np.concatenate([table.rows[table.offsets[s] : table.offsets[s] + n_hist[s]] for s in ok])
        return source.iloc[np.sort(rows)]

    return cut_by_rows


def _subset(table, idx, lo=None, hi=None):
    return subset_table(table, idx, lo=lo, hi=hi)


def _score_window(model, table, hist, ok, n_hist, n_end, cut, raw_history, opts: dict) -> pd.DataFrame:
    """One window: forecast ``model`` at the observation times after each series' cutoff, join the observed
    values and the baselines (the model's forecast channels only: never the past-only covariates). ``opts``: the
    ``predict`` options of every window (:func:`_run_windows`)."""

    targets = model.target_rows(table_to_long(_subset(table, ok, lo=n_hist[ok], hi=n_end[ok])))
    if targets.empty:  # only past-only covariates were observed in this window
        return None
    times = targets[["unique_id", "ds"]].drop_duplicates()
    scored = list(dict.fromkeys(times["unique_id"]))
    out = model.predict(
        hist if raw_history is None else raw_history,
        times=times,
        series=None if len(scored) == len(ok) else scored,
        # a backtest scores the model's own bands unless asked for calibrated ones
        **{**opts, "calibrated": bool(opts["calibrated"])},
    )
    cutoff = pd.DataFrame({"unique_id": hist.ids, "cutoff": cut})
    by = model.target_rows(table_to_long(hist)).groupby(["unique_id", "channel"], sort=False)["y"]
    base = pd.concat([by.last().rename("locf"), by.mean().rename("mean")], axis=1).reset_index()
    multi = "channel" in out.columns
    rows = targets.merge(cutoff, on="unique_id").merge(base, on=["unique_id", "channel"])
    keys = ["unique_id", "ds"] + (["channel"] if multi else [])
    if not multi:
        rows = rows.drop(columns="channel")
    frame = rows.merge(out, on=keys, how="inner", validate="one_to_one")
    front = keys + ["cutoff", "y"]
    cols = front + [c for c in out.columns if c not in keys] + list(BASELINES)
    return frame[cols]


class WindowRefit(NamedTuple):
    """A backtest that trains a new model every ``every`` windows: ``fit(rows, workdir)`` trains one on ``rows`` (the
    history file's own rows up to each cutoff, as ``cut(series, n_rows, cuts)`` gives them), in a temporary folder
    under ``workdir``."""

    every: int
    fit: Callable[[pd.DataFrame, Path], Any]
    cut: Callable[[np.ndarray, np.ndarray, np.ndarray], pd.DataFrame]
    workdir: Any = None


def _run_windows(
    fc,
    table,
    cuts: np.ndarray,
    cuts_ns: np.ndarray | None,
    h: float,
    opts: dict,
    *,
    limit: np.ndarray | None = None,
    refit: WindowRefit | None = None,
    progress: bool = False,
) -> list[pd.DataFrame]:
    """The scored rows of every window ``cuts[w]`` (``[W, S]`` raw cut times; NaN: the series sits the window
    out); ``opts``: the ``predict`` options of every window (``level``, ``quantiles``, ``num_samples``, ``context``,
    ``seed``, ``batch_size``, ``calibrated``, ``covariates``); ``limit`` (``[S]`` raw times): no target after it;
    ``refit``: train a new model every ``refit.every`` windows (else ``fc`` forecasts every window)."""
    codec = table.codec
    frames, seen = [], -1
    model = fc
    before_all = (float(np.min(table.times)) if len(table.times) else 0.0) - abs(h) - 1.0  # a cut with no history
    tmp = tempfile.TemporaryDirectory(dir=refit.workdir) if refit else None
    try:
        for w in show_progress(range(len(cuts)), progress, "backtest", "window"):
            cut_w = np.where(np.isfinite(cuts[w]), cuts[w], before_all)
            n_hist, n_end = _window_rows(table, cut_w, h)
            if limit is not None:
                _, n_lim = _window_rows(table, np.asarray(limit, dtype=np.float64), 0.0)
                n_end = np.minimum(n_end, n_lim)
            ok = np.flatnonzero((n_hist >= 1) & (n_end > n_hist) & np.isfinite(cuts[w]))
            if len(ok) == 0:
                continue
            hist = _subset(table, ok, hi=n_hist[ok])
            seen += 1
            raw_hist = None
            if refit is not None:  # the file's own rows up to each cutoff: what a refit trains on and its model reads
                raw_hist = refit.cut(ok, n_hist, cuts[w])
                if seen % refit.every == 0:
                    model = refit.fit(raw_hist, Path(tmp.name) / f"window{w}")
            cut = codec.from_ns(cuts_ns[w][ok]) if cuts_ns is not None else cuts[w][ok]
            frame = _score_window(model, table, hist, ok, n_hist, n_end, cut, raw_hist, opts)
            if frame is not None:
                frames.append(frame)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return frames

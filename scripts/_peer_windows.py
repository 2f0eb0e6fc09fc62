"""The peer benchmark's windows, regular grids, read-back and naive forecasts (main environment, numpy/pandas only).

Everything here works on a *long* frame of observed values ``unique_id, channel, t, y`` with ``t`` a float in the
data set's time unit (datetimes converted once by :func:`to_long`). A window is ``(cutoff, cutoff + horizon]``
per series, cutoffs as :mod:`ts_neuralode.api.backtest` makes them (``last - horizon - k * step``, per series or from
the last time of all series when the cutoffs are shared); :func:`window_rows` gives the scored rows with the
backtest's own baselines ``locf`` (the channel's last value up to the cutoff) and ``mean`` (its mean up to the
cutoff), and a channel without history before the cutoff sits out (as the backtest's inner merge does).

The peers (statsforecast, neuralforecast) need a regular grid: :func:`regular_grid` samples each (series,
channel) history at ``cutoff - j * dt`` (``j = 0, 1, …``, back to its first observation) by linear interpolation
between the observations (flat beyond the last one: the grid point at the cutoff is the last value when the last
observation lies before it). :func:`read_back` maps a grid forecast (steps ``1..H`` after the cutoff) to the real
observation times: linear interpolation in time between the steps, anchored at step 0 by the grid's value at the
cutoff (every quantile too: the predictive is a point at lead 0, widening to the step-1 band).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEP = "|"  # joins unique_id and channel into the peers' univariate series id


def to_long(
    frame: pd.DataFrame, value_cols: list[str], unit_ns: int | None, origin_ns: int | None = None
) -> tuple[pd.DataFrame, int | None]:
    """``unique_id, channel, t, y`` (observed values only) from a wide frame ``unique_id, ds, <value_cols>``.

    ``unit_ns`` None: ``ds`` is numeric and ``t = ds``; else datetimes (tz-aware ones in UTC), ``t`` in units of
    ``unit_ns`` nanoseconds since ``origin_ns`` (default: the first time). Returns the frame and the origin."""
    ids = frame["unique_id"].astype(str).to_numpy()
    if unit_ns is None:
        t = pd.to_numeric(frame["ds"]).to_numpy(dtype=np.float64)
    else:
        ns = ds_to_ns(frame["ds"])
        origin_ns = int(ns.min()) if origin_ns is None else int(origin_ns)
        t = (ns - origin_ns) / float(unit_ns)
    parts = []
    for c in value_cols:
        y = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(y)
        parts.append(pd.DataFrame({"unique_id": ids[ok], "channel": c, "t": t[ok], "y": y[ok]}))
    long = pd.concat(parts, ignore_index=True)
    return long.sort_values(["unique_id", "channel", "t"], kind="mergesort").reset_index(drop=True), origin_ns


def ds_to_ns(ds: pd.Series) -> np.ndarray:
    """Datetimes (strings, naive = UTC, or tz-aware) -> int64 ns since the epoch in UTC."""
    return pd.to_datetime(ds, utc=True, format="mixed").to_numpy(dtype="datetime64[ns]").astype(np.int64)


def make_cuts(long: pd.DataFrame, horizon: float, n_windows: int, step: float, shared: bool) -> pd.DataFrame:
    """``unique_id, window, cutoff``: ``last - horizon - k * step`` for ``k = n_windows - 1 … 0`` (window 0 the
    earliest), ``last`` each series' last time, or the last time of all series when ``shared``."""
    last = long.groupby("unique_id", sort=True)["t"].max()
    if shared:
        last = pd.Series(float(long["t"].max()), index=last.index)
    k = np.arange(n_windows - 1, -1, -1)
    rows = [
        pd.DataFrame({"unique_id": last.index, "window": w, "cutoff": last.to_numpy() - horizon - kk * step})
        for w, kk in enumerate(k)
    ]
    return pd.concat(rows, ignore_index=True)


def _slack(end: np.ndarray, horizon: float) -> np.ndarray:
    """The backtest's tolerance at a window's end (``ts_neuralode.data.batching.window_slack``)."""
    return 1e-9 * (np.abs(end) + 1.0 + abs(horizon))


def window_rows(long: pd.DataFrame, cuts: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """The scored rows ``unique_id, channel, window, cutoff, ds, y, locf, mean`` (``ds`` = the observation time
    ``t`` in ``(cutoff, cutoff + horizon]``); a (series, channel) with no value up to the cutoff sits out."""
    m = long.merge(cuts, on="unique_id")
    end = m["cutoff"].to_numpy() + horizon
    hist = m[m["t"] <= m["cutoff"]]  # as the backtest: history up to the cutoff exactly, the end with a slack
    after = m[(m["t"] > m["cutoff"]) & (m["t"] <= end + _slack(end, horizon))]
    keys = ["unique_id", "channel", "window"]
    g = hist.sort_values("t", kind="mergesort").groupby(keys, sort=False)["y"]
    base = pd.concat([g.last().rename("locf"), g.mean().rename("mean")], axis=1).reset_index()
    rows = after.merge(base, on=keys, how="inner").rename(columns={"t": "ds"})
    return (
        rows[["unique_id", "channel", "window", "cutoff", "ds", "y", "locf", "mean"]]
        .sort_values(keys + ["ds"], kind="mergesort")
        .reset_index(drop=True)
    )


def seasonal_naive(long: pd.DataFrame, rows: pd.DataFrame, period: float, tolerance: float | None = None) -> np.ndarray:
    """The project's seasonal naive rule (:class:`ts_neuralode.models.baselines.Seasonal`) at each row: the observed
    value nearest to ``t - k * period`` (``k >= 1`` the fewest periods that reach back to the last observation up to
    the cutoff) when one lies within ``tolerance`` (default ``period / 10``), else the last value."""
    tol = period / 10.0 if tolerance is None else tolerance
    out = np.full(len(rows), np.nan)
    hist_by = {k: g for k, g in long.groupby(["unique_id", "channel"], sort=False)}
    for (uid, ch, cut), idx in rows.groupby(["unique_id", "channel", "cutoff"], sort=False).groups.items():
        g = hist_by[(uid, ch)]
        h = g[g["t"] <= cut]
        ht, hy = h["t"].to_numpy(), h["y"].to_numpy()
        t = rows.loc[idx, "ds"].to_numpy()
        end = ht[-1]
        k = np.maximum(np.ceil((t - end) / period - 1e-6), 1.0)
        target = t - k * period
        j = np.clip(np.searchsorted(ht, target), 1, len(ht) - 1) if len(ht) > 1 else np.zeros(len(t), dtype=int)
        if len(ht) > 1:
            left, right = ht[j - 1], ht[j]
            j = np.where(np.abs(target - left) <= np.abs(right - target), j - 1, j)
        near_t, near_y = ht[j], hy[j]
        out[rows.index.get_indexer(idx)] = np.where(np.abs(near_t - target) <= tol, near_y, hy[-1])
    return out


def regular_grid(long: pd.DataFrame, cuts: pd.DataFrame, dt: float, max_points: int | None = None) -> pd.DataFrame:
    """``uid, window, step, y``: each (series, channel) history up to each cutoff on the grid ``cutoff + step * dt``
    (``step = -n+1 … 0``, back to the first observation, at most ``max_points``), values by linear interpolation
    between the observations (flat past the last one); ``uid`` = ``unique_id|channel``."""
    frames = []
    by_id = {u: list(zip(g["window"], g["cutoff"], strict=False)) for u, g in cuts.groupby("unique_id", sort=False)}
    for (uid, ch), g in long.groupby(["unique_id", "channel"], sort=False):
        t, y = g["t"].to_numpy(), g["y"].to_numpy()
        for window, cut in by_id.get(uid, []):
            keep = t <= cut
            if not keep.any():
                continue
            n = int(np.floor((cut - t[keep][0]) / dt + 1e-9)) + 1
            if max_points:
                n = min(n, int(max_points))
            steps = np.arange(-n + 1, 1)
            frames.append(
                pd.DataFrame(
                    {
                        "uid": f"{uid}{SEP}{ch}",
                        "window": window,
                        "step": steps,
                        "y": np.interp(cut + steps * dt, t[keep], y[keep]),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def read_back(grid_fc: pd.DataFrame, grid: pd.DataFrame, rows: pd.DataFrame, dt: float, name: str) -> pd.DataFrame:
    """A grid forecast ``uid, window, step (1..H), point[, q-P…, lo-L, hi-L]`` -> columns ``<name>[, <name>-q-P…,
    <name>-lo-L, <name>-hi-L]`` at the ``rows`` (see the module docstring: linear in time, anchored at the grid's
    value at the cutoff). Rows without a forecast get NaN."""
    qcols = [c for c in grid_fc.columns if c.startswith(("q-", "lo-", "hi-"))]
    cols = ["point", *qcols]
    out = np.full((len(rows), len(cols)), np.nan)
    anchor = grid[grid["step"] == 0].set_index(["uid", "window"])["y"]
    uid = rows["unique_id"].astype(str) + SEP + rows["channel"].astype(str)
    fc_by = {k: g.sort_values("step") for k, g in grid_fc.groupby(["uid", "window"], sort=False)}
    for (u, w), idx in rows.groupby([uid, rows["window"]], sort=False).groups.items():
        g = fc_by.get((u, w))
        if g is None or (u, w) not in anchor.index:
            continue
        pos = rows.index.get_indexer(idx)
        s = (rows.loc[idx, "ds"].to_numpy() - rows.loc[idx, "cutoff"].to_numpy()) / dt
        xs = np.concatenate([[0.0], g["step"].to_numpy(dtype=float)])
        a = float(anchor.loc[(u, w)])
        for j, c in enumerate(cols):
            out[pos, j] = np.interp(s, xs, np.concatenate([[a], g[c].to_numpy(dtype=float)]))
    return pd.DataFrame(out, columns=[name] + [f"{name}-{c}" for c in qcols], index=rows.index)

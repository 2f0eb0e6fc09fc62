"""Rolling-origin backtesting: forecast from many cutoffs, score what came after, in the user's units.

:func:`cross_validation` (``Forecaster.cross_validation``) returns Nixtla-style rows
``unique_id, ds, [channel,] cutoff, y, <model>, <model>-lo-L, <model>-hi-L, <model>-q-P, locf, mean``: one per
observed value after each cutoff, at the series' own (irregular) observation times.

Windows, per series (times in the data's units; durations as numbers or strings such as ``"2D"``):

* ``n_windows`` (with ``step``, default the horizon): nominal cuts ``last - horizon - k * step`` for
  ``k = n_windows - 1 … 0`` (the last window ends at the series' last observation: the backtest of the
  forecast you would have made one horizon ago, and of the ``split_by time`` test window of the forecast task);
* ``cutoffs``: explicit times shared by every series.

A window's forecast is the one made at time ``cutoff`` with everything observed up to it: the model conditions on
the series' observations at or before the cutoff (as :meth:`Forecaster.predict` on that history would) and is
scored at its observations in ``(cutoff, cutoff + horizon]``. A series with no observation up to a cutoff or none
in the window after it sits that window out.

``refit``: ``False`` (one model for every window — it may have seen the later windows in training), ``True``
(train a new model on each window's history) or ``k`` (every ``k`` windows); a refit trains through the same
code path as ``ts-neuralode fit`` (:func:`refit_forecaster`) with the options of ``fit_args``.

Baselines scored by the same code: ``locf`` (the last value observed up to the cutoff) and ``mean`` (the mean of
the series' values up to the cutoff). :func:`evaluate` scores every model column with utilsforecast's losses (MAE, RMSE,
CRPS, interval coverage and Winkler score), the band width and a MASE-style ``scaled_mae`` (errors over each
series' ``locf`` MAE), overall, per series and per horizon bucket.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ts_neuralode.errors import ConfigError, ForecastError
from ts_neuralode.forecast_frame import band_col, fmt_level, levels_of, quantile_columns

#: the quantile grid behind the CRPS (midpoints of 20 equal slices of (0, 1); CRPS = 2 x mean pinball loss)
CRPS_QUANTILES = tuple((np.arange(20) + 0.5) / 20)
BASELINES = ("locf", "mean")
DEFAULT_BUCKETS = 4


# -- windows ------------------------------------------------------------------------------------------------
def window_cuts(table, horizon: float, n_windows: int | None, cutoffs: Sequence | None, step: float | None
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
    from ts_neuralode.data.batching import segment_searchsorted, window_slack

    start, count = table.offsets[:-1], table.counts
    n_hist = segment_searchsorted(table.times, start, count, cut, "right")
    end = cut + horizon
    n_end = segment_searchsorted(table.times, start, count, end + window_slack(end, horizon), "right")
    return n_hist, n_end


# -- refitting ----------------------------------------------------------------------------------------------
def refit_forecaster(fit_args: Sequence[str] | str, data: pd.DataFrame, workdir: str | os.PathLike):
    """A new :class:`Forecaster` trained on ``data`` (a DataFrame, in memory) with the ``ts-neuralode fit`` options
    ``fit_args`` (e.g. ``["--config", "configs/demo.yaml"]``) through the API every fit goes through
    (:func:`ts_neuralode.fit_api.refit`: the same parser, data module, callbacks and model export); no MLflow run,
    checkpoints and model directory under ``workdir``."""
    from ts_neuralode.fit_api import refit

    args = shlex.split(fit_args) if isinstance(fit_args, str) else list(fit_args)
    return refit(args, data, workdir)


def _source_frame(history: Any) -> pd.DataFrame | None:
    if isinstance(history, pd.DataFrame):
        return history
    if isinstance(history, (str, os.PathLike)):
        from ts_neuralode.data.io import read_frame

        return read_frame(history)
    return None


# -- cross-validation ---------------------------------------------------------------------------------------
def cross_validation(
    fc,
    history: Any,
    horizon: float | str | pd.Timedelta,
    *,
    n_windows: int | None = None,
    cutoffs: Sequence | None = None,
    step: float | str | pd.Timedelta | None = None,
    refit: bool | int = False,
    fit_args: Sequence[str] | str | None = None,
    level: Iterable[float] | float | None = (50, 90),
    quantiles: Iterable[float] | None = CRPS_QUANTILES,
    num_samples: int = 100,
    context: float | str | pd.Timedelta | None = None,
    seed: int | None = 0,
    batch_size: int = 64,
    calibrated: bool = False,
    progress: bool = False,
    workdir: str | os.PathLike | None = None,
    future: pd.DataFrame | str | os.PathLike | None = None,
    series: Sequence[Any] | None = None,
    **read_options: Any,
) -> pd.DataFrame:
    """Backtest ``fc`` on ``history`` (see the module docstring); returns the rows of every window.

    Covariates: a model's known-future and static covariates are read once from the whole ``history`` plus
    ``future`` (values after the history's end, as :meth:`Forecaster.predict`'s ``future``); a window's forecast
    reads them after its cutoff too — they are known in advance, unlike the targets and past-only covariates, which
    stop at the cutoff.

    ``series``: backtest only these series ids (e.g. ``Forecaster.split_ids("val")``, the series a fit held out);
    ForecastError naming the ids the history lacks."""
    from ts_neuralode.data.io import as_frame

    history, future = as_frame(history), as_frame(future)
    table = fc.read_history(history, **read_options)
    if series is not None:
        table = _only_series(table, series)
    spec = fc.covariate_spec
    covariates = None
    if spec is not None and (spec.future_cols or spec.static_cols):
        covariates = fc.read_covariates(history, future, table)
    elif future is not None:
        raise ConfigError("future=... gives known-future covariates, but the model reads none; drop it")
    codec = table.codec
    h = codec.duration(horizon, "horizon", ConfigError)
    if not h > 0:
        raise ConfigError(f"horizon={horizon!r} must be positive")
    step_raw = None if step is None else codec.duration(step, "step", ConfigError)
    cuts, cuts_ns = window_cuts(table, h, n_windows, cutoffs, step_raw)
    every = _refit_every(refit)
    if every and not fit_args:
        raise ConfigError("refit needs fit_args: the options of 'ts-neuralode fit' that train a model (e.g. "
                          "['--config', 'configs/demo.yaml'])")
    source = _source_frame(history) if every else None
    if every and source is None:
        raise ConfigError("refit needs the history as a DataFrame or a file path (a new model is trained on each "
                          "window's part of it)")
    source_cut = _row_cutter(source, table) if every else None
    frames = _run_windows(fc, table, cuts, cuts_ns, h, None, every, fit_args, source_cut, workdir, progress,
                          dict(level=level, quantiles=quantiles, num_samples=num_samples, context=context, seed=seed,
                               batch_size=batch_size, calibrated=calibrated, covariates=covariates))
    if not frames:
        raise ForecastError("no backtest window has a series with history before its cutoff and an observation within "
                            "the horizon after it; use fewer windows, a shorter step or other cutoffs")
    return pd.concat(frames, ignore_index=True)


def _run_windows(fc, table, cuts: np.ndarray, cuts_ns: np.ndarray | None, h: float, limit: np.ndarray | None,
                 every: int, fit_args, source_cut, workdir, progress: bool, opts: dict) -> list[pd.DataFrame]:
    """The scored rows of every window ``cuts[w]`` (``[W, S]`` raw cut times; NaN: the series sits the window
    out); ``limit`` (``[S]`` raw times, optional): no target after it."""
    codec = table.codec
    frames, seen = [], -1
    model = fc
    before_all = (float(np.min(table.times)) if len(table.times) else 0.0) - abs(h) - 1.0  # a cut with no history
    tmp = tempfile.TemporaryDirectory(dir=workdir) if every else None
    try:
        for w in _progress(range(len(cuts)), progress):
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
            if every:  # the file's own rows up to each cutoff: what a refit trains on and its model reads
                raw_hist = source_cut(ok, n_hist, cuts[w])
                if seen % every == 0:
                    model = refit_forecaster(fit_args, raw_hist, Path(tmp.name) / f"window{w}")
            cut = codec.from_ns(cuts_ns[w][ok]) if cuts_ns is not None else cuts[w][ok]
            frame = _score_window(model, table, hist, ok, n_hist, n_end, cut, opts["level"], opts["quantiles"],
                                  opts["num_samples"], opts["context"], opts["seed"], opts["batch_size"],
                                  opts["calibrated"], raw_hist, opts["covariates"])
            if frame is not None:
                frames.append(frame)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return frames


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
        raise ForecastError(f"series {missing[:5]} not in the history (it has {table.n_series} series: {shown}); "
                            "pass ids of the history's id column")
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
    from ts_neuralode.data.io import _Where
    from ts_neuralode.data.timecodec import parse_time_column

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
        raise ConfigError("refit needs the history as a DataFrame or a file path (a new model is trained on each "
                          "window's part of it)")

    def cut_by_rows(ok, n_hist, cut):
        rows = np.concatenate([table.rows[table.offsets[s]:table.offsets[s] + n_hist[s]] for s in ok])
        return source.iloc[np.sort(rows)]
    return cut_by_rows


def _subset(table, idx, lo=None, hi=None):
    from ts_neuralode.data.batching import subset_table

    return subset_table(table, idx, lo=lo, hi=hi)


def _score_window(model, table, hist, ok, n_hist, n_end, cut, level, quantiles, num_samples, context, seed, batch_size,
                  calibrated, raw_history, covariates) -> pd.DataFrame:
    """One window: forecast ``model`` at the observation times after each series' cutoff, join the observed
    values and the baselines (the model's forecast channels only: never the past-only covariates)."""
    from ts_neuralode.forecast_frame import table_to_long

    targets = model.target_rows(table_to_long(_subset(table, ok, lo=n_hist[ok], hi=n_end[ok])))
    if targets.empty:  # only past-only covariates were observed in this window
        return None
    times = targets[["unique_id", "ds"]].drop_duplicates()
    kw = {"calibrated": bool(calibrated)}  # a backtest scores the model's own bands unless asked for calibrated ones
    scored = list(dict.fromkeys(times["unique_id"]))
    out = model.predict(hist if raw_history is None else raw_history, times=times, level=level, quantiles=quantiles,
                        num_samples=num_samples, context=context, seed=seed, batch_size=batch_size,
                        series=None if len(scored) == len(ok) else scored, covariates=covariates, **kw)
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


def _progress(items, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="backtest", unit="window", leave=False)


# -- scoring ------------------------------------------------------------------------------------------------
def model_columns(cv: pd.DataFrame) -> list[str]:
    """The point-forecast columns of a cross-validation frame (models and baselines)."""
    skip = {"unique_id", "ds", "channel", "cutoff", "y"}
    return [c for c in cv.columns if c not in skip and "-" not in c]


def lead_times(cv: pd.DataFrame, unit_ns: int | None = None) -> np.ndarray:
    """``ds - cutoff`` in the data's time units (for datetimes: ``unit_ns`` nanoseconds, which they need)."""
    if pd.api.types.is_datetime64_any_dtype(cv["ds"]):
        if not unit_ns:
            raise ConfigError("the backtest's times are datetimes: lead times need their time unit (unit_ns, e.g. "
                              "the model's fc.transform.codec.unit_ns)")
        return ((cv["ds"] - cv["cutoff"]) / pd.Timedelta(int(unit_ns), "ns")).to_numpy(dtype=np.float64)
    return (cv["ds"].astype(float) - cv["cutoff"].astype(float)).to_numpy()


def horizon_in_units(cv: pd.DataFrame, horizon: float | str | pd.Timedelta, unit_ns: int | None = None
                     ) -> tuple[float, int | None]:
    """``horizon`` (the forms :func:`cross_validation` takes) -> ``(number of time units, unit_ns)``. Datetime
    rows: a duration (``"12h"``, a Timedelta) in ``unit_ns`` (default: the largest of s / min / h / D / W that
    divides it), or a number in ``unit_ns`` (then required); numeric rows: a number."""
    from ts_neuralode.data.timecodec import as_number, as_timedelta

    is_dt = pd.api.types.is_datetime64_any_dtype(cv["ds"])
    number = as_number(horizon)
    if number is not None:
        if is_dt and not unit_ns:
            raise ConfigError(f"horizon={horizon!r} is a number but the backtest's times are datetimes: pass a duration "
                              "such as '12h', or unit_ns= (the model's time unit, fc.transform.codec.unit_ns)")
        h, unit = number, (int(unit_ns) if is_dt else None)
    elif not is_dt:
        raise ConfigError(f"horizon={horizon!r}: the backtest's times are numbers, so pass a number of time units")
    else:
        td = as_timedelta(horizon, "horizon")
        unit = int(unit_ns) if unit_ns else max([u for u in _UNIT_NAMES if td.value % u == 0] or [10**9])
        h = td.value / unit
    if not (np.isfinite(h) and h > 0):
        raise ConfigError(f"horizon={horizon!r} must be a positive duration")
    return h, unit


def bucket_edges(horizon: float, buckets: int) -> np.ndarray:
    if int(buckets) < 1:
        raise ConfigError(f"buckets={buckets} must be >= 1")
    return np.linspace(0.0, float(horizon), int(buckets) + 1)


def bucket_of(lead: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of the horizon bucket ``(edges[b], edges[b+1]]`` of each lead (beyond the last: the last)."""
    return np.clip(np.searchsorted(edges, lead, side="left") - 1, 0, len(edges) - 2)


_UNIT_NAMES = {10**9: "s", 60 * 10**9: "min", 3600 * 10**9: "h", 86400 * 10**9: "D", 7 * 86400 * 10**9: "W"}


def bucket_labels(edges: np.ndarray, unit_ns: int | None = None) -> list[str]:
    """``(a, b]`` per bucket, in the data's time unit (``12h``, ``1.5D``; plain numbers for numeric times)."""
    unit = _UNIT_NAMES.get(int(unit_ns), f"x{unit_ns}ns") if unit_ns else ""
    return [f"({fmt_level(round(a, 6))}{unit}, {fmt_level(round(b, 6))}{unit}]" for a, b in zip(edges[:-1], edges[1:])]


def _scores(df: pd.DataFrame, models: list[str], key: str) -> pd.DataFrame:
    """One row per (``key`` value, model): utilsforecast's losses on the rows of ``df`` grouped by ``key``."""
    from utilsforecast import losses

    kw = {"id_col": key, "cutoff_col": "__no_cutoff__"}
    parts: dict[str, pd.DataFrame] = {
        "n": df.groupby(key, sort=True).size().rename("n").reset_index(),
    }
    metric_frames = {"mae": losses.mae(df, models, **kw), "rmse": losses.rmse(df, models, **kw)}
    crps_models = {m: quantile_columns(df, m) for m in models}
    crps_models = {m: v for m, v in crps_models.items() if len(v[0]) >= 2}
    rows = []
    for m in models:
        rec = pd.DataFrame({key: metric_frames["mae"][key]})
        for name, f in metric_frames.items():
            rec[name] = f[m].to_numpy()
        if "__scale__" in df.columns:  # MASE-style: each error over its series' LOCF MAE, then the mean
            scaled = ((df[m] - df["y"]).abs() / df["__scale__"]).groupby(df[key], sort=True).mean()
            rec["scaled_mae"] = scaled.reindex(rec[key]).to_numpy()
        if m in crps_models:
            cols, qs = crps_models[m]
            rec["crps"] = 2.0 * losses.mqloss(df, {m: cols}, qs, **kw)[m].to_numpy()
        for lv in levels_of(df, m):
            tag = fmt_level(lv)
            rec[f"coverage-{tag}"] = losses.coverage(df, [m], lv, **kw)[m].to_numpy()
            width = (df[band_col(m, "hi", lv)] - df[band_col(m, "lo", lv)]).groupby(df[key], sort=True).mean()
            rec[f"width-{tag}"] = width.to_numpy()
            rec[f"winkler-{tag}"] = losses.winkler_score(df, [m], lv, **kw)[m].to_numpy()
        rec.insert(1, "model", m)
        rows.append(rec.merge(parts["n"], on=key))
    return pd.concat(rows, ignore_index=True)


def evaluate(cv: pd.DataFrame, horizon: float | str | pd.Timedelta, buckets: int = DEFAULT_BUCKETS,
             unit_ns: int | None = None, models: list[str] | None = None) -> pd.DataFrame:
    """Metrics of every model column of ``cv`` (a :func:`cross_validation` frame) in the data's units.

    ``horizon`` as :func:`cross_validation` takes it: for datetime rows a duration (``"2D"``, a Timedelta; bucket
    labels in ``unit_ns``, default the duration's own unit) or a number of ``unit_ns`` time units (then required:
    the model's ``fc.transform.codec.unit_ns``); for numeric times a number.

    Returns one row per (scope, group, model): ``scope`` is ``overall`` (group ``all``), ``series`` (group = the
    series id, plus ``/channel`` with several channels) or ``horizon`` (group = the lead-time bucket ``(a, b]``
    after the cutoff, ``buckets`` equal slices of ``horizon``, in the data's time units); columns ``n`` (points),
    ``mae``, ``rmse``, ``scaled_mae`` (MASE-style: each error divided by its series' ``locf`` MAE over all its
    rows of ``cv``, then averaged over the group's points, so every series counts in its own scale; below 1 beats
    carrying the last value forward; a series whose ``locf`` MAE is 0 is left out of it, listed in
    ``result.attrs["notes"]``), ``crps`` (twice the mean pinball loss over the quantile columns: the CRPS
    of the predictive distribution on that quantile grid; models without quantiles have none), and per interval
    level ``coverage-L`` (fraction of points inside the band), ``width-L`` (mean band width) and ``winkler-L``.
    """
    models = models or model_columns(cv)
    horizon, unit_ns = horizon_in_units(cv, horizon, unit_ns)
    df = cv.copy()
    df["__all__"] = "all"
    sid = df["unique_id"].astype(str)
    df["__series__"] = sid + ("/" + df["channel"].astype(str) if "channel" in df.columns else "")
    notes = []
    if "locf" in df.columns:
        scale = (df["locf"] - df["y"]).abs().groupby(df["__series__"]).transform("mean")
        zero = sorted(set(df.loc[scale <= 0, "__series__"]))
        if zero:
            notes.append(f"scaled_mae leaves out {len(zero)} series whose locf MAE is 0 (constant after each cutoff): "
                         f"{', '.join(zero[:10])}{' …' if len(zero) > 10 else ''}")
        df["__scale__"] = scale.where(scale > 0)
    edges = bucket_edges(horizon, buckets)
    labels = bucket_labels(edges, unit_ns)
    df["__bucket__"] = bucket_of(lead_times(df, unit_ns), edges)
    out = []
    for scope, key in (("overall", "__all__"), ("series", "__series__"), ("horizon", "__bucket__")):
        s = _scores(df, models, key).rename(columns={key: "group"})
        if scope == "horizon":
            s.insert(1, "bucket", s["group"].astype(int))
            s["group"] = [labels[int(b)] for b in s["group"]]
        s.insert(0, "scope", scope)
        out.append(s)
    res = pd.concat(out, ignore_index=True)
    if "crps" not in res.columns:  # the same columns whether or not a model has quantiles (calibrated: none)
        res.insert(res.columns.get_loc("rmse") + 1 + ("scaled_mae" in res.columns), "crps", np.nan)
    first = ["scope", "group", "bucket", "model", "n"]
    res = res[first + [c for c in res.columns if c not in first]]
    res.attrs["notes"] = notes
    return res


# -- report -------------------------------------------------------------------------------------------------
def plot_error_vs_horizon(metrics: pd.DataFrame, path: str | os.PathLike, unit: str = "") -> Path:
    """MAE and coverage per horizon bucket, one line per model (PNG written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ts_neuralode.atomic import atomic_write_bytes

    hz = metrics[metrics["scope"] == "horizon"].sort_values("bucket")
    cov_cols = [c for c in hz.columns if c.startswith("coverage-") and hz[c].notna().any()]
    fig, axes = plt.subplots(1, 2 if cov_cols else 1, figsize=(11 if cov_cols else 6, 4), squeeze=False)
    for model, g in hz.groupby("model", sort=False):
        axes[0, 0].plot(g["bucket"], g["mae"], marker="o", label=model)
        if cov_cols:
            for c in cov_cols:
                if g[c].notna().any():
                    axes[0, 1].plot(g["bucket"], g[c], marker="o", label=f"{model} {c[len('coverage-'):]}%")
    labels = list(dict.fromkeys(hz["group"]))
    for ax in axes[0]:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, fontsize=8)
        ax.set_xlabel(f"time after the cutoff{(' (' + unit + ')') if unit else ''}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("MAE (data units)")
    axes[0, 0].set_title("error vs horizon")
    if cov_cols:
        for c in cov_cols:
            axes[0, 1].axhline(float(c[len("coverage-"):]) / 100.0, color="grey", lw=0.8, ls="--")
        axes[0, 1].set_ylabel("coverage")
        axes[0, 1].set_title("interval coverage vs horizon (dashed: nominal)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue()) or Path(path)


def markdown_report(cv: pd.DataFrame, metrics: pd.DataFrame, title: str, command: str | None = None) -> str:
    """The backtest report: windows, then the overall, per-horizon and per-series tables."""
    n_win = cv.groupby("unique_id")["cutoff"].nunique()
    lines = [f"# {title}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"{len(cv)} scored points, {cv['unique_id'].nunique()} series, {int(n_win.max())} window(s) per "
              f"series (cutoffs {cv['cutoff'].min()} … {cv['cutoff'].max()}). Errors in the data's units; "
              "`scaled_mae` (MASE-style) = the mean of each error divided by its series' `locf` MAE, so every series "
              "counts in its own scale (below 1 beats carrying the last value forward); `crps` from the predictive quantiles; `coverage-L`: fraction of points inside the L% "
              "band (nominal L/100).", ""]
    lines += [f"Note: {n}" for n in metrics.attrs.get("notes", [])] + ([""] if metrics.attrs.get("notes") else [])
    for scope, head in (("overall", "Overall"), ("horizon", "Per horizon bucket (time after the cutoff)"),
                        ("series", "Per series")):
        part = metrics[metrics["scope"] == scope].drop(columns=["scope"] + ([] if scope == "horizon" else ["bucket"]))
        if scope == "horizon":  # models in their order (the forecast first), buckets in time order
            rank = {m: i for i, m in enumerate(dict.fromkeys(metrics["model"]))}
            part = part.sort_values(["model", "bucket"], key=lambda c: c.map(rank) if c.name == "model" else c)
            part = part.drop(columns="bucket")
        part = part.dropna(axis=1, how="all")
        lines += [f"## {head}", "", md_table(part), ""]
    return "\n".join(lines)


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of any frame (floats to 4 significant digits, NaN blank)."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else f"{v:.4g}"
        return str(v)
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def mlflow_metrics(metrics: pd.DataFrame) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` for MLflow: ``backtest/<model>/<metric>`` overall (step 0) and
    ``backtest/<model>/<metric>_by_horizon`` with step = horizon bucket (MLflow plots it as error vs horizon)."""
    import math

    out = []
    names = [c for c in metrics.columns if c not in ("scope", "group", "bucket", "model")]
    for r in metrics[metrics["scope"].isin(["overall", "horizon"])].to_dict("records"):
        for name in names:
            v = r.get(name)
            if v is None or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
                continue
            key = f"backtest/{r['model']}/{name.replace('-', '_')}"
            if r["scope"] == "overall":
                out.append((key, float(v), 0))
            else:
                out.append((key + "_by_horizon", float(v), int(r["bucket"])))
    return out


def calibrate(fc, cv: pd.DataFrame, horizon: float | str | pd.Timedelta, buckets: int = DEFAULT_BUCKETS,
              history: Any = None, save_to: str | os.PathLike | None = None, refit: bool = False,
              **read_options: Any) -> dict:
    """Fit the conformal band calibration of ``fc`` on the backtest rows ``cv`` (made with uncalibrated bands),
    per horizon bucket (:mod:`ts_neuralode.calibration`); sets ``fc.calibration`` and, with ``save_to`` (a model
    directory), stores it there. Returns it.

    With ``history`` (the backtest's history) a row's lead time is counted from the last observation up to its
    cutoff, as ``predict`` counts it from a history's last observation; without it, from the cutoff.

    Rows that score observations ``fc`` trained on (its ``training_extent``) are refused with one line saying what
    to pass, unless ``refit`` (each window's model trained only on the history before its cutoff)."""
    from ts_neuralode import calibration

    codec = fc.transform.codec
    if not refit:
        calibration.refuse_trained_windows(getattr(fc, "training_extent", None), cv, codec)
    h = codec.duration(horizon, "horizon", ConfigError)
    lead = None
    if history is not None:
        table = fc.read_history(history, **read_options)
        lead = calibration.lead_since_last(table, cv["unique_id"], cv["ds"], cv["cutoff"])
    cal = calibration.fit(cv, fc.name, h, buckets, codec.unit_ns if codec.is_datetime else None, lead=lead)
    fc.calibration = cal
    if save_to is not None:
        calibration.save(save_to, cal)
    return cal


# -- the calibration at the end of a fit ----------------------------------------------------------------------
#: the band levels ``fit`` calibrates (a level too high for the number of held-out points is left out)
FIT_LEVELS = (50.0, 80.0, 90.0, 95.0, 99.0)
#: fewer held-out points than this: ``fit`` leaves the bands uncalibrated (and says so)
MIN_FIT_POINTS = 50
#: rolling windows per held-out stretch (cutoffs a quarter horizon apart)
FIT_WINDOWS = 4


def held_out_windows(datamodule) -> tuple[list, np.ndarray, np.ndarray, float] | None:
    """The backtest windows of a fit's data that the model never trained on: ``(ids, cuts [W, n], limit [n],
    horizon)`` in raw times (no target after ``limit``), or None without a validation split.

    * forecast task split by time: per series, cutoffs from its validation cutoff on, a quarter horizon apart, with
      targets up to the end of the validation horizon (the training targets stop at the validation cutoff; the test
      horizon after it stays untouched);
    * forecast task split by series: the validation series' last ``FIT_WINDOWS`` half-horizon-spaced windows;
    * interpolation / extrapolation: the validation series, cutoffs from the extrapolation cut (interpolation: the
      middle of the series) to the series' end, horizon = the longest stretch after the cut.
    The validation windows choose the best checkpoint, nothing else: they are held out from the weights."""
    split = getattr(datamodule, "split", None)
    if split is None or len(split.get("val", [])) == 0:
        return None
    table = datamodule.table
    val = np.asarray(split["val"], dtype=np.int64)
    ids = [table.ids[i] for i in val]
    k = np.arange(FIT_WINDOWS, dtype=np.float64)[:, None]
    first, last = table.first_times()[val], table.last_times()[val]
    if datamodule.task == "forecast":
        spec = datamodule._specs["val"]
        h = float(spec.horizon)
        if datamodule.split_by == "time":
            c0 = np.asarray(spec.cutoff, dtype=np.float64)[val]
            return ids, c0[None, :] + k * h / FIT_WINDOWS, c0 + h, h
        return ids, (last - h)[None, :] - k[::-1] * h / 2, np.full(len(val), np.inf), h
    if datamodule.task == "extrapolation" and datamodule.cut_time is not None:
        cut = np.full(len(val), float(table.codec.to_float([datamodule.cut_time])[0]))
    else:
        frac = datamodule.cut if datamodule.task == "extrapolation" else 0.5
        cut = first + frac * (last - first)
    span = last - cut
    h = float(np.max(span)) if len(span) else 0.0
    if not h > 0:
        return None
    return ids, cut[None, :] + k * span[None, :] / FIT_WINDOWS, np.full(len(val), np.inf), h


def fit_calibration(fc, datamodule, num_samples: int = 100, buckets: int = DEFAULT_BUCKETS,
                    seed: int | None = 0) -> tuple[dict | None, str]:
    """The conformal calibration of ``fc``'s bands from the fit's held-out validation windows
    (:func:`held_out_windows`), and a line saying what it was fitted on — or ``(None, why not)``."""
    from ts_neuralode import calibration

    windows = held_out_windows(datamodule)
    if windows is None:
        return None, ("no validation split to calibrate on (val_fraction 0); the bands are the model's own: "
                      "calibrate with 'ts-neuralode backtest --calibrate' on windows the model did not train on")
    ids, cuts, limit, h = windows
    source = datamodule.df if getattr(datamodule, "df", None) is not None else datamodule.path
    table = fc.read_history(source)
    pos = {str(u): i for i, u in enumerate(table.ids)}
    full = np.full((cuts.shape[0], table.n_series), np.nan)
    lim = np.full(table.n_series, np.inf)
    for j, u in enumerate(ids):
        i = pos.get(str(u))
        if i is not None:
            full[:, i], lim[i] = cuts[:, j], limit[j]
    codec = table.codec
    cuts_ns = codec.float_to_ns(np.nan_to_num(full)).reshape(full.shape) if codec.is_datetime else None
    spec = fc.covariate_spec
    covariates = (fc.read_covariates(source, None, table)
                  if spec is not None and (spec.future_cols or spec.static_cols) else None)
    frames = _run_windows(fc, table, full, cuts_ns, h, lim, 0, None, None, None, False,
                          dict(level=list(FIT_LEVELS), quantiles=None, num_samples=num_samples, context=None,
                               seed=seed, batch_size=64, calibrated=False, covariates=covariates))
    cv = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(cv) < MIN_FIT_POINTS:
        return None, (f"only {len(cv)} held-out validation points to calibrate on (at least {MIN_FIT_POINTS}); "
                      "the bands are the model's own: raise --data.val_fraction, or calibrate with 'ts-neuralode "
                      "backtest --calibrate' on windows the model did not train on")
    lead = calibration.lead_since_last(table, cv["unique_id"], cv["ds"], cv["cutoff"])
    cal = calibration.fit(cv, fc.name, h, buckets, codec.unit_ns if codec.is_datetime else None, lead=lead,
                          drop_unreachable=True)
    cal["fitted_on"] = {"what": "held-out validation windows of the fit", "points": int(len(cv)),
                        "series": len(ids)}
    levels = "/".join(cal["factors"])
    f90 = cal["factors"].get("90")
    stretch = f" (90% band stretched x{min(f90):.2f}-{max(f90):.2f})" if f90 else ""
    return cal, (f"calibrated the {levels}% bands on {len(cv)} held-out validation points of {len(ids)} series"
                 f"{stretch}")

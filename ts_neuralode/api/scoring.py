"""Scores of a backtest's rows (:func:`evaluate`: MAE, RMSE, CRPS, coverage, Winkler, band width, ``scaled_mae``;
overall, per series and per horizon bucket) and their reports (markdown, the error-vs-horizon plot, MLflow metrics).
The rows come from :func:`ts_neuralode.api.backtest.cross_validation`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.api.forecast_frame import band_col, fmt_level, levels_of, quantile_columns
from ts_neuralode.core.atomic import atomic_write_bytes
from ts_neuralode.data.timecodec import as_number, as_timedelta
from ts_neuralode.errors import ConfigError

DEFAULT_BUCKETS = 4
_UNIT_NAMES = {10**9: "s", 60 * 10**9: "min", 3600 * 10**9: "h", 86400 * 10**9: "D", 7 * 86400 * 10**9: "W"}


def model_columns(cv: pd.DataFrame) -> list[str]:
    """The point-forecast columns of a cross-validation frame (models and baselines)."""
    skip = {"unique_id", "ds", "channel", "cutoff", "y"}
    return [c for c in cv.columns if c not in skip and "-" not in c]


def lead_times(cv: pd.DataFrame, unit_ns: int | None = None) -> np.ndarray:
    """``ds - cutoff`` in the data's time units (for datetimes: ``unit_ns`` nanoseconds, which they need)."""
    if pd.api.types.is_datetime64_any_dtype(cv["ds"]):
        if not unit_ns:
            raise ConfigError(
                "the backtest's times are datetimes: lead times need their time unit (unit_ns, e.g. "
                "the model's fc.transform.codec.unit_ns)"
            )
        return ((cv["ds"] - cv["cutoff"]) / pd.Timedelta(int(unit_ns), "ns")).to_numpy(dtype=np.float64)
    return (cv["ds"].astype(float) - cv["cutoff"].astype(float)).to_numpy()


def horizon_in_units(
    cv: pd.DataFrame, horizon: float | str | pd.Timedelta, unit_ns: int | None = None
) -> tuple[float, int | None]:
    """``horizon`` (the forms :func:`cross_validation` takes) -> ``(number of time units, unit_ns)``. Datetime
    rows: a duration (``"12h"``, a Timedelta) in ``unit_ns`` (default: the largest of s / min / h / D / W that
    divides it), or a number in ``unit_ns`` (then required); numeric rows: a number."""

    is_dt = pd.api.types.is_datetime64_any_dtype(cv["ds"])
    number = as_number(horizon)
    if number is not None:
        if is_dt and not unit_ns:
            raise ConfigError(
                f"horizon={horizon!r} is a number but the backtest's times are datetimes: pass a "
                f"duration "
                "such as '12h', or unit_ns= (the model's time unit, fc.transform.codec.unit_ns)"
            )
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


def bucket_labels(edges: np.ndarray, unit_ns: int | None = None) -> list[str]:
    """``(a, b]`` per bucket, in the data's time unit (``12h``, ``1.5D``; plain numbers for numeric times)."""
    unit = _UNIT_NAMES.get(int(unit_ns), f"x{unit_ns}ns") if unit_ns else ""
    return [
        f"({fmt_level(round(a, 6))}{unit}, {fmt_level(round(b, 6))}{unit}]"
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def _scores(df: pd.DataFrame, models: list[str], key: str) -> pd.DataFrame:
    """One row per (``key`` value, model): utilsforecast's losses on the rows of ``df`` grouped by ``key``."""
    from utilsforecast import losses

    kw = {"id_col": key, "cutoff_col": "__no_cutoff__"}
    parts: dict[str, pd.DataFrame] = {"n": df.groupby(key, sort=True).size().rename("n").reset_index()}
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


def evaluate(
    cv: pd.DataFrame,
    horizon: float | str | pd.Timedelta,
    buckets: int = DEFAULT_BUCKETS,
    unit_ns: int | None = None,
    models: list[str] | None = None,
) -> pd.DataFrame:
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
            notes.append(
                f"scaled_mae leaves out {len(zero)} series whose locf MAE is 0 (constant after each cutoff): "
                f"{', '.join(zero[:10])}{' …' if len(zero) > 10 else ''}"
            )
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


def plot_error_vs_horizon(metrics: pd.DataFrame, path: str | os.PathLike, unit: str = "") -> Path:
    """MAE and coverage per horizon bucket, one line per model (PNG written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hz = metrics[metrics["scope"] == "horizon"].sort_values("bucket")
    cov_cols = [c for c in hz.columns if c.startswith("coverage-") and hz[c].notna().any()]
    fig, axes = plt.subplots(1, 2 if cov_cols else 1, figsize=(11 if cov_cols else 6, 4), squeeze=False)
    for model, g in hz.groupby("model", sort=False):
        axes[0, 0].plot(g["bucket"], g["mae"], marker="o", label=model)
        if cov_cols:
            for c in cov_cols:
                if g[c].notna().any():
                    axes[0, 1].plot(g["bucket"], g[c], marker="o", label=f"{model} {c[len('coverage-') :]}%")
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
            axes[0, 1].axhline(float(c[len("coverage-") :]) / 100.0, color="grey", lw=0.8, ls="--")
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
    lines += [
        f"{len(cv)} scored points, {cv['unique_id'].nunique()} series, {int(n_win.max())} window(s) per "
        f"series (cutoffs {cv['cutoff'].min()} … {cv['cutoff'].max()}). Errors in the data's units; "
        "`scaled_mae` (MASE-style) = the mean of each error divided by its series' `locf` MAE, so every series "
        "counts in its own scale (below 1 beats carrying the last value forward); `crps` from the predictive "
        "quantiles; `coverage-L`: fraction of points inside the L% "
        "band (nominal L/100).",
        "",
    ]
    lines += [f"Note: {n}" for n in metrics.attrs.get("notes", [])] + ([""] if metrics.attrs.get("notes") else [])
    for scope, head in (
        ("overall", "Overall"),
        ("horizon", "Per horizon bucket (time after the cutoff)"),
        ("series", "Per series"),
    ):
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

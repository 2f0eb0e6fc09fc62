"""Forecast figures: one PNG per series — observed history, forecast mean and its uncertainty bands.

Inputs are the tidy frames of :mod:`ts_neuralode.api.forecast_frame`:

* history: ``unique_id, ds, channel, y`` (one row per observed value, original units and timestamps);
* forecast: ``unique_id, ds, [channel,] <model>, <model>-lo-<L>, <model>-hi-<L>…`` (Nixtla style).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ts_neuralode.api.forecast_chunk import forecast_chunk  # noqa: E402
from ts_neuralode.api.forecast_frame import band_col, fmt_level, levels_of, table_to_long  # noqa: E402
from ts_neuralode.core.atomic import atomic_write_bytes  # noqa: E402
from ts_neuralode.data.batching import subset_table  # noqa: E402


def forecast_levels(forecast: pd.DataFrame, model: str) -> list[str]:
    """The interval levels present in a forecast frame, widest first (as strings, e.g. ``["90", "50"]``)."""
    return [fmt_level(lv) for lv in reversed(levels_of(forecast, model))]


def safe_filename(name: object) -> str:
    """A file-system-safe stem for a series id."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return stem or "series"


def plot_series_forecast(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    model: str,
    path: str | Path,
    *,
    title: str | None = None,
    cutoff: object | None = None,
) -> Path:
    """Draw one series (all its channels, one panel each) and save it to ``path`` (PNG).

    ``history`` and ``forecast`` hold only this series. ``cutoff`` (a time) draws a dashed line where the
    conditioning history ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "channel" in forecast.columns:
        channels = list(dict.fromkeys(forecast["channel"].tolist()))
    else:
        channels = list(dict.fromkeys(history["channel"].tolist())) if "channel" in history.columns else [None]
    levels = forecast_levels(forecast, model)
    n = len(channels)
    fig, axes = plt.subplots(n, 1, figsize=(10.5, 2.6 * n + 0.8), sharex=True, squeeze=False)
    for ax, ch in zip(axes[:, 0], channels, strict=True):
        h = history if ch is None or "channel" not in history.columns else history[history["channel"] == ch]
        f = forecast if ch is None or "channel" not in forecast.columns else forecast[forecast["channel"] == ch]
        f = f.sort_values("ds")
        h = h.sort_values("ds")
        for i, lvl in enumerate(levels):
            alpha = 0.15 + 0.15 * i
            ax.fill_between(
                f["ds"],
                f[band_col(model, "lo", lvl)],
                f[band_col(model, "hi", lvl)],
                color="tab:blue",
                alpha=min(alpha, 0.6),
                linewidth=0,
                label=f"{lvl}% interval",
            )
        ax.plot(f["ds"], f[model], color="tab:blue", linewidth=1.6, label=f"forecast ({model})")
        # A thin line through the observations makes cycles visible in sparse, irregular histories.
        ax.plot(h["ds"], h["y"], color="0.6", linewidth=0.7, zorder=2)
        ax.scatter(h["ds"], h["y"], s=10, color="black", zorder=3, label="observed")
        if cutoff is not None:
            ax.axvline(cutoff, color="grey", linestyle="--", linewidth=1, label="end of history")
        ax.set_ylabel(str(ch) if ch is not None else "value")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[0, 0].set_title(title or "forecast")
    axes[-1, 0].set_xlabel("time")
    fig.autofmt_xdate() if pd.api.types.is_datetime64_any_dtype(forecast["ds"]) else None
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())  # a kill during the save leaves the previous PNG
    return path


def plot_forecasts(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    model: str,
    out_dir: str | Path,
    *,
    series: Sequence[object] | None = None,
    cutoffs: dict | None = None,
    prefix: str = "forecast_",
) -> list[Path]:
    """One PNG per series in ``out_dir`` (``forecast_<id>.png``); returns the paths written."""
    out_dir = Path(out_dir)
    ids = list(series) if series is not None else list(dict.fromkeys(forecast["unique_id"].tolist()))
    paths = []
    for uid in ids:
        paths.append(
            plot_series_forecast(
                history[history["unique_id"] == uid],
                forecast[forecast["unique_id"] == uid],
                model,
                out_dir / f"{prefix}{safe_filename(uid)}.png",
                title=f"{uid} — {model}",
                cutoff=(cutoffs or {}).get(uid),
            )
        )
    return paths


def validation_forecast_figures(
    forecaster, datamodule, out_dir, n_series: int = 3, num_samples: int = 50
) -> list[Path]:
    """Fit-time figures of a :class:`~ts_neuralode.api.forecaster.Forecaster`: condition on the first half of a few
    validation series (test, then training series when there are none), forecast the rest and a quarter beyond."""
    import numpy as np

    table = datamodule.table
    names = [n for n in ("val", "test", "train") if len(datamodule.split.get(n, []))]
    idx = list(datamodule.split[names[0]][:n_series])
    hist_full = forecaster.target_rows(table_to_long(subset_table(table, idx)))  # no past covariates
    ctx_parts, queries = [], []
    for i in idx:
        t = table.times[table.offsets[i] : table.offsets[i + 1]]
        cut = t[0] + 0.5 * (t[-1] - t[0])
        ctx_parts.append(int(np.searchsorted(t, cut, side="right")))
        queries.append(np.linspace(t[0], t[-1] + 0.25 * (t[-1] - t[0]), 120))
    ctx = subset_table(table, idx, hi=ctx_parts)
    cov = getattr(datamodule.arrays, "covariates", None)  # known-future covariates, when the model reads them
    fc = forecast_chunk(
        forecaster,
        ctx,
        list(range(len(idx))),
        queries,
        num_samples,
        [50.0, 90.0],
        [],
        None,
        None if cov is None else cov.arrays.subset(idx),
    )
    fc = fc.assign(unique_id=fc["unique_id"].astype(str))
    hist_full = hist_full.assign(unique_id=hist_full["unique_id"].astype(str))
    cut_t = dict(zip([str(i) for i in ctx.ids], ctx.user_times(ctx.offsets[1:] - 1), strict=True))
    return plot_forecasts(hist_full, fc, forecaster.name, out_dir, cutoffs=cut_t, prefix="val_forecast_")

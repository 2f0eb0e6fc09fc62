"""The forecast's output frames: Nixtla-style columns, interval bands, and the history as tidy rows.

* forecast: ``unique_id, ds, [channel,] <name>, <name>-lo-<L>, <name>-hi-<L>, <name>-q-<P>`` (``L`` a central
  interval level in percent, ``P`` a quantile in percent; one row per series, time and channel);
* history: ``unique_id, ds, channel, y`` (one row per observed value, original units and timestamps).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from ts_neuralode.errors import ForecastError
from ts_neuralode.models.evolution_config import evolution_kind

DEFAULT_LEVELS = (50, 90)


def model_display_name(hparams: Mapping[str, Any]) -> str:
    """Column name of the point forecast: the model name, plus the evolution when it is not an ODE."""
    model = str(hparams.get("model", "model"))
    kind = evolution_kind(hparams.get("evolution"))
    return model if kind == "ode" else f"{model}_{kind}"


def parse_levels(level: Iterable[float] | float | None) -> list[float]:
    if level is None:
        return []
    levels = [level] if isinstance(level, (int, float)) else list(level)
    for lv in levels:
        if not 0 < float(lv) < 100:
            raise ForecastError(f"level {lv} must be a percentage strictly between 0 and 100 (e.g. 90)")
    return sorted({float(lv) for lv in levels})


def _fmt(x: float) -> str:
    return f"{x:g}"


def quantile_bands(forecast, levels: list[float], quantiles: list[float]) -> dict[str, torch.Tensor]:
    """``{"lo-L": …, "hi-L": …, "q-P": …}``: the band columns of a :class:`~ts_neuralode.models.Forecast`."""
    bands: dict[str, torch.Tensor] = {}
    for lv in levels:
        a = (1.0 - lv / 100.0) / 2.0
        bands[f"lo-{_fmt(lv)}"] = forecast.quantile(a)
        bands[f"hi-{_fmt(lv)}"] = forecast.quantile(1.0 - a)
    for q in quantiles:
        bands[f"q-{_fmt(100.0 * q)}"] = forecast.quantile(q)
    return bands


def nixtla_frame(frame: pd.DataFrame, transform, name: str, band_names: list[str]) -> pd.DataFrame:
    """``[id, time, ch, ch-band…]`` -> ``unique_id, ds, [channel,] name, name-band…``."""
    tr = transform
    base = frame[[tr.id_col, tr.time_col]].rename(columns={tr.id_col: "unique_id", tr.time_col: "ds"})
    channels = list(tr.channel_names)
    parts = []
    for ch in channels:
        part = base.copy()
        if len(channels) > 1:
            part["channel"] = ch
        part[name] = frame[ch].to_numpy()
        for b in band_names:
            part[f"{name}-{b}"] = frame[f"{ch}-{b}"].to_numpy()
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    keys = ["unique_id", "ds"] + (["channel"] if len(channels) > 1 else [])
    order = {c: i for i, c in enumerate(channels)}
    if len(channels) > 1:
        out = out.sort_values(keys, key=lambda s: s.map(order) if s.name == "channel" else s, kind="stable")
    return out.drop_duplicates(keys).reset_index(drop=True)


def table_to_long(table) -> pd.DataFrame:
    """SeriesTable -> ``unique_id, ds, channel, y`` rows for every observed value."""
    ids = np.repeat(np.asarray(table.ids, dtype=object), table.counts)
    ts = table.user_times()  # exactly as read
    parts = []
    for d, ch in enumerate(table.channel_names):
        m = table.mask[:, d]
        parts.append(pd.DataFrame({"unique_id": ids[m], "ds": ts[m] if isinstance(ts, pd.DatetimeIndex) else ts[m],
                                   "channel": ch, "y": table.values[m, d]}))
    return pd.concat(parts, ignore_index=True)

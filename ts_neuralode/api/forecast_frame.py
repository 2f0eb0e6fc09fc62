"""The forecast's output frames: Nixtla-style columns, interval bands, and the history as tidy rows.

* forecast: ``unique_id, ds, [channel,] <name>, <name>-lo-<L>, <name>-hi-<L>, <name>-q-<P>`` (``L`` a central
  interval level in percent, ``P`` a quantile in percent; one row per series, time and channel);
* history: ``unique_id, ds, channel, y`` (one row per observed value, original units and timestamps).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.errors import ForecastError
from ts_neuralode.models.evolution_config import evolution_kind

DEFAULT_LEVELS = SAMPLING.level


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


def parse_quantiles(quantiles: Iterable[float] | None) -> list[float]:
    """The distinct ``quantiles`` asked for, sorted, each checked to lie strictly between 0 and 1."""
    qs = sorted({float(q) for q in (quantiles or [])})
    for q in qs:
        if not 0.0 < q < 1.0:
            raise ForecastError(f"quantile {q} must be strictly between 0 and 1 (e.g. 0.1, 0.9)")
    return qs


# -- band column names: made and parsed here only ------------------------------------------------------------
def fmt_level(x: float) -> str:
    """A level or quantile percent as it appears in a column name (``90``, ``97.5``)."""
    return f"{float(x):g}"


def band_name(kind: str, x: float) -> str:
    """``lo-L`` / ``hi-L`` (central interval level ``L`` in percent) or ``q-P`` (quantile ``P`` in percent)."""
    return f"{kind}-{fmt_level(x)}"


def band_col(name: str, kind: str, x: float) -> str:
    """The column of band ``kind`` at ``x`` of forecast ``name`` (``<name>-lo-90``)."""
    return f"{name}-{band_name(kind, x)}"


def levels_of(frame: pd.DataFrame, name: str) -> list[int | float]:
    """The interval levels of ``name`` with both a ``-lo-L`` and a ``-hi-L`` column in ``frame``, ascending."""
    out = []
    for c in frame.columns:
        tag = c[len(name) + 4 :] if c.startswith(f"{name}-lo-") else None
        if tag is not None and f"{name}-hi-{tag}" in frame.columns:
            v = float(tag)
            out.append(int(v) if v.is_integer() else v)
    return sorted(out)


def quantile_columns(frame: pd.DataFrame, name: str) -> tuple[list[str], np.ndarray]:
    """The ``-q-P`` columns of ``name`` in ``frame`` and their quantiles (fractions), ascending."""
    cols = [c for c in frame.columns if c.startswith(f"{name}-q-")]
    qs = np.array([float(c[len(name) + 3 :]) / 100.0 for c in cols])
    order = np.argsort(qs)
    return [cols[i] for i in order], qs[order]


def quantile_bands(forecast, levels: list[float], quantiles: list[float]) -> dict[str, torch.Tensor]:
    """``{"lo-L": …, "hi-L": …, "q-P": …}``: the band columns of a :class:`~ts_neuralode.models.Forecast`."""
    bands: dict[str, torch.Tensor] = {}
    for lv in levels:
        a = (1.0 - lv / 100.0) / 2.0
        bands[band_name("lo", lv)] = forecast.quantile(a)
        bands[band_name("hi", lv)] = forecast.quantile(1.0 - a)
    for q in quantiles:
        bands[band_name("q", 100.0 * q)] = forecast.quantile(q)
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
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": ids[m],
                    "ds": ts[m] if isinstance(ts, pd.DatetimeIndex) else ts[m],
                    "channel": ch,
                    "y": table.values[m, d],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)

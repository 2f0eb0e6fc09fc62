"""What a fit trained on, recorded in its model directory (``training_extent.json``): per training series, the raw
time after which no training target lies. A band calibration on backtest windows must not score those points:
conformal factors fitted where the model saw the data come out too small (:func:`refuse_trained_windows`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.core.atomic import read_json, write_json
from ts_neuralode.errors import ForecastError

#: the model directory's record of the data the model trained on (:func:`training_extent`)
EXTENT_FILE = "training_extent.json"
EXTENT_FORMAT = "ts_neuralode.training_extent/1"


def training_extent(datamodule) -> dict | None:
    """Which observations a fit trained on: per training series (id as text), the raw time after which no training
    target lies (None: the whole series). Series not listed were held out (validation / test series). None when the
    data module does not say (not an :class:`IrregularTimeSeriesDataModule`)."""
    split = getattr(datamodule, "split", None)
    table = getattr(datamodule, "table", None)
    if split is None or table is None:
        return None
    specs = getattr(datamodule, "_specs", {}) or {}
    end = getattr(specs.get("train"), "end", None)
    series = {}
    for i in np.unique(np.asarray(split["train"], dtype=np.int64)):
        e = None if end is None or not np.isfinite(end[i]) else float(end[i])
        series[str(table.ids[i])] = e
    splits = {k: [_json_id(table.ids[i]) for i in np.asarray(v, dtype=np.int64)] for k, v in split.items()}
    return {"format": EXTENT_FORMAT, "series": series, "split": splits}


def _json_id(u: Any) -> Any:
    """A series id as JSON keeps it (numbers stay numbers)."""
    return u.item() if isinstance(u, np.generic) else u


def save_extent(model_dir: str | os.PathLike, extent: Mapping[str, Any]) -> Path:
    return write_json(Path(model_dir) / EXTENT_FILE, dict(extent), indent=None)


def load_extent(model_dir: str | os.PathLike) -> dict | None:
    try:
        data = read_json(Path(model_dir) / EXTENT_FILE)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("format") == EXTENT_FORMAT else None


def trained_rows(extent: Mapping[str, Any] | None, unique_id: Any, ds_raw: np.ndarray) -> np.ndarray:
    """Which rows (series ``unique_id`` at raw times ``ds_raw``) are observations the model trained on."""
    n = len(ds_raw)
    if extent is None:
        return np.zeros(n, dtype=bool)
    series = extent.get("series", {})
    ends = (
        pd.Series(np.asarray(unique_id, dtype=object))
        .astype(str)
        .map(lambda u: (np.inf if series[u] is None else float(series[u])) if u in series else -np.inf)
    )
    return np.asarray(ds_raw, dtype=np.float64) <= ends.to_numpy(np.float64)


def refuse_trained_windows(extent: Mapping[str, Any] | None, cv: pd.DataFrame, codec) -> None:
    """ForecastError (one line, what to pass) when backtest rows ``cv`` score observations the model trained on:
    conformal factors fitted on them are too small (the model fits its training data better than new data)."""
    if extent is None or cv.empty:
        return
    hit = trained_rows(extent, cv["unique_id"], codec.to_float(cv["ds"]))
    if not hit.any():
        return
    first = cv[hit].iloc[0]
    series = extent["series"]
    until = series.get(str(first["unique_id"]))
    where = "the whole series" if until is None else f"up to {codec.from_float([until])[0]}"
    held = [u for u in dict.fromkeys(cv["unique_id"].astype(str)) if u not in series]
    hint = f"--series {' '.join(held[:8])}{' …' if len(held) > 8 else ''} (series the fit held out), " if held else ""
    raise ForecastError(
        f"--calibrate: {int(hit.sum())} of the {len(cv)} backtest points lie in the data the model trained on "
        f"(series {first['unique_id']!s} at {first['ds']!s}; it trained on {where}), and bands calibrated on them "
        f"come out too narrow; pass --refit 1 (a new model per window), {hint}or --cutoffs after the training "
        "data — or leave out --calibrate: fit already calibrated the bands on its held-out validation windows"
    )


__all__ = ["EXTENT_FILE", "training_extent", "save_extent", "load_extent", "trained_rows", "refuse_trained_windows"]

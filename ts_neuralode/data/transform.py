"""Normalisation of values and times, and the forecaster path (history DataFrame -> Batch -> DataFrame).

Time convention (the one place it is defined)
---------------------------------------------
1. The user's time column becomes *raw float time* (:class:`~ts_neuralode.data.timecodec.TimeCodec`):
   numbers as they are; datetimes as ``(timestamp - earliest timestamp in the training file) / time_unit``.
2. *Model time* is ``(raw - origin) / time_scale``:

   * ``origin`` is, with ``time_origin="series"`` (default), each series' own first observed time (so
     every series starts at model time 0); with ``time_origin="zero"`` it is 0 for all series (raw
     float time is kept, only rescaled; use it when absolute time matters, e.g. periodic signals that
     depend on t).
   * ``time_scale`` is global. ``"auto"`` picks the smallest power of 10 such that the longest training
     series spans at most 10 model units (so [0, 10] or [0, 5] protocols stay unchanged, while e.g. hours
     over a year become spans of ~0.9..9). A number fixes it.

Values: one scikit-learn scaler per channel (``"standard"`` default, ``"minmax"``, ``"robust"`` or
``"none"``) fitted on the observed training values only, stored as ``center`` / ``scale`` so that
``model = (value - center) / scale``. ``"log"``: ``model = (log(value) - center) / scale`` on the forecast channels
(``log`` flags them; every value must be positive), the standard scaler on past covariates.

Everything is JSON-serialisable: ``SeriesTransform.state_dict()`` / ``SeriesTransform.from_state_dict()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.batching import SeriesArrays, collate
from ts_neuralode.data.io import read_series
from ts_neuralode.data.scalers import (
    SCALERS,
    exp_channels,
    fit_channel_scalers,
    log_channels,
    refuse_non_positive,
    resolve_time_scale,
)
from ts_neuralode.data.timecodec import TimeCodec, unit_to_ns
from ts_neuralode.errors import ConfigError, DataError, ForecastError

# Largest |value| a model input or target may have after scaling. Beyond it float32 arithmetic in the models
# overflows (a squared error of 1e12 is 1e24; summed over 1e8 points 1e32, still below float32's 3.4e38); a value
# that far out is a unit or data-entry error, and it gets a data error naming its file, column and row.
MAX_SCALED_VALUE = 1e12
# Largest |model time| of a history: float32 keeps it finite and the solvers can step across it (auto
# time_scale makes training spans <= 10 model units).
MAX_MODEL_TIME = 1e6


@dataclass
class SeriesTransform:
    """Maps values and times between original and model units (see the module docstring).

    Attributes:
        channel_names: value columns, in channel order.
        codec: raw time codec (datetimes <-> floats, timezone).
        time_origin: "series" or "zero".
        time_scale: raw time units per model time unit.
        scaler: scaler kind; ``center`` / ``scale``: ``[D]`` lists; ``log``: ``[D]`` flags of the channels whose
            natural log is scaled (scaler ``"log"``; None: none).
        id_col / time_col: column names used when writing frames.
    """

    channel_names: list[str]
    codec: TimeCodec
    time_origin: str = "series"
    time_scale: float = 1.0
    scaler: str = "standard"
    center: list[float] | None = None
    scale: list[float] | None = None
    log: list[bool] | None = None
    id_col: str = "unique_id"
    time_col: str = "ds"

    def __post_init__(self) -> None:
        if self.time_origin not in ("series", "zero"):
            raise ConfigError(f"time_origin={self.time_origin!r} is not supported; use 'series' or 'zero'")
        d = len(self.channel_names)
        self.center = [0.0] * d if self.center is None else [float(c) for c in self.center]
        self.scale = [1.0] * d if self.scale is None else [float(s) for s in self.scale]
        self.log = [False] * d if self.log is None else [bool(x) for x in self.log]
        self._log = np.asarray(self.log, dtype=bool)
        self._c = np.asarray(self.center, dtype=np.float64)
        self._s = np.asarray(self.scale, dtype=np.float64)

    # --- fitting / serialisation -----------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        table,
        series: np.ndarray | None = None,
        *,
        scaler: str = "standard",
        time_scale: float | str = "auto",
        time_origin: str = "series",
        window: float | None = None,
    ) -> SeriesTransform:
        """Fit on the series ``series`` (indices into ``table``; default all) of a SeriesTable.

        ``window``: the longest stretch of raw time a model integrates over, when it is shorter than a series
        (the forecast task's context + horizon): with ``time_scale="auto"`` and ``time_origin="series"`` it
        sets the scale instead of the longest series, so a window spans a few model units whatever the length
        of the history (a weekly series over 40 years, forecast a year ahead from five, keeps its yearly cycle
        at a few radians per model unit instead of ~70, which an ODE initialised near zero would have to reach).
        """
        if scaler not in SCALERS:
            raise ConfigError(f"scaler={scaler!r} is not supported; use one of {', '.join(SCALERS)}")
        series = np.arange(table.n_series) if series is None else np.asarray(series)
        lo, hi = table.offsets[series], table.offsets[series + 1]
        marks = np.zeros(len(table.times) + 1, dtype=np.int64)
        np.add.at(marks, lo, 1)
        np.add.at(marks, hi, -1)
        rows = np.cumsum(marks[:-1]) > 0
        centers, scales, log = fit_channel_scalers(table, rows, scaler)

        def span() -> float:  # what the auto time scale reads
            if time_origin != "series":
                return float(np.max(np.abs(table.times[rows])))
            longest = float(np.max(table.last_times()[series] - table.first_times()[series]))
            return longest if window is None else min(longest, float(window))

        ts = resolve_time_scale(time_scale, span)
        out = cls(
            channel_names=list(table.channel_names),
            codec=table.codec,
            time_origin=time_origin,
            time_scale=ts,
            scaler=scaler,
            center=centers,
            scale=scales,
            log=log,
            id_col=table.id_col or "unique_id",
            time_col=table.time_col,
        )
        out.check_table(table)
        return out

    def check_table(self, table) -> None:
        """DataError naming file, column and row for the first value or time that this transform would make
        non-finite or too large for the float32 model (|scaled value| > :data:`MAX_SCALED_VALUE`, |model time| >
        :data:`MAX_MODEL_TIME`), so that a fit or forecast never meets it as a NaN deep in a solver."""
        refuse_non_positive(table, self.log)
        with np.errstate(over="ignore", invalid="ignore"):
            z = self.transform_values(table.values)
            tm = self.raw_to_model_time(table.times, np.repeat(self.origins(table), table.counts))
        bad = table.mask & ~(np.abs(z) <= MAX_SCALED_VALUE)
        if bad.any():
            k, d = (int(a[0]) for a in np.nonzero(bad))
            raise DataError(
                f"{table.where(self.channel_names[d], k)}: value {table.values[k, d]:g} is {abs(z[k, d]):.3g} times "
                f"the "
                f"column's training scale ({self.scale[d]:.3g}) from its center ({self.center[d]:.3g}), beyond what "
                f"the model's float32 inputs can hold (|scaled| <= {MAX_SCALED_VALUE:g}); fix the value or rescale the "
                "column"
            )
        bad = ~(np.abs(tm) <= MAX_MODEL_TIME)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{table.where(table.time_col, k)}: time {table.user_times(np.array([k]))[0]} is {abs(tm[k]):.3g} "
                f"model time units from its series' origin (time_scale {self.time_scale:g}), beyond what the model "
                f"can step across (|model time| <= {MAX_MODEL_TIME:g}); fix the time, split the series, or pass a "
                "larger --data.time_scale"
            )

    def state_dict(self) -> dict:
        """Plain JSON-able dict (no pickles)."""
        return {
            "channel_names": list(self.channel_names),
            "codec": self.codec.state_dict(),
            "time_origin": self.time_origin,
            "time_scale": float(self.time_scale),
            "scaler": self.scaler,
            "center": [float(c) for c in self.center],
            "scale": [float(s) for s in self.scale],
            "log": list(self.log),
            "id_col": self.id_col,
            "time_col": self.time_col,
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> SeriesTransform:
        d = dict(d)
        d["codec"] = TimeCodec.from_state_dict(d["codec"])
        return cls(**d)

    # --- values ----------------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def transform_values(self, v: Any) -> np.ndarray:
        """Original -> model units; ``v`` [..., D]."""
        v = log_channels(v, self._log) if self._log.any() else np.asarray(v, dtype=np.float64)
        return (v - self._c) / self._s

    def inverse_values(self, v: Any) -> np.ndarray:
        """Model -> original units; ``v`` [..., D] (tensor or array). Monotone per channel: a quantile maps to the
        same quantile (on a log channel the sample mean maps to the geometric mean, the median of a log-normal)."""
        if isinstance(v, Tensor):
            v = v.detach().cpu().double().numpy()
        out = np.asarray(v, dtype=np.float64) * self._s + self._c
        return exp_channels(out, self._log) if self._log.any() else out

    # --- times -----------------------------------------------------------------------------------
    def to_model_time(self, t: Any, origin: Any = 0.0) -> np.ndarray:
        """User times (numbers or datetimes) -> model time; ``origin`` is raw float (per series, broadcast)."""
        raw = self.codec.to_float(t)
        return (raw - np.asarray(origin, dtype=np.float64)) / self.time_scale

    def raw_to_model_time(self, raw: Any, origin: Any = 0.0) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - np.asarray(origin, dtype=np.float64)) / self.time_scale

    def from_model_time(self, tm: Any, origin: Any = 0.0) -> np.ndarray | pd.DatetimeIndex:
        """Model time -> user times: floats, or a DatetimeIndex (flattened) with the original timezone."""
        if isinstance(tm, Tensor):
            tm = tm.detach().cpu().double().numpy()
        raw = np.asarray(tm, dtype=np.float64) * self.time_scale + np.asarray(origin, dtype=np.float64)
        return self.codec.from_float(raw)

    def _history_times(self, table, idx: Sequence[int], tm: np.ndarray, origins: np.ndarray):
        """Output times for model times ``tm`` [B, Tq] of series ``idx`` of ``table``: each observation's own time
        (as read) where ``tm`` is it up to float32 rounding, else the time computed from ``tm``."""
        raw = tm * self.time_scale + origins
        tol = 8 * float(np.finfo(np.float32).eps) * (np.abs(tm) + 1.0) * self.time_scale
        rows = np.full(raw.shape, -1, dtype=np.int64)
        for r, s in enumerate(np.asarray(idx, dtype=np.int64)):
            lo, hi = int(table.offsets[s]), int(table.offsets[s + 1])
            obs = table.times[lo:hi]
            j = np.clip(np.searchsorted(obs, raw[r]), 1, max(len(obs) - 1, 1))
            near = np.where(
                np.abs(obs[j - 1] - raw[r]) <= np.abs(obs[np.minimum(j, len(obs) - 1)] - raw[r]),
                j - 1,
                np.minimum(j, len(obs) - 1),
            )
            hit = np.abs(obs[near] - raw[r]) <= tol[r]
            rows[r] = np.where(hit, lo + near, -1)
        flat, hit = rows.reshape(-1), rows.reshape(-1) >= 0
        if not self.codec.is_datetime:
            return np.where(hit, table.times[np.maximum(flat, 0)], raw.reshape(-1))
        computed = self.codec.float_to_ns(raw)
        if table.time_ns is None:
            return self.codec.from_ns(computed)
        return self.codec.from_ns(np.where(hit, table.time_ns[np.maximum(flat, 0)], computed))

    def origins(self, table) -> np.ndarray:
        """``[S]`` raw float origin of every series of a SeriesTable (its first time, or 0)."""
        if self.time_origin == "series":
            return table.first_times().astype(np.float64)
        return np.zeros(table.n_series)

    # --- forecaster path -------------------------------------------------------------------------
    def read(self, source, **read_kwargs):
        """Read a history CSV/DataFrame with this transform's columns and time codec (``value_cols`` named otherwise
        than at fit time stand for the training channels, in order)."""
        kw = {
            "id_col": self.id_col,
            "time_col": self.time_col,
            "value_cols": list(self.channel_names),
            "codec": self.codec,
            "min_points": 1,
        }  # one observation is enough to condition a forecast
        # None for these means "the default", which here is the training setting, not auto-detection
        kw.update({k: v for k, v in read_kwargs.items() if v is not None or k not in ("value_cols", "time_unit")})
        table = read_series(source, **kw)
        given = [v] if isinstance(v := read_kwargs.get("value_cols"), str) else list(v or [])
        if len(given) == len(self.channel_names) == len(table.channel_names) and set(given) != set(self.channel_names):
            table = replace(table, channel_names=list(self.channel_names))  # named otherwise: the channels in order
        if table.channel_names != list(self.channel_names):
            raise DataError(
                f"{table.source}: channels {table.channel_names} differ from the training channels "
                f"{list(self.channel_names)}; pass value_cols in that order"
            )
        return table

    def make_batch(self, source, *, layout: str = "padded", **read_kwargs) -> PreparedBatch:
        """History (CSV path, DataFrame or SeriesTable) -> :class:`PreparedBatch` conditioning on every
        observed value. Use ``prepared.query_times(...)`` for prediction times and ``prepared.to_frame(...)``
        to map predictions back to original units and timestamps."""

        table = source if hasattr(source, "offsets") else self.read(source, **read_kwargs)
        self.check_table(table)
        origins = self.origins(table)
        arrays = SeriesArrays.from_table(table, self, origins)
        idx = np.arange(table.n_series)
        batch = collate(arrays, idx, layout=layout)
        gaps = np.diff(table.times)
        inner = np.ones(len(gaps), dtype=bool)
        inner[table.offsets[1:-1] - 1] = False
        gaps = gaps[inner]
        return PreparedBatch(
            batch=batch,
            series_ids=list(table.ids),
            origins=origins,
            last_times=table.last_times().copy(),
            transform=self,
            median_gap=float(np.median(gaps)) if gaps.size else 1.0,
        )

    def to_frame(
        self,
        series_ids: Sequence,
        origins: np.ndarray,
        times: Any,
        values: Any,
        bands: Mapping[str, Any] | None = None,
        history: tuple[Any, Sequence[int]] | None = None,
    ) -> pd.DataFrame:
        """Model-unit predictions -> long DataFrame ``[id_col, time_col, <channel>..., <channel>-<band>...]``.

        Args:
            series_ids: ``B`` ids; origins: ``[B]`` raw float origins.
            times: ``[Tq]`` or ``[B, Tq]`` model times. values: ``[B, Tq, D]`` model-unit values.
            bands: extra ``[B, Tq, D]`` arrays (e.g. {"lo-90": q05, "hi-90": q95}) in model units, mapped like
                values, written as ``<channel>-<name>``.
            history: ``(table, idx)``: the SeriesTable the predictions are about and the table position of each of
                the ``B`` series. A time within float32 rounding of one of that series' observations is then written
                as that observation's time exactly as read (model times are float32: without this, a forecast at
                the batch's own times comes back a few units in the last place off).
        """

        def to_np(a):
            return a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, float)

        values = to_np(values)
        b, tq, d = values.shape
        times = to_np(times)
        if times.ndim == 1:
            times = np.broadcast_to(times, (b, tq))
        origins = np.asarray(origins, dtype=np.float64).reshape(b, 1)
        if history is not None:
            ts = self._history_times(history[0], history[1], times, origins)
        else:
            ts = self.from_model_time(times, np.broadcast_to(origins, (b, tq)))
        out = {
            self.id_col: np.repeat(np.asarray(series_ids, dtype=object), tq),
            self.time_col: ts if isinstance(ts, pd.DatetimeIndex) else np.asarray(ts).reshape(-1),
        }
        vals = self.inverse_values(values).reshape(b * tq, d)
        for k, ch in enumerate(self.channel_names):
            out[ch] = vals[:, k]
        for name, arr in (bands or {}).items():
            mapped = self.inverse_values(to_np(arr)).reshape(b * tq, d)
            for k, ch in enumerate(self.channel_names):
                out[f"{ch}-{name}"] = mapped[:, k]
        return pd.DataFrame(out)


@dataclass
class PreparedBatch:
    """A history turned into a Batch, plus what is needed to map predictions back.

    Attributes:
        batch: the :class:`Batch` (obs_mask = target_mask = every observed value; cutoff = last time).
        series_ids: ``B`` original ids, in batch order.
        origins: ``[B]`` raw float origin of each series.
        last_times: ``[B]`` raw float time of each series' last observation.
        median_gap: median raw time between consecutive observations of a series.
        transform: the :class:`SeriesTransform` used.
    """

    batch: Batch
    series_ids: list
    origins: np.ndarray
    last_times: np.ndarray
    transform: SeriesTransform
    median_gap: float = 1.0

    def _raw_query(self, times: Any, raw: bool = False) -> np.ndarray:
        """Query times -> ``[B, Tq]`` float64 raw times (see :meth:`query_times`)."""
        if isinstance(times, Tensor):
            times = times.detach().cpu().numpy()
        arr = times if isinstance(times, (pd.Series, pd.Index)) else np.asarray(times)
        codec = self.transform.codec
        conv = (lambda x: np.asarray(x, dtype=np.float64)) if raw else codec.to_float
        if getattr(arr, "ndim", 1) == 2:
            out = np.stack([conv(row) for row in arr]) if not raw else np.asarray(arr, dtype=np.float64)
        else:
            out = conv(arr).reshape(1, -1)
            out = np.broadcast_to(out, (len(self.series_ids), out.shape[1]))
        if out.shape[0] != len(self.series_ids):
            raise ForecastError(
                f"query times have {out.shape[0]} rows but the history has {len(self.series_ids)} "
                "series; pass one row per series or a 1-D list shared by all"
            )
        if out.shape[1] > 1 and (np.diff(out, axis=1) < 0).any():
            raise ForecastError("query times must be sorted in increasing order")
        return out

    def query_times(self, times: Any, raw: bool = False) -> Tensor:
        """Prediction times -> ``[B, Tq]`` float32 model times.

        ``times``: a 1-D sequence of numbers/datetimes shared by all series, or a 2-D ``[B, Tq]`` array
        (one row per series). ``raw=True``: the values are raw float times (e.g. from
        :meth:`future_times`). Each row must be non-decreasing."""
        tm = self.transform.raw_to_model_time(self._raw_query(times, raw), self.origins[:, None])
        return torch.as_tensor(tm, dtype=torch.float32)

    def future_times(self, horizon: int, step: float | str | None = None) -> np.ndarray:
        """``[B, horizon]`` raw float times after each series' last observation, ``step`` apart (raw
        units, or a pandas duration such as "1h" for datetime data; default: the median gap of the history).
        Feed them to ``query_times(ft, raw=True)`` and ``to_frame(..., query=ft, raw=True)``."""
        if step is None:
            dt = self.median_gap
        elif isinstance(step, str):
            if not self.transform.codec.is_datetime:
                raise ForecastError(f"step={step!r} is a duration but the data's time axis is numeric; pass a number")

            dt = pd.Timedelta(step).value / unit_to_ns(self.transform.codec.unit or "h")
        else:
            dt = float(step)
        return self.last_times[:, None] + dt * np.arange(1, horizon + 1)[None, :]

    def to_frame(
        self, times: Any, values: Any, bands: Mapping[str, Any] | None = None, query: Any = None, raw: bool = False
    ) -> pd.DataFrame:
        """Model-unit predictions at model ``times`` -> long DataFrame in original units/timestamps.

        Pass ``query`` (what you gave :meth:`query_times`, with the same ``raw``) to write those exact
        timestamps instead of ones recovered from float32 model times."""
        if query is not None:
            times = self.transform.raw_to_model_time(self._raw_query(query, raw), self.origins[:, None])
        return self.transform.to_frame(self.series_ids, self.origins, times, values, bands)

"""The query-time grammar of a forecast: which times each series is forecast at, checked before the model runs.

* ``horizon`` (how far past each series' last observation: a number of time units or a duration such as
  "30D") with ``freq`` (a regular step) or ``num_points`` (evenly spaced, default 50);
* ``times``: an explicit list shared by every series, or a DataFrame ``unique_id, ds`` of per-series times.

Times come back twice per series: raw floats for the model, and the same instants exactly as they leave the
package (int64 ns for datetimes, the values as given for numbers) for the output's ``ds``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.errors import ForecastError

MAX_QUERY_POINTS = 100_000  # query times per series and call
MAX_MODEL_TIME = 1e6  # |model time| a query may reach: 1e5 training spans (auto time_scale makes them <= 10)


def count(value: Any, what: str) -> int:
    """A positive whole number option (num_samples, num_points, batch_size) or a ForecastError."""
    try:
        n = int(value)
        ok = not isinstance(value, bool) and float(value) == n and n >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ForecastError(f"{what}={value!r} must be a whole number >= 1")
    return n


def query_times(
    codec, table, index: list[int], horizon, times, freq, num_points
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Query times per requested series, sorted: raw floats (for the model), and the same times exactly as
    they leave the package (for the output ``ds``): for datetime data int64 ns since the epoch (the instants
    asked for, not ones recovered from floats a few ns off); for numbers the values passed (their own dtype),
    or ``last + k * step`` computed in float64 for a horizon.

    One function for the whole grammar (``times`` list / DataFrame, ``horizon`` with ``freq`` or ``num_points``,
    datetimes or numbers): each branch is short and they share the exact-time helpers defined at its top."""
    exact = codec.is_datetime
    unit_ns = codec.unit_ns if exact else 0

    def from_ns(ns_rows: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [codec.ns_to_float(ns) for ns in ns_rows], ns_rows

    def to_ns(values) -> np.ndarray:
        return np.sort(codec.datetimes_to_ns(values))

    def numbers(values) -> tuple[np.ndarray, np.ndarray]:
        """(sorted raw floats, the same values as given, in that order)."""
        given = np.asarray(values.to_numpy() if isinstance(values, (pd.Series, pd.Index)) else values)
        given = given.reshape(-1)
        raw = np.asarray(codec.to_float(given), dtype=np.float64).reshape(-1)  # DataError if not numbers
        order = np.argsort(raw, kind="stable")
        keep_given = given.dtype.kind in "iuf"  # numbers come back as given; anything else as parsed floats
        return raw[order], (given[order] if keep_given else raw[order])

    if times is not None:
        if horizon is not None or freq is not None:
            raise ForecastError("pass either times=... or horizon=... (with freq/num_points), not both")
        if isinstance(times, pd.DataFrame):
            if not {"unique_id", "ds"} <= set(times.columns):
                raise ForecastError("a times DataFrame needs 'unique_id' and 'ds' columns (one row per query)")
            raw_rows, exact_rows = [], []
            ids = list(table.ids)
            groups = {str(k): g for k, g in times.groupby(times["unique_id"].astype(str), sort=False)}
            for i in index:
                g = groups.get(str(ids[i]))
                if g is None:
                    raise ForecastError(
                        f"series {ids[i]!r} has no query times in the times DataFrame; add rows "
                        "for it or pass series=[...] to forecast fewer series"
                    )
                if exact:
                    exact_rows.append(to_ns(g["ds"]))
                else:
                    raw, given = numbers(g["ds"])
                    raw_rows.append(raw)
                    exact_rows.append(given)
            return from_ns(exact_rows) if exact else (raw_rows, exact_rows)
        arr = times if isinstance(times, (pd.Series, pd.Index, np.ndarray, list, tuple)) else [times]
        if len(arr) == 0:
            raise ForecastError("times=[] is empty; pass at least one query time")
        if len(arr) > MAX_QUERY_POINTS:
            raise ForecastError(f"times has {len(arr)} values; pass at most {MAX_QUERY_POINTS} per call")
        if exact:
            ns = to_ns(arr)
            return from_ns([ns for _ in index])
        raw, given = numbers(arr)
        return [raw for _ in index], [given for _ in index]
    if horizon is None:
        raise ForecastError("no query times: pass horizon=... (how far past the last observation) or times=[...]")
    h = codec.duration(horizon, "horizon", ForecastError)
    if not h > 0:
        raise ForecastError(
            f"horizon={horizon!r} must be positive: it is how far past each series' last "
            "observation to forecast; for times inside the history pass times=[...] instead"
        )
    last = table.last_times()[index]
    if exact and not h * unit_ns < 9.2e18:  # int64 ns spans 292 years
        raise ForecastError(
            f"horizon={horizon!r} reaches past the last representable timestamp (2262-04-11); pass a shorter horizon"
        )
    if freq is not None:
        if num_points is not None:
            raise ForecastError("pass either freq=... or num_points=..., not both")
        step = codec.duration(freq, "freq", ForecastError)
        if not step > 0:
            raise ForecastError(f"freq={freq!r} must be positive")
        ratio = h / step
        if not ratio < MAX_QUERY_POINTS + 1:  # inf or NaN too
            raise ForecastError(
                f"horizon/freq gives {ratio:.3g} query times per series; use a coarser freq "
                f"(at most {MAX_QUERY_POINTS})"
            )
        n = math.floor(ratio + 1e-9)
        if n < 1:
            raise ForecastError(f"freq={freq!r} is longer than horizon={horizon!r}; no query time fits")
        offs = step * np.arange(1, n + 1)
        if exact:
            if round(step * unit_ns) < 1:
                raise ForecastError(f"freq={freq!r} is shorter than a nanosecond; pass a longer freq")
            offs_ns = np.int64(round(step * unit_ns)) * np.arange(1, n + 1, dtype=np.int64)
    else:
        n = 50 if num_points is None else count(num_points, "num_points")
        if n > MAX_QUERY_POINTS:
            raise ForecastError(f"num_points={n} is too many; pass at most {MAX_QUERY_POINTS}")
        offs = np.linspace(0.0, h, n + 1)[1:]
        if exact:
            offs_ns = np.rint(np.linspace(0.0, round(h * unit_ns), n + 1)[1:]).astype(np.int64)
    if exact:
        if table.time_ns is not None:  # the last observations exactly as read
            last_ns = table.time_ns[table.offsets[1:][index] - 1].astype(np.int64)
        else:
            last_ns = codec.float_to_ns(last)
        span = float(np.max(np.abs(last_ns.astype(np.float64)))) + float(offs_ns[-1])
        if not span < 9.2e18:  # int64 ns ends in the year 2262
            raise ForecastError(
                f"horizon={horizon!r} reaches past the last representable timestamp "
                "(2262-04-11); pass a shorter horizon"
            )
        return from_ns([lt + offs_ns for lt in last_ns])
    rows = [lt + offs for lt in last]
    return rows, rows


def check_reachable(
    transform,
    table,
    origins: np.ndarray,
    index: list[int],
    raw_q: list[np.ndarray],
    exact_q: list[np.ndarray],
    context: Any,
) -> None:
    """ForecastError for a query time that is not finite, lies before the (context window of the) history, or
    is further from the series' start (``origins``: every series' raw origin) than the model can reach."""
    ids = list(table.ids)
    firsts = table.first_times()[index]
    first_rows = table.offsets[:-1][index]
    for row, i in enumerate(index):
        q = raw_q[row]
        if not np.isfinite(q).all():
            raise ForecastError(
                f"series {ids[i]!r}: query time {exact_q[row][~np.isfinite(q)][0]} is not a "
                "finite time; pass finite numbers or valid datetimes"
            )
        if q.size and q.min() < firsts[row] - 1e-9 * max(1.0, abs(firsts[row])):
            k = int(np.argmin(q))
            asked = (
                transform.codec.from_ns(exact_q[row][k : k + 1])[0] if transform.codec.is_datetime else exact_q[row][k]
            )
            where = "its first observation" if context is None else f"the start of its context={context!r} window"
            raise ForecastError(
                f"series {ids[i]!r}: query time {asked} is before {where} "
                f"{table.user_times(first_rows[row : row + 1])[0]}; the model forecasts forward from the history: "
                "pass times at or after the history's start"
            )
        model_t = transform.raw_to_model_time(q, origins[i])
        if q.size and not np.abs(model_t).max() <= MAX_MODEL_TIME:
            raise ForecastError(
                f"series {ids[i]!r}: query time {exact_q[row][int(np.argmax(np.abs(model_t)))]} is "
                f"{float(np.abs(model_t).max()):.3g} model time units from the series' start (the training "
                f"series spanned at most ~10); the model cannot reach it: pass nearer times"
            )

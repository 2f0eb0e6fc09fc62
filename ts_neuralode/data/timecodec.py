"""Raw time axis <-> float: the one place where datetimes become numbers and back.

A :class:`TimeCodec` turns the user's time column into *raw float time*:

* numeric time columns are used as they are (``time_unit`` is ignored for them);
* datetime columns become ``(timestamp - ref) / time_unit`` where ``ref`` is the earliest timestamp of
  the data the codec was built from (so raw float times are small and exact in float64) and
  ``time_unit`` is a pandas unit string ("s", "min", "h", "D", "W", ...; default "h").

The timezone of the input is remembered (an IANA name, "UTC", or a fixed offset) and restored by
:meth:`TimeCodec.from_float`. Model time (normalised) is built on top of raw float time by
:class:`ts_neuralode.data.transform.SeriesTransform`.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ts_neuralode.errors import ConfigError, DataError

DEFAULT_TIME_UNIT = "h"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unit_to_ns(unit: str) -> int:
    """Nanoseconds in one ``unit`` (a pandas Timedelta unit such as "s", "min", "h", "D")."""
    try:
        ns = int(pd.Timedelta(1, unit=unit).value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"time_unit={unit!r} is not a pandas time unit; use one of 's', 'min', 'h', 'D', 'W'"
        ) from exc
    if ns <= 0:
        raise ConfigError(f"time_unit={unit!r} must be a positive duration; use 's', 'min', 'h' or 'D'")
    return ns


def tz_to_str(tz: Any) -> str | None:
    """Serialise a tzinfo: IANA key, 'UTC', or 'fixed:<seconds>' for fixed offsets; None if naive."""
    if tz is None:
        return None
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if key:
        return str(key)
    if str(tz) == "UTC":
        return "UTC"
    off = tz.utcoffset(None)
    if off is not None:
        return f"fixed:{int(off.total_seconds())}"
    return str(tz)


def tz_from_str(s: str | None) -> Any:
    if s is None:
        return None
    if s.startswith("fixed:"):
        return _dt.timezone(_dt.timedelta(seconds=int(s[6:])))
    return s


@dataclass
class TimeCodec:
    """Converts between the user's time axis and raw float time (see module docstring).

    Attributes:
        kind: "numeric" or "datetime".
        unit: pandas unit string of one raw time step (datetimes only).
        tz: serialised timezone (datetimes only; None = naive).
        ref_ns: the timestamp (ns since the epoch, UTC for aware data) that maps to raw float 0.
    """

    kind: str = "numeric"
    unit: str | None = None
    tz: str | None = None
    ref_ns: int = 0

    @property
    def unit_ns(self) -> int:
        """Nanoseconds in one raw time unit of datetime data (``unit``, default hours)."""
        return unit_to_ns(self.unit or DEFAULT_TIME_UNIT)

    def ns_to_float(self, ns: np.ndarray) -> np.ndarray:
        """int64 ns since the epoch -> raw float time (units since ``ref``)."""
        return (np.asarray(ns) - self.ref_ns).astype(np.float64) / self.unit_ns

    def float_to_ns(self, t: np.ndarray) -> np.ndarray:
        """Raw float time -> int64 ns since the epoch (rounded to the nearest ns), flattened."""
        return np.rint(np.asarray(t, dtype=np.float64).reshape(-1) * self.unit_ns).astype(np.int64) + self.ref_ns

    @property
    def is_datetime(self) -> bool:
        return self.kind == "datetime"

    def state_dict(self) -> dict:
        return {"kind": self.kind, "unit": self.unit, "tz": self.tz, "ref_ns": int(self.ref_ns)}

    @classmethod
    def from_state_dict(cls, d: dict) -> TimeCodec:
        return cls(kind=d["kind"], unit=d.get("unit"), tz=d.get("tz"), ref_ns=int(d.get("ref_ns", 0)))

    # ---------------------------------------------------------------------------------------------
    def datetimes_to_ns(self, values: Any) -> np.ndarray:
        """Datetimes (strings, Timestamps, DatetimeIndex, Series) -> int64 ns since epoch (UTC if aware).

        Raises DataError when naive and aware datetimes are mixed with the codec's own kind, and for anything that
        is not a datetime in the range of int64 ns (1677-09-22 .. 2262-04-11)."""
        try:
            return self._datetimes_to_ns(values)
        except DataError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # pandas' OutOfBoundsDatetime is a ValueError
            raise DataError(
                f"could not read query times as datetimes ({_first_line(exc)}); pass ISO 8601 timestamps "
                "between 1677-09-22 and 2262-04-11"
            ) from exc

    def _datetimes_to_ns(self, values: Any) -> np.ndarray:
        if isinstance(values, (pd.Series, pd.Index)):
            s = pd.Series(values)
        elif isinstance(values, (pd.Timestamp, _dt.datetime, str, np.datetime64)):
            s = pd.Series([values])
        else:
            s = pd.Series(list(np.asarray(values, dtype=object).reshape(-1)))
        if not (s.dtype.kind == "M" or isinstance(s.dtype, pd.DatetimeTZDtype)):
            fmt = "ISO8601" if len(s) and isinstance(s.iloc[0], str) else None
            try:
                s = pd.to_datetime(s, format=fmt)
            except (ValueError, TypeError) as exc:
                s = self._parse_mixed_offsets(s, fmt, exc)
        idx = pd.DatetimeIndex(s)
        if idx.isna().any():
            raise DataError("query times include a missing value (NaT/None/empty); pass valid datetimes")
        aware = idx.tz is not None
        if aware != (self.tz is not None):
            want = "timezone-aware" if self.tz is not None else "naive"
            raise DataError(
                f"query times are {'timezone-aware' if aware else 'naive'} but the data's times are {want}; "
                f"pass {want} datetimes"
            )
        if aware:
            idx = idx.tz_convert("UTC").tz_localize(None)
        return idx.as_unit("ns").asi8

    @staticmethod
    def _parse_mixed_offsets(s: pd.Series, fmt: str | None, exc: Exception) -> pd.Series:
        """Aware times in several zones/offsets (e.g. +01:00 and +02:00 across a DST change, or UTC mixed with
        local times) name instants unambiguously: compare them in UTC. Naive mixed with aware stays an error."""
        try:
            stamps = [pd.Timestamp(v) for v in s]
        except (ValueError, TypeError):
            raise DataError(
                f"could not parse query times as datetimes ({_first_line(exc)}); pass ISO 8601 timestamps"
            ) from exc
        aware = [t.tzinfo is not None for t in stamps]
        if not all(aware):
            if any(aware):
                i = aware.index(not aware[0])
                raise DataError(
                    f"query times mix timezone-aware and naive datetimes ({s.iloc[0]!r}, {s.iloc[i]!r}); "
                    "give every time an offset or none"
                ) from exc
            raise DataError(
                f"could not parse query times as datetimes ({_first_line(exc)}); pass ISO 8601 timestamps"
            ) from exc
        return pd.Series([t.tz_convert("UTC") for t in stamps], dtype="datetime64[ns, UTC]")

    def to_float(self, values: Any) -> np.ndarray:
        """Times in the user's form (numbers, or datetimes for a datetime codec) -> raw float64 times."""
        if not self.is_datetime:
            arr = np.asarray(values)
            if (
                arr.dtype.kind in "Mm"
                or arr.dtype == object
                and arr.size
                and isinstance(arr.flat[0], (pd.Timestamp, _dt.datetime, str))
            ):
                raise DataError("the data's time axis is numeric but datetimes were given; pass numbers")
            try:
                return np.asarray(arr, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"times {arr.reshape(-1)[:3].tolist()} are not numbers ({_first_line(exc)}); the "
                    f"data's "
                    "time axis is numeric: pass numbers"
                ) from exc
        ns = self.datetimes_to_ns(values)
        return self.ns_to_float(ns)

    def duration(self, value: Any, what: str, error: type[Exception] = ConfigError) -> float:
        """A duration -> raw float time units: a number (or numeric string) is already in raw units (for datetime
        data: ``unit``, default hours); a pandas duration string or Timedelta ("30D", "12h") needs datetime
        data. Raises ``error`` with one line naming the option ``what``. The sign is not checked."""
        if isinstance(value, (bool, np.bool_)):
            raise error(f"{what}={value!r} is not a duration; use e.g. '30D', '12h' or a number")
        number = as_number(value)
        if number is not None:
            if not np.isfinite(number):
                raise error(f"{what}={value!r} is not a finite number; pass e.g. 12 or a duration such as '12h'")
            return number
        if not self.is_datetime:
            raise error(f"{what}={value!r}: the data's time axis is numeric, so pass a number of time units")
        return as_timedelta(value, what, error).value / self.unit_ns

    def from_float(self, t: Any) -> np.ndarray | pd.DatetimeIndex:
        """Raw float times -> numbers (numeric codec) or a DatetimeIndex with the original timezone.

        For datetimes this is exact to the nanosecond only within about a month of ``ref`` (a float64 holds
        ~15.9 significant digits); times that were read or asked for go out through :meth:`from_ns` instead."""
        t = np.asarray(t, dtype=np.float64)
        if not self.is_datetime:
            return t
        return self.from_ns(self.float_to_ns(t))

    def from_ns(self, ns: Any) -> pd.DatetimeIndex:
        """int64 ns since the epoch (UTC when aware) -> a DatetimeIndex with the original timezone, exactly."""
        idx = pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).reshape(-1).view("datetime64[ns]"))
        if self.tz is not None:
            idx = idx.tz_localize("UTC").tz_convert(tz_from_str(self.tz))
        return idx


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number or a numeric string (a duration in raw time units), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def as_timedelta(value: Any, what: str, error: type[Exception] = ConfigError) -> pd.Timedelta:
    """A pandas duration (``"30D"``, ``"12h"``, a Timedelta); ``error`` naming the option ``what`` otherwise."""
    try:
        td = pd.Timedelta(value)
    except (ValueError, TypeError, OverflowError) as err:
        raise error(f"{what}={value!r} is not a duration; use e.g. '30D', '12h' or a number") from err
    if td is pd.NaT:
        raise error(f"{what}={value!r} is not a duration; use e.g. '30D', '12h' or a number")
    return td


# -- reading a time column (the data boundary: ts_neuralode.data.io) ----------------------------------------
#: a timestamp that ends in an offset or zone name (timezone-aware)
TZ_SUFFIX = r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?|UTC|GMT)$"


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def parse_time_column(
    col: pd.Series, name: str, where, time_unit: str | None, codec: TimeCodec | None
) -> tuple[np.ndarray, TimeCodec, np.ndarray | None]:
    """Time column -> (raw float64 times, codec, int64 ns of datetimes or None). Numbers stay numbers; anything
    else is parsed as datetimes (ISO 8601 first, then pandas' other formats cell by cell). ``where.at(name, row)``
    names the place in a message (``ts_neuralode.data.io`` passes its file/line formatter)."""
    missing = col.isna().to_numpy()
    if missing.any():
        i = _first_true(missing)
        raise DataError(f"{where.at(name, i)}: timestamp is missing; fill it in or delete the row")
    is_dt = col.dtype.kind == "M" or isinstance(col.dtype, pd.DatetimeTZDtype)
    if not is_dt and col.dtype.kind in "biuf":
        t = col.to_numpy(dtype=np.float64)
        if codec is not None and codec.is_datetime:
            raise DataError(
                f"{where.at(name)}: times are numbers but the model was trained on datetimes; pass datetimes"
            )
        inf = np.isinf(t)
        if inf.any():
            i = _first_true(inf)
            raise DataError(f"{where.at(name, i)}: time {t[i]} is infinite; use finite times")
        return t, codec or TimeCodec("numeric"), None
    if not is_dt:
        head = pd.to_numeric(col.iloc[:100], errors="coerce")  # cheap probe: datetimes fail at once
        if head.notna().all():
            num = pd.to_numeric(col, errors="coerce")
            if num.notna().all():
                return parse_time_column(num, name, where, time_unit, codec)
        text = col.astype(str).str.strip()
        try:
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
        except ValueError:  # naive mixed with aware, or several UTC offsets (e.g. across a DST change)
            aware = text.str.contains(TZ_SUFFIX, case=False, regex=True).to_numpy()
            if aware.any() and not aware.all():
                i = _first_true(aware != aware[0])
                raise DataError(
                    f"{where.at(name, i)}: timestamp {text.iloc[i]!r} is {'timezone-aware' if aware[i] else 'naive'} "
                    f"but {text.iloc[0]!r} ({where.row(0)}) is {'timezone-aware' if aware[0] else 'naive'}; "
                    "give every timestamp an offset or none"
                ) from None
            parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)  # keep them as UTC
        bad = parsed.isna().to_numpy()
        if bad.any():  # not ISO 8601: let pandas/dateutil try the failing cells one format at a time
            retry = pd.to_datetime(text[bad], format="mixed", errors="coerce", utc=parsed.dt.tz is not None)
            if retry.notna().all():
                if parsed.dt.tz is not None and retry.dt.tz is not None:
                    retry = retry.dt.tz_convert(parsed.dt.tz)
                parsed = parsed.copy()
                parsed[bad] = retry
                bad = parsed.isna().to_numpy()
        if bad.any():
            i = _first_true(bad)
            raise DataError(
                f"{where.at(name, i)}: cannot parse timestamp {text.iloc[i]!r}; use ISO 8601 such as 2024-01-31 12:00"
            )
        col = parsed
    tz = col.dt.tz
    if tz is not None:
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    lo, hi = pd.Timestamp.min.as_unit("ns"), pd.Timestamp.max.as_unit("ns")
    outside = ((col < lo) | (col > hi)).to_numpy()
    if outside.any():  # pandas parses years 0001..9999, but a time is int64 ns (1677-09-22 .. 2262-04-11)
        i = _first_true(outside)
        raise DataError(
            f"{where.at(name, i)}: timestamp {col.iloc[i]} is outside the range a time can have "
            f"({lo.date()} .. {hi.date()}); fix it"
        )
    ns = col.dt.as_unit("ns").to_numpy().view(np.int64)
    if codec is None:
        unit = time_unit or DEFAULT_TIME_UNIT
        unit_to_ns(unit)
        codec = TimeCodec("datetime", unit=unit, tz=tz_to_str(tz), ref_ns=int(ns.min()))
    else:
        if not codec.is_datetime:
            raise DataError(f"{where.at(name)}: times are datetimes but the model was trained on numbers; pass numbers")
        if (tz is None) != (codec.tz is None):
            raise DataError(
                f"{where.at(name)}: timestamps are {'naive' if tz is None else 'timezone-aware'} but the model was "
                f"trained on {'naive' if codec.tz is None else 'timezone-aware'} ones; convert them"
            )
    return codec.ns_to_float(ns), codec, ns

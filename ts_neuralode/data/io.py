"""Reading and validating irregular time series from CSV files or pandas DataFrames.

Formats (every column name can be overridden):

* **long** (default): one row per observation time of one series: ``unique_id, ds, y`` (the Nixtla
  convention). Several channels = several value columns (``value_cols``). With no id column (or
  ``id_col=None``) the whole file is one series. Default ``value_cols``: ``["y"]`` if there is a ``y``
  column, else every numeric column other than id/time/mask.
* **wide**: a time column plus one column per channel (optionally an id column); default ``value_cols``:
  every numeric column other than id/time/mask.

Missing values: empty/NaN cells, or explicit 0/1 mask columns (``mask_cols``, aligned with
``value_cols`` or a ``{value_col: mask_col}`` dict); a value under mask 0 is ignored whatever it holds.
Other columns (static or categorical covariates) are ignored. Rows may come in any order.

Every user error raises :class:`ts_neuralode.errors.DataError` with one line naming the file, the
column and the first offending row (``line N`` counts the CSV header as line 1; for DataFrames ``row N``
is the 0-based position).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ts_neuralode.data.input_checks import _integral_ids, _refuse_masks_and_ids_as_targets, _warn_extreme_values
from ts_neuralode.data.series_table import SeriesTable, _Where
from ts_neuralode.data.timecodec import TimeCodec, _first_true, parse_time_column
from ts_neuralode.errors import ConfigError, DataError

# Every number read is the float64 nearest to its text (what Python's float() gives), so times and values leave
# the package exactly as they were written: pandas >= 3 parses so by default (and deprecates the option);
# pandas 2's default parser can be one unit in the last place off.
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


#: file name endings read and written as Parquet (everything else is CSV)
PARQUET_SUFFIXES = (".parquet", ".pq")
#: the options of :func:`read_series` that say how to read a history file: the data module's reading options, which a
#: saved model keeps (so that a forecast reads new history as the fit read its data)
READ_KEYS = ("format", "id_col", "time_col", "value_cols", "mask_cols", "time_unit", "duplicates")


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Parquet file (by its extension: .parquet or .pq)."""
    return os.fspath(path).lower().endswith(PARQUET_SUFFIXES)


def frame_bytes(frame: pd.DataFrame, path: str | os.PathLike, **csv_options) -> bytes:
    """``frame`` as the bytes of a file named ``path``: Parquet for .parquet / .pq, else CSV (``csv_options``)."""
    if is_parquet(path):
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    return frame.to_csv(index=False, **csv_options).encode("utf-8")


def _read_parquet(p: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except ImportError as exc:
        raise DataError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow); or pass a CSV file") from exc
    except Exception as exc:  # pyarrow's ArrowInvalid / OSError: not a Parquet file
        msg = " ".join(str(exc).strip().splitlines()[-1].split()) if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: not a readable Parquet file ({msg[:200]}); check the file or pass a CSV") from exc


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (or a Parquet file: .parquet / .pq) into a DataFrame, raising DataError for a missing, unreadable
    or empty file."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise DataError(f"{p}: file not found; check the path")
    if os.path.isdir(p):
        raise DataError(f"{p}: is a directory, not a CSV file; pass the path of a .csv file")
    if is_parquet(p):
        df = _read_parquet(p)
        if len(df) == 0:
            raise DataError(f"{p}: file has no data rows; add observations")
        return df
    try:
        df = pd.read_csv(p, skipinitialspace=True, **_EXACT_FLOATS)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{p}: file is empty; it needs a header line and at least 2 rows per series") from exc
    except (pd.errors.ParserError, UnicodeError, ValueError, OverflowError) as exc:
        msg = " ".join(str(exc).strip().splitlines()[-1].split()) if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: not a readable CSV file ({msg[:200]}); save it as comma-separated UTF-8 text") from exc
    except OSError as exc:
        raise DataError(f"{p}: cannot read it ({exc.strerror or type(exc).__name__}); check its permissions") from exc
    if len(df) == 0:
        raise DataError(f"{p}: file has a header but no data rows; add observations")
    if len(df.columns) == 1:
        sep = next((c for c in (";", "\t", "|") if c in str(df.columns[0])), None)
        if sep is not None:
            raise DataError(
                f"{p}: one column {str(df.columns[0])[:80]!r}: the file seems to be separated by "
                f"{sep!r}; save it comma-separated"
            )
    return df


def _factorize_ids(idcol: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Series ids -> (codes, sorted unique ids). Ids of several types that do not compare (e.g. 3 and "a" in
    a DataFrame) are sorted by type name, then value."""
    try:
        codes, uniques = pd.factorize(idcol, sort=True)
        return codes, np.asarray(uniques)
    except TypeError:
        codes, uniques = pd.factorize(idcol, sort=False)
        order = sorted(range(len(uniques)), key=lambda i: (type(uniques[i]).__name__, str(uniques[i])))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return rank[codes], np.asarray(list(uniques), dtype=object)[order]


def _to_numeric(col: pd.Series, name: str, where: _Where) -> np.ndarray:
    """Column -> float64 array; DataError on the first non-numeric cell and on inf."""
    if col.dtype.kind in "biuf":
        arr = col.to_numpy(dtype=np.float64, na_value=np.nan)
    elif col.dtype.kind == "M" or isinstance(col.dtype, pd.DatetimeTZDtype):
        raise DataError(f"{where.at(name)}: holds datetimes, not numbers; list it as the time column or drop it")
    else:
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna().to_numpy() & col.notna().to_numpy()
        if bad.any():
            text = col.astype(str)
            bad &= text.str.strip().to_numpy() != ""
        if bad.any():
            i = _first_true(bad)
            raise DataError(
                f"{where.at(name, i)}: value {str(col.iloc[i])!r} is not a number; fix it or leave the cell empty"
            )
        arr = num.to_numpy(dtype=np.float64, na_value=np.nan)
    inf = np.isinf(arr)
    if inf.any():
        i = _first_true(inf)
        raise DataError(
            f"{where.at(name, i)}: value {arr[i]} is infinite; replace it with a finite number or leave it empty"
        )
    return arr


def _sort_order(codes: np.ndarray, times: np.ndarray, n_ids: int) -> np.ndarray:
    """Row order sorting by (series code, time). Already-sorted input costs one pass; otherwise an argsort
    of the times then a stable (radix, for < 65,536 series) argsort of the codes — ~2-3x faster than
    np.lexsort on a million rows."""
    dc, dt = np.diff(codes), np.diff(times)
    if ((dc > 0) | ((dc == 0) & (dt >= 0))).all():
        return np.arange(len(codes))
    by_time = np.argsort(times)
    c = codes[by_time].astype(np.uint16 if n_ids <= np.iinfo(np.uint16).max else np.int64)
    return by_time[np.argsort(c, kind="stable")]


def _resolve_masks(mask_cols: Sequence[str] | Mapping[str, str] | None, value_cols: list[str]) -> dict[str, str]:
    if mask_cols is None:
        return {}
    if isinstance(mask_cols, str):
        mask_cols = [mask_cols]
    if isinstance(mask_cols, Mapping):
        unknown = [k for k in mask_cols if k not in value_cols]
        if unknown:
            raise ConfigError(f"mask_cols names value columns {unknown} that are not in value_cols {value_cols}")
        return dict(mask_cols)
    mask_cols = list(mask_cols)
    if len(mask_cols) != len(value_cols):
        raise ConfigError(
            f"mask_cols has {len(mask_cols)} names but value_cols has {len(value_cols)}; give one mask per value "
            "column or a {value_col: mask_col} dict"
        )
    return dict(zip(value_cols, mask_cols, strict=True))


def read_series(
    source: str | os.PathLike | pd.DataFrame,
    *,
    format: str = "long",
    id_col: str | None = "unique_id",
    time_col: str = "ds",
    value_cols: Sequence[str] | str | None = None,
    mask_cols: Sequence[str] | Mapping[str, str] | None = None,
    time_unit: str | None = None,
    duplicates: str = "error",
    min_points: int = 2,
    codec: TimeCodec | None = None,
    exclude_cols: Sequence[str] = (),
    past_cols: Sequence[str] = (),
    name: str | None = None,
) -> SeriesTable:
    """Read and validate series from a CSV path or a DataFrame (see the module docstring).

    Args:
        codec: reuse an existing time codec (the forecaster passes the training one so that new data maps
            onto the same raw time axis); by default one is built from the data.
        duplicates: "error" (default) or "mean" (average observed values of rows sharing (id, time)).
        min_points: series with fewer observation times are dropped with a warning.
        exclude_cols: columns that are never value columns (covariates): left out of the default ``value_cols``.
        past_cols: past-only covariates, read as extra channels after the value columns (never forecast or scored:
            the data module and the models know them by :class:`~ts_neuralode.data.covariates.CovariateSpec`).
        name: how messages name a DataFrame source (default ``<DataFrame>``; a shard of a Parquet folder names its
            files).

    Long on purpose: it is the data boundary's one validation pass, its checks in the order a user meets the
    problems (format, columns, values, masks, times, duplicates, short series), each raising with its location.
    """
    if format not in ("long", "wide"):
        raise ConfigError(f"format={format!r} is not supported; use 'long' or 'wide'")
    if duplicates not in ("error", "mean"):
        raise ConfigError(f"duplicates={duplicates!r} is not supported; use 'error' or 'mean'")
    source = as_frame(source)
    if isinstance(source, pd.DataFrame):
        df, where = source, _Where(name or "<DataFrame>", False)
        if len(df) == 0:
            raise DataError(f"{where.source}: has no rows; pass at least 2 observations per series")
    else:
        df, where = read_frame(source), _Where(os.fspath(source), True)
    df = df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c)
    columns = [str(c) for c in df.columns]
    seen: set[str] = set()
    dup = next((c for c in columns if c in seen or seen.add(c)), None)  # type: ignore[func-returns-value]
    if dup is not None:
        raise DataError(
            f"{where.source}: column name {dup!r} appears twice (columns: {', '.join(columns)}); rename one of them"
        )
    df = df.set_axis(columns, axis=1)

    def need(col: str, what: str) -> None:
        if col not in columns:
            raise DataError(
                f"{where.source}: missing {what} column '{col}' (columns: {', '.join(columns)}); "
                f"rename it or pass {what}_col=..."
            )

    need(time_col, "time")
    has_id = id_col is not None and id_col in columns
    if id_col is not None and not has_id and id_col != "unique_id":
        need(id_col, "id")
    if isinstance(value_cols, str):
        value_cols = [value_cols]
    masks_given = mask_cols if not isinstance(mask_cols, str) else [mask_cols]
    mask_names = set(masks_given.values() if isinstance(masks_given, Mapping) else (masks_given or []))
    if value_cols is None:
        reserved = {time_col, id_col} | mask_names | set(exclude_cols) | set(past_cols)
        if format == "long" and "y" in columns:
            value_cols = ["y"]
        else:
            value_cols = [c for c in columns if c not in reserved and df[c].dtype.kind in "biuf"]
        if not value_cols:
            raise DataError(
                f"{where.source}: no numeric value column found (columns: {', '.join(columns)}); pass value_cols=[...]"
            )
        _refuse_masks_and_ids_as_targets(df, value_cols, where)
    value_cols = list(value_cols)
    both = [c for c in value_cols if c in set(exclude_cols) | set(past_cols)]
    if both:
        raise ConfigError(f"column {both[0]!r} is both a value column and a covariate; list it in one of them")
    for cols, what, fix in (
        (value_cols, "value", "rename it or pass value_cols=[...]"),
        (past_cols, "past covariate", "add it or drop it from past_cols"),
    ):
        for c in cols:
            if c not in columns:
                raise DataError(f"{where.source}: missing {what} column '{c}' (columns: {', '.join(columns)}); {fix}")
    masks = _resolve_masks(mask_cols, value_cols)
    value_cols = value_cols + list(past_cols)
    for c in masks.values():
        if c not in columns:
            raise DataError(f"{where.source}: missing mask column '{c}' (columns: {', '.join(columns)}); fix mask_cols")

    n = len(df)
    times, codec, time_ns = parse_time_column(df[time_col], time_col, where, time_unit, codec)
    values = np.empty((n, len(value_cols)), dtype=np.float64)
    obs = np.empty((n, len(value_cols)), dtype=bool)
    for d, c in enumerate(value_cols):
        v = _to_numeric(df[c], c, where)
        o = ~np.isnan(v)
        if c in masks:
            mc = masks[c]
            m = _to_numeric(df[mc], mc, where)
            bad = ~((m == 0) | (m == 1))
            if bad.any():
                i = _first_true(bad)
                raise DataError(
                    f"{where.at(mc, i)}: mask value {df[mc].iloc[i]!r} is not 0 or 1; use 1 = observed, 0 = missing"
                )
            on = m == 1
            bad = on & ~o
            if bad.any():
                i = _first_true(bad)
                raise DataError(
                    f"{where.at(c, i)}: value is empty but its mask '{mc}' is 1; set the mask to 0 or fill in the value"
                )
            o = on
            v = np.where(on, v, np.nan)
        values[:, d], obs[:, d] = v, o

    if has_id:
        idcol = df[id_col]
        miss = idcol.isna().to_numpy()
        if miss.any():
            i = _first_true(miss)
            raise DataError(f"{where.at(id_col, i)}: series id is missing; fill it in or delete the row")
        codes, ids = _factorize_ids(_integral_ids(idcol))
    else:
        codes, ids = np.zeros(n, dtype=np.int64), np.asarray(["series_0"], dtype=object)

    order = _sort_order(codes, times, len(ids))
    codes_s, t_s, rows_s = codes[order], times[order], order
    values, obs = values[order], obs[order]
    ns_s = None if time_ns is None else time_ns[order]
    same = (codes_s[1:] == codes_s[:-1]) & (t_s[1:] == t_s[:-1])
    if same.any():
        if duplicates == "error":
            pair_a, pair_b = order[:-1][same], order[1:][same]
            later = np.maximum(pair_a, pair_b)
            j = int(np.argmin(later))
            i, first_row = int(later[j]), int(np.minimum(pair_a, pair_b)[j])
            raise DataError(
                f"{where.at(time_col, i)}: duplicate (id, time) — same series and time as {where.row(first_row)}; "
                "remove one or pass duplicates='mean'"
            )
        start = np.concatenate([[True], ~same])
        grp_starts = np.flatnonzero(start)
        vs = np.add.reduceat(np.where(obs, values, 0.0), grp_starts, axis=0)
        cnt = np.add.reduceat(obs.astype(np.int64), grp_starts, axis=0)
        obs = cnt > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(obs, vs / np.maximum(cnt, 1), np.nan)
        codes_s, t_s, rows_s = codes_s[grp_starts], t_s[grp_starts], rows_s[grp_starts]
        ns_s = None if ns_s is None else ns_s[grp_starts]

    keep = obs.any(axis=1)
    if not keep.all():
        codes_s, t_s, values, obs, rows_s = codes_s[keep], t_s[keep], values[keep], obs[keep], rows_s[keep]
        ns_s = None if ns_s is None else ns_s[keep]
    if len(t_s) == 0:
        raise DataError(
            f"{where.source}: no observed values at all (every value is empty or masked); check "
            "value_cols and mask_cols"
        )
    counts = np.bincount(codes_s, minlength=len(ids))
    short = counts < min_points
    if short.any():
        n_short = int(short.sum())
        if short.all():
            raise DataError(
                f"{where.source}: every series has fewer than {min_points} observation times; "
                f"need at least {min_points} per series"
            )
        warnings.warn(
            f"{where.source}: dropped {n_short} series with fewer than {min_points} observation times "
            f"(e.g. id {ids[short][0]!r})",
            stacklevel=2,
        )
        keep_rows = ~short[codes_s]
        codes_s, t_s, values, obs = codes_s[keep_rows], t_s[keep_rows], values[keep_rows], obs[keep_rows]
        rows_s, ns_s = rows_s[keep_rows], None if ns_s is None else ns_s[keep_rows]
        remap = np.cumsum(~short) - 1
        codes_s = remap[codes_s]
        ids, counts = ids[~short], counts[~short]
    never = ~obs.any(axis=0)
    if never.any():
        c = value_cols[int(np.flatnonzero(never)[0])]
        raise DataError(
            f"{where.at(c)}: channel is never observed (all values empty or masked); drop it from value_cols"
        )
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    _warn_extreme_values(values, obs, codes_s, rows_s, value_cols, where)
    used = {time_col, *([id_col] if has_id else []), *value_cols, *masks.values(), *exclude_cols}
    extra = {
        "columns": {
            "targets": [c for c in value_cols if c not in set(past_cols)],
            "masks": dict(masks),
            "past": list(past_cols),
            "ignored": [c for c in columns if c not in used],
        }
    }
    return SeriesTable(
        ids=ids,
        offsets=offsets,
        times=t_s,
        values=values,
        mask=obs,
        channel_names=[str(c) for c in value_cols],
        codec=codec,
        source=where.source,
        id_col=id_col if has_id else None,
        time_col=time_col,
        time_ns=ns_s,
        rows=np.asarray(rows_s, dtype=np.int64),
        from_file=where.is_file,
        extra=extra,
    )


# -- inputs that would pass silently -------------------------------------------------------------------------


def as_frame(source):
    """A polars DataFrame, a pyarrow Table (or anything with the Arrow PyCapsule stream interface) -> a pandas
    DataFrame; other inputs (paths, pandas frames) unchanged. polars and pyarrow are optional inputs: the
    conversion goes through the Arrow interchange (pyarrow), not through polars."""
    if source is None or isinstance(source, (pd.DataFrame, str, os.PathLike)) or hasattr(source, "offsets"):
        return source
    if hasattr(source, "__arrow_c_stream__") or type(source).__module__.split(".")[0] in ("pyarrow", "polars"):
        try:
            import pyarrow as pa
        except ImportError as exc:
            raise DataError(
                f"a {type(source).__module__.split('.')[0]} {type(source).__name__} is read through "
                "pyarrow (pip install pyarrow); or pass a pandas DataFrame"
            ) from exc
        table = source if isinstance(source, pa.Table) else pa.table(source)
        return table.to_pandas()
    return source

"""Inputs that would pass silently, refused or flagged when the series are read
(:func:`ts_neuralode.data.io.read_series`): a mask or id column passed as a target, float ids, values so large they
swamp the scaler."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from ts_neuralode.data.series_table import _Where
from ts_neuralode.errors import DataError

#: a column name that says "0/1 observation mask" (Mask_1, value_mask, y_ok, observed, is_valid …)
MASK_NAME = re.compile(
    r"^(mask|m)[\W_]?\d*$|^mask|mask$|[\W_](ok|valid|observed|flag)$|^(is_?)?(observed|valid)$", re.IGNORECASE
)


#: a column name that says "series id" (id, ID, patient_id, series_idx …)
ID_NAME = re.compile(r"^(id|idx|index)$|[\W_](id|idx)$|^.+(?-i:ID)$", re.IGNORECASE)


#: a value this many robust standard deviations from the rest of its series is reported (1e308, a sentinel)
EXTREME_Z = 1e6


def _is_01(col: pd.Series) -> bool:
    v = pd.to_numeric(col, errors="coerce").dropna()
    return len(v) > 0 and bool(v.isin([0, 1]).all())


def _refuse_masks_and_ids_as_targets(df: pd.DataFrame, value_cols: list[str], where: _Where) -> None:
    """DataError when the columns picked as targets by default (every numeric column) include ones whose name
    and 0/1 content say "observation mask", or whose name and integer content say "series id": they would be
    forecast as channels without a word."""
    masks = [c for c in value_cols if MASK_NAME.search(c) and _is_01(df[c])]
    ids = [
        c
        for c in value_cols
        if ID_NAME.search(c)
        and c not in masks
        and bool((pd.to_numeric(df[c], errors="coerce").dropna() % 1 == 0).all())
    ]
    if not masks and not ids:
        return
    rest = [c for c in value_cols if c not in masks and c not in ids]
    parts = []
    if masks:
        parts.append(f"{', '.join(masks)} look like 0/1 observation masks")
    if ids:
        parts.append(f"{', '.join(ids)} look like series ids")
    fix = f"value_cols=[{', '.join(rest[: len(masks)] or rest)}]" if rest else "value_cols=[...]"
    mask_fix = f" with mask_cols=[{', '.join(masks)}] (one per value column)" if masks else ""
    id_fix = f"; an id column goes in id_col={ids[0]}" if ids else ""
    raise DataError(
        f"{where.source}: {' and '.join(parts)}, but with no value_cols given every numeric column "
        f"({', '.join(value_cols)}) would be forecast as a target; pass {fix}{mask_fix}{id_fix}"
    )


def _integral_ids(idcol: pd.Series) -> pd.Series:
    """Float ids that are all whole numbers (``0.0, 1.0`` — how a CSV written from a float array spells ids) as
    integers, so they come back as ``0``, ``1`` in forecasts and plot file names."""
    if (
        idcol.dtype.kind == "f"
        and len(idcol)
        and bool(np.isfinite(idcol).all())
        and bool((idcol % 1 == 0).all())
        and float(idcol.abs().max()) < 2**53
    ):
        return idcol.astype(np.int64)
    return idcol


def _warn_extreme_values(
    values: np.ndarray, obs: np.ndarray, codes: np.ndarray, rows: np.ndarray, value_cols: list[str], where: _Where
) -> None:
    """One warning per channel naming the file, column and line of a value far beyond the rest of its series
    (``|v - median| > EXTREME_Z`` robust standard deviations: a sentinel such as 1e308 or a unit typo). It is
    kept (it may be real), but it swamps its series' scale."""
    for d, c in enumerate(value_cols):
        o = obs[:, d]
        if o.sum() < 3:
            continue
        v = pd.Series(values[o, d])
        g = pd.Series(codes[o])
        med = v.groupby(g.to_numpy()).transform("median")
        dev = (v - med).abs()
        mad = dev.groupby(g.to_numpy()).transform("median")
        scale = 1.4826 * mad
        floor = 1e-9 * (med.abs() + 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            z = dev / np.maximum(scale, floor)
        hit = np.flatnonzero((z > EXTREME_Z).to_numpy())
        if len(hit):
            i = int(hit[0])
            row = int(rows[np.flatnonzero(o)[i]])
            more = f" (and {len(hit) - 1} more in this column)" if len(hit) > 1 else ""
            warnings.warn(
                f"{where.at(c, row)}: value {v.iloc[i]:g} is far beyond the rest of its series (median "
                f"{med.iloc[i]:g}){more}; check it: a sentinel or typo sets the series' scale",
                stacklevel=3,
            )

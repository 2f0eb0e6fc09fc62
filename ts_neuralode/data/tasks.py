"""The tasks of a data module (:class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule`): the
interpolation / extrapolation task (:func:`prepare_series_task`: a seeded split of whole series, the cut, the
conditioning points) and the forecast task (:func:`prepare_forecast`: split by time or by series, the context and
horizon windows, the training windows per series). Each reads the module's options (``opts``) and a validated
:class:`~ts_neuralode.data.io.SeriesTable` and returns what the module holds (:class:`Prepared`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ts_neuralode.data.batching import (
    ForecastSpec,
    SeriesArrays,
    TaskSpec,
    segment_searchsorted,
    subsample,
    subset_table,
    window_slack,
)
from ts_neuralode.data.transform import SeriesTransform
from ts_neuralode.errors import ConfigError, DataError

#: ``windows_per_series="auto"`` gives an epoch at least this many training batches
AUTO_MIN_BATCHES = 10


@dataclass
class Prepared:
    """A prepared task: the series, their split, the fitted transform, the arrays batches are cut from, each
    series' time origin, the task specification per split and the training items of an epoch."""

    table: Any
    split: dict[str, np.ndarray]
    transform: SeriesTransform
    arrays: SeriesArrays
    origins: np.ndarray
    specs: dict[str, Any]
    train_items: np.ndarray


def series_split(table, seed, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Seeded split of whole series into train/val/test."""
    rng = np.random.default_rng(seed)
    s = table.n_series
    perm = rng.permutation(s)
    n_test = int(round(test_fraction * s))
    n_val = int(round(val_fraction * s))
    if s - n_test - n_val < 1:
        hint = " or split by time (--data.task forecast --data.split_by time)" if s <= 12 else ""
        raise ConfigError(
            f"{table.source}: {s} series leave none for training with val_fraction="
            f"{val_fraction} and test_fraction={test_fraction}; lower them{hint}"
        )
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


def prepare_series_task(opts, table) -> Prepared:
    """The interpolation / extrapolation task of ``table`` under the data module options ``opts``."""
    s = table.n_series
    split = opts._series_split(table)
    transform = opts._fit_transform(table, split["train"])
    origins = transform.origins(table)
    arrays = SeriesArrays.from_table(table, transform, origins)

    counts = arrays.counts
    seg = table.series_of_rows()
    if opts.task == "interpolation":
        cond_count, cutoff, fraction = counts.copy(), None, opts.obs_fraction
    else:
        if opts.cut_time is not None:
            cut_raw = np.full(s, float(transform.codec.to_float([opts.cut_time])[0]))
        else:
            first, last = table.first_times(), table.last_times()
            cut_raw = first + opts.cut * (last - first)
        cond_count = np.bincount(seg, weights=table.times <= np.repeat(cut_raw, counts), minlength=s)
        cond_count = cond_count.astype(np.int64)
        cutoff = transform.raw_to_model_time(cut_raw, origins).astype(np.float32)
        fraction = opts.extrap_obs_fraction
        usable = (cond_count >= 1) & (cond_count < counts)
        if not usable.all():
            n_bad = int((~usable).sum())
            if not usable.any() and opts.whole_data:
                raise DataError(
                    f"{table.source}: no series has points both before and after the cut "
                    f"(cut={opts.cut}, cut_time={opts.cut_time!r}); move the cut"
                )
            warnings.warn(
                f"{table.source}: {n_bad} series have no point before or after the extrapolation cut "
                "and are left out of the task",
                stacklevel=2,
            )
            split = {k: v[usable[v]] for k, v in split.items()}
    cand = np.arange(len(seg)) - np.repeat(arrays.starts, counts) < np.repeat(cond_count, counts)
    fixed = subsample(seg, cand, counts, fraction, np.random.default_rng([opts.seed, 1]))
    targets_after = opts.task == "extrapolation"
    eval_spec = TaskSpec(cond_count, targets_after, fraction, fixed, cutoff)
    specs = {"train": TaskSpec(cond_count, targets_after, fraction, None, cutoff), "val": eval_spec, "test": eval_spec}
    return Prepared(table, split, transform, arrays, origins, specs, split["train"])


def positive_duration(codec, value, what: str) -> float:
    """``value`` (a number of the data's time units or a duration string) as raw time; ConfigError unless > 0."""
    d = codec.duration(value, what, ConfigError)
    if not (np.isfinite(d) and d > 0):
        raise ConfigError(
            f"{what}={value!r} must be a positive duration (a number of the data's time units, or "
            "e.g. 2D for datetimes)"
        )
    return d


def train_end_time(train_end, table) -> float:
    """``train_end`` as a raw time (ConfigError naming it when it is not a time of the data's kind)."""
    try:
        cut = float(table.codec.to_float([train_end])[0])
    except (DataError, TypeError, ValueError) as err:
        kind = (
            "a datetime like the data's, e.g. 2024-01-18T00:00:00+01:00"
            if table.codec.is_datetime
            else "a number of the data's time units"
        )
        raise ConfigError(
            f"--data.train_end={train_end!s} is not a time of the data: pass {kind} ({' '.join(str(err).split())})"
        ) from err
    if not np.isfinite(cut):
        raise ConfigError(f"--data.train_end={train_end!s} is not a finite time; pass a time within the data")
    return cut


def prepare_forecast(opts, table) -> Prepared:
    """The forecast task of ``table`` under the data module options ``opts`` (split by time or by series)."""
    s, src = table.n_series, table.source
    h = positive_duration(table.codec, opts.horizon, "horizon")
    ctx = None if opts.context is None else positive_duration(table.codec, opts.context, "context")
    window = None if ctx is None else ctx + h  # what a model integrates over: sets time_scale="auto"
    first, last = table.first_times(), table.last_times() - opts.holdout_shift * h
    every, none = np.arange(s), np.zeros(0, dtype=np.int64)
    if opts.split_by == "time":
        if opts.train_end is not None:  # one cutoff for every series: train before it, validate after it
            cut = np.full(s, train_end_time(opts.train_end, table))
            end, cuts = cut, {"val": cut, "test": cut}
            split = {"train": every, "val": every, "test": none}
        else:
            test_cut = last - h
            val_cut = (test_cut if opts.test_fraction > 0 else last) - h
            end = val_cut if opts.val_fraction > 0 else (test_cut if opts.test_fraction > 0 else np.full(s, np.inf))
            split = {
                "train": every,
                "val": every if opts.val_fraction > 0 else none,
                "test": every if opts.test_fraction > 0 else none,
            }
            cuts = {"val": val_cut, "test": test_cut}
        # Fit the scaler and time scale on the training part of the time axis only.
        n_fit = segment_searchsorted(table.times, table.offsets[:-1], table.counts, end + window_slack(end, h), "right")
        if not (n_fit > 0).any() and opts.whole_data:
            raise DataError(
                f"{src}: no series has history before its validation/test horizons "
                f"(horizon={opts.horizon!r}); shorten --data.horizon"
            )
        fit_idx = np.flatnonzero(n_fit > 0)
        transform = opts._fit_transform(subset_table(table, fit_idx, hi=n_fit[fit_idx]), None, window)
    else:
        split = opts._series_split(table)
        end = np.full(s, np.inf)
        cuts = {"val": last - h, "test": last - h}
        transform = opts._fit_transform(table, split["train"], window)
    origins = transform.origins(table)
    arrays = SeriesArrays.from_table(table, transform, origins)
    base = ForecastSpec(
        h,
        ctx,
        np.asarray(end, dtype=np.float64),
        origins,
        float(transform.time_scale),
        shift=opts.time_origin == "series",
    )
    specs = {"train": base.with_anchors(arrays)}
    usable = specs["train"].anchor_count[split["train"]] > 0
    if not usable.any() and opts.whole_data:
        before = segment_searchsorted(table.times, table.offsets[:-1], table.counts, end, "right")
        if int(before[split["train"]].max(initial=0)) < 2:  # each held-out part is a horizon long: they took it all
            fix = (
                "at most one observation before them; shorten --data.horizon or hold out less "
                "(--data.val_fraction 0, --data.test_fraction 0)"
            )
        else:
            fix = "lengthen --data.horizon beyond the gaps between observations, or hold out less"
        raise DataError(
            f"{src}: no series has two observations within horizon={opts.horizon!r} of each other "
            f"before its validation/test part ({fix})"
        )
    split["train"] = keep_usable(split["train"], usable, "training", src)
    for name in ("val", "test"):
        spec = ForecastSpec(h, ctx, np.full(s, np.inf), origins, base.time_scale, base.shift, cuts[name])
        idx = split[name]
        _, cnt, n_cond = spec.windows(arrays, idx, cuts[name][idx])
        ok = (n_cond >= 1) & (cnt > n_cond)
        if name == "val" and len(idx) and not ok.any() and opts.train_end is None and opts.whole_data:
            shown = ", ".join(str(table.ids[i]) for i in idx[:5]) + (" …" if len(idx) > 5 else "")
            raise DataError(
                f"{src}: none of the {len(idx)} validation series ({shown}) has an observation before "
                f"its last horizon={opts.horizon!r} and one within it, so there would be no validation "
                "(no early stopping, no checkpoint choice, no band calibration); pass a shorter "
                "--data.horizon, --data.split_by time (every series validates on its last horizon), "
                "or --data.val_fraction 0 to train without validation"
            )
        if name == "val" and opts.train_end is not None and not ok.any() and opts.whole_data:
            end_of = table.user_times(table.offsets[1:] - 1)
            raise ConfigError(
                f"--data.train_end={opts.train_end!s}: no series has an observation within "
                f"horizon={opts.horizon!r} after it to validate on (the data ends at "
                f"{max(end_of)}); pass an earlier train_end"
            )
        split[name] = keep_usable(idx, ok, name, src)
        specs[name] = spec
    if opts.windows_per_series == "auto":
        span = np.minimum(last, end) - first
        per = np.maximum(1, np.ceil(span / h - 1e-9)).astype(np.int64)
        # few series: scale up so an epoch still holds AUTO_MIN_BATCHES batches (12 sensors × 5 windows of
        # a 2-day horizon would give 4 optimiser steps an epoch, and a config's epoch budget would be spent
        # before the model learned anything)
        total = int(per[split["train"]].sum())
        if 0 < total < AUTO_MIN_BATCHES * opts.batch_size:
            per = per * math.ceil(AUTO_MIN_BATCHES * opts.batch_size / total)
    else:
        per = np.full(s, int(opts.windows_per_series), dtype=np.int64)
    return Prepared(table, split, transform, arrays, origins, specs, np.repeat(split["train"], per[split["train"]]))


def keep_usable(idx: np.ndarray, usable: np.ndarray, what: str, src: str) -> np.ndarray:
    if not usable.all():
        warnings.warn(
            f"{src}: {int((~usable).sum())} series are too short for a {what} forecast window (no "
            "point before its cutoff or none within the horizon after it) and are left out of it",
            stacklevel=3,
        )
    return idx[usable]

"""Backtest folds of the automatic model choice (:mod:`ts_neuralode.api.model_choice`).

A trial is scored on the validation horizon at the end of every series. With many series that is many windows;
with one series it is one horizon of a dozen points, and the trial that wins it is often the luckiest, not the best:
on single seasonal series the third and fourth trials of a 4-trial search won their horizon and then forecast
AirPassengers 1.8x and ldeaths 1.9x worse than the 2-trial search's pick (results/peers_irregular.md, "Unseen
data"). Where fewer than :data:`FOLD_SERIES` series validate, a complete trial is therefore also fitted and scored
with its validation ``k = 1 … folds-1`` horizons earlier (``data.holdout_shift=k``: the later observations unused),
and ranked by the geometric mean of its folds' values (a fold's level and scaler differ: the geometric mean ranks
trials the same whatever each fold's scale). Pruning, the best epoch, the correction weight and the band calibration
stay those of fold 0, the usual split, which the refit inherits. (Calibrating the refit's bands on the folds' held-out
errors pooled with the trial's was tried and dropped: on four of five unseen sets it covered worse than the
trial's own calibration or the uncalibrated bands; results/peers_irregular.md, "Backtest folds".)
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ts_neuralode.api.model_choice_study import gated_value
from ts_neuralode.data.tasks import positive_duration
from ts_neuralode.errors import ConfigError, DataError, SolverError, TSNeuralODEError

#: fewer validation series than this: a trial is scored on several backtest folds (``folds="auto"``)
FOLD_SERIES = 10

#: the folds of ``folds="auto"`` where the history allows them
AUTO_FOLDS = 3


def fold_count(fixed: Mapping[str, Any], table: Any, folds: Any) -> tuple[int, str | None]:
    """How many backtest folds score each trial, and the line saying why (None: one fold, nothing to say).

    ``folds``: an integer >= 1, or ``"auto"``: :data:`AUTO_FOLDS` where fewer than :data:`FOLD_SERIES` series
    validate, as many as the longest series allows with each fold's training part at least half as long as the
    usual split's and a horizon long; else 1. ``table``: the data as the search reads it (None: a Parquet folder,
    one fold). A ``data.train_end`` (one cutoff for every series) has one fold."""
    if folds != "auto" and (isinstance(folds, bool) or not str(folds).isdigit() or int(folds) < 1):
        raise ConfigError(f"folds={folds!r} must be 'auto' or an integer >= 1 (backtest folds scoring each trial)")
    asked = None if folds == "auto" else int(folds)
    if asked == 1:
        return 1, None
    if fixed.get("data.train_end") is not None:
        if asked is not None:
            raise ConfigError(f"folds={folds}: a search with data train_end validates on one cutoff; drop one of them")
        return 1, None
    if table is None:
        if asked is not None:
            raise ConfigError(f"folds={folds}: a Parquet folder is read in shards; pass folds=1 (or a CSV file)")
        return 1, None
    n = int(table.n_series)
    if asked is None and n >= FOLD_SERIES:
        return 1, None
    h = positive_duration(table.codec, fixed["data.horizon"], "horizon")
    # the usual split's held-out end: validation, test, and the horizons a user's holdout_shift leaves out
    shift = fixed.get("data.holdout_shift", 0)
    shift = int(shift) if str(shift).isdigit() and not isinstance(shift, bool) else 0  # bad: the data module says so
    held = h * (1 + (float(fixed.get("data.test_fraction", 0.0)) > 0) + shift)
    span = float(np.max(table.last_times() - table.first_times())) if n else 0.0
    base = span - held  # fold 0's training stretch (the longest series)
    want = AUTO_FOLDS if asked is None else asked
    k = 1
    while k < want and span - held - k * h >= max(h, base / 2):
        k += 1
    if asked is not None and k < asked:
        raise ConfigError(
            f"folds={asked}: the longest series ({span:g} time units) has room for {k} (each fold's training part "
            f"at least half the usual split's and a horizon={h:g} long); pass folds={k} or a shorter horizon"
        )
    if k == 1:
        return 1, (
            f"backtest folds: 1 ({n} series validate on one horizon each; the history has no room for an earlier "
            "fold at least half as long)"
        )
    why = f"{n} series validate" if asked is None else f"folds={asked}"
    earlier = "1 horizon" if k == 2 else f"1 to {k - 1} horizons"
    return k, (
        f"backtest folds: {k} ({why}: each trial is also fitted and scored {earlier} earlier, "
        "and ranked by the geometric mean)"
    )


def combined(values: Sequence[float]) -> float:
    """A trial's ranking value over its folds: the geometric mean (inf if any is not a finite positive number;
    0 if one is 0)."""
    vals = [float(v) for v in values]
    if any(not math.isfinite(v) or v < 0 for v in vals):
        return math.inf
    if any(v == 0 for v in vals):
        return 0.0
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals)))


def fold_values(
    options: Mapping[str, Any], folds: int, fit_fold, metric: str, tdir: Path, make_callback
) -> tuple[list[float], str | None, bool]:
    """Fit ``options`` with its validation 1 … ``folds``-1 horizons earlier; returns ``(values, reason, by_time)``:
    the folds' gated values in order (stopping early where a fold stopped at the deadline: ``by_time``), and why a
    fold failed (None: none did). ``fit_fold(options, out, callbacks)`` trains one fold (untracked, its log joining
    the trial's; its directory is removed after); ``make_callback()`` a fresh
    :class:`~ts_neuralode.api.model_choice_runs.TrialCallback` without an Optuna trial."""
    values: list[float] = []
    for k in range(1, folds):
        cb = make_callback()
        fdir = tdir / f"fold_{k}"
        try:
            shift = int(options.get("data.holdout_shift", 0)) + k  # on top of a shift the user fixed
            fc = fit_fold({**options, "data.holdout_shift": shift}, fdir, [cb])
        except DataError:  # the data has no window for this fold (the same for every trial): scored without it
            continue
        except (TSNeuralODEError, SolverError) as err:
            return values, f"fold {k} ({k} horizons earlier): {' '.join(str(err).split())[:400]}", False
        finally:
            shutil.rmtree(fdir, ignore_errors=True)
        if cb.stopped_by_time:
            return values, None, True
        if not math.isfinite(cb.best):
            return values, f"fold {k} ({k} horizons earlier): no finite {metric}", False
        values.append(gated_value(cb.best, metric, (fc.fit_info or {}).get("correction_gate")))
    return values, None, False

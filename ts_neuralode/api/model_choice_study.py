"""The automatic model choice's study (:mod:`ts_neuralode.api.model_choice`): the budget, the fixed settings and their
fingerprint and the result of a search."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ts_neuralode.api.model_choice_space import flatten
from ts_neuralode.data.io import READ_KEYS, read_series
from ts_neuralode.data.scalers import positive_targets
from ts_neuralode.data.season import detect_season
from ts_neuralode.errors import ConfigError, DataError

try:
    import optuna
except ImportError:  # pragma: no cover - optuna is a dependency; a broken install gets one line
    optuna = None


DEFAULT_TRIALS = 20


DEFAULT_EPOCHS = 20


DEFAULT_STUDY = "ts_neuralode_auto"


DEFAULT_METRIC = "val_mae"


PARENT_WAIT_S = 30  # a worker joining a study waits this long for the creator to record the MLflow parent run


ATTR = "ts_neuralode"  # prefix of the study's user attributes


def _require_optuna() -> None:
    if optuna is None:
        raise ConfigError("the automatic model choice needs optuna: pip install 'optuna>=4'")


@dataclass(frozen=True)
class Budget:
    """``trials``: trials of the study in total (all workers and resumes together; None: no limit); ``time``:
    seconds of wall time for this call's search (None: no limit). A trial running at the deadline stops there and
    is scored on the validations it made. Refits come after the search and are not counted."""

    trials: int | None = DEFAULT_TRIALS
    time: float | None = None

    @classmethod
    def coerce(cls, value: Any) -> Budget:
        """``20`` (trials), ``"30min"`` / a Timedelta (time), ``{"trials": 20, "time": "1h"}``, or a Budget."""
        if isinstance(value, cls):
            out = value
        elif value is None:
            out = cls()
        elif isinstance(value, bool):
            raise ConfigError(
                f"budget={value!r}: pass a number of trials, a duration such as '30min', or "
                "{'trials': N, 'time': '1h'}"
            )
        elif isinstance(value, int):
            out = cls(trials=value)
        elif isinstance(value, (str, pd.Timedelta)):
            out = cls(trials=None, time=_seconds(value))
        elif isinstance(value, Mapping):
            unknown = set(value) - {"trials", "time"}
            if unknown:
                raise ConfigError(f"budget has no option(s) {sorted(unknown)}; use trials and time")
            trials = value.get("trials")
            t = value.get("time")
            out = cls(
                trials=None if trials is None else _int(trials, "budget trials"),
                time=None if t is None else _seconds(t),
            )
        else:
            raise ConfigError(
                f"budget={value!r}: pass a number of trials, a duration such as '30min', or "
                "{'trials': N, 'time': '1h'}"
            )
        if out.trials is None and out.time is None:
            raise ConfigError("budget: give a number of trials, a time, or both (the search needs an end)")
        if out.trials is not None and out.trials < 1:
            raise ConfigError(f"budget trials={out.trials} must be >= 1")
        if out.time is not None and not out.time > 0:
            raise ConfigError(f"budget time={out.time} s must be positive")
        return out


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what}={value!r} is not an integer") from err


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        pass
    try:
        return pd.Timedelta(value).total_seconds()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"budget time={value!r} is not a duration; pass seconds or e.g. '30min', '2h'") from err


def _counts(t) -> bool:
    """Whether trial ``t`` uses the trials budget: running, or run to an outcome (complete, pruned, failed). Waiting
    trials and interrupted ones (failed without an outcome: they are run again) do not."""
    return t.state == optuna.trial.TrialState.RUNNING or "outcome" in t.user_attrs


# A trial joins a top-k ensemble only when its validation metric is within this factor of the best trial's: with a
# small search the k-th best is often far behind (results/peers_irregular.md, "Ensembles": an equal mixture of the top
# 3 of 4 trials took CO₂ from 0.285 to 0.751 and BXLator from 0.192 to 0.602 in scaled MAE).
ENSEMBLE_WITHIN = 1.2


@dataclass
class SearchResult:
    """What :func:`search` did: the Optuna ``study``, the MLflow ``parent_run_id``, why it stopped
    (``"trials"``, ``"time"``), and the numbers of the trials this call ran."""

    study: Any
    parent_run_id: str | None
    stop_reason: str
    ran: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def trials(self, outcome: str | None = None) -> list:
        """The study's finished trials (``outcome``: only "complete", "pruned" or "failed"), by number."""
        out = [t for t in self.study.get_trials(deepcopy=False) if "outcome" in t.user_attrs]
        return [t for t in out if outcome is None or t.user_attrs["outcome"] == outcome]

    def best(self, k: int = 1) -> list:
        """The ``k`` complete trials with the lowest metric (ties: the earlier trial)."""
        done = [t for t in self.trials("complete") if t.value is not None and math.isfinite(t.value)]
        return sorted(done, key=lambda t: (t.value, t.number))[:k]

    def ensemble(self, k: int, within: float = ENSEMBLE_WITHIN) -> tuple[list, list]:
        """The members of a top-``k`` ensemble: ``(kept, left_out)``, the best ``k`` complete trials split by whether
        their metric is within ``within`` × the best one's (a member far behind the best only drags the mixture's
        point forecast away from it)."""
        top = self.best(k)
        if not top:
            return [], []
        bound = top[0].value + (within - 1.0) * abs(top[0].value)
        return [t for t in top if t.value <= bound], [t for t in top if t.value > bound]


def _fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_digest(path: Path) -> str:
    """sha256 of a data file (or of a folder's file names and sizes): the same data on every worker."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
    else:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _prepare_data(data: Any, output_dir: Path) -> Path:
    if isinstance(data, pd.DataFrame):
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / "data.csv"
        data.to_csv(path, index=False)
        return path
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise DataError(f"{path}: no such file; pass the path of a CSV or Parquet file, or a DataFrame")
        return path
    raise ConfigError(f"data of type {type(data).__name__} is not supported; pass a pandas DataFrame or a file path")


def choice_table(fixed: Mapping[str, Any], path: Path):
    """The data as every trial's data module reads it (a SeriesTable), or None for a Parquet folder (read in shards:
    no in-memory table to choose on)."""
    if Path(path).is_dir():
        return None
    data = {k.split(".", 1)[1]: v for k, v in fixed.items() if k.startswith("data.")}
    read = {k: data[k] for k in READ_KEYS if data.get(k) is not None}
    excluded = list(data.get("future_cols") or []) + list(data.get("static_cols") or [])
    if excluded:  # as the data module reads it: covariate columns are not value columns
        read["exclude_cols"] = excluded
    if data.get("past_cols"):
        read["past_cols"] = list(data["past_cols"])
    with warnings.catch_warnings():  # each trial's data module says what reading found
        warnings.simplefilter("ignore")
        return read_series(path, **read)


def resolve_season(
    fixed: Mapping[str, Any], path: Path, seed: int, table: Any = None
) -> tuple[dict[str, Any], str | None]:
    """``fixed`` with ``data.season`` chosen once for every trial where the user gave none or ``"auto"``
    (:func:`ts_neuralode.data.season.detect_season`: a calendar period for datetime series, else none), and the
    line saying what was measured (None where the user gave a season, or None for no season). ``table``: the data
    as :func:`choice_table` read it (None: read here)."""
    if fixed.get("data.season", "auto") != "auto":
        return dict(fixed), None
    if Path(path).is_dir():
        return {**fixed, "data.season": None}, (
            f"season auto: none chosen ({path} is a Parquet folder read in shards; pass --data.season, e.g. 24h)"
        )
    season, line = detect_season(choice_table(fixed, path) if table is None else table, seed)
    return {**fixed, "data.season": season}, line


def log_scale_applies(fixed: Mapping[str, Any], table: Any) -> bool:
    """Whether the search tries the log scale (:data:`~ts_neuralode.api.model_choice_space.LOG_SCALE`): the data has a
    season (``fixed`` after :func:`resolve_season`) and every observed value to forecast in ``table`` (as
    :func:`choice_table` read it; None for a Parquet folder) is positive."""
    return fixed.get("data.season") is not None and table is not None and positive_targets(table)


def _fixed_options(data_options, model_options, trainer) -> dict[str, Any]:
    """The user's options, flat, with the search's time split forced: the forecast task split by time."""
    fixed = {**flatten("data", data_options), **flatten("model", model_options), **flatten("trainer", trainer)}
    if fixed.get("data.task", "forecast") != "forecast":
        raise ConfigError(
            f"model auto searches on the forecast task's time split; drop data task="
            f"{fixed['data.task']!r} (it uses task='forecast')"
        )
    if fixed.get("data.split_by", "time") != "time":
        raise ConfigError("model auto validates on the end of every series (split_by='time'); drop split_by")
    if fixed.get("data.horizon") is None:
        raise ConfigError(
            "model auto needs the forecast horizon: pass data_options={'horizon': ...} "
            "(--data.horizon, a number of time units or a duration such as 2D)"
        )
    if float(fixed.get("data.val_fraction", 0.2)) <= 0 and fixed.get("data.train_end") is None:
        raise ConfigError("model auto scores each trial on the validation horizon; drop val_fraction=0")
    fixed["data.task"] = "forecast"
    fixed["data.split_by"] = "time"
    fixed.setdefault("data.val_fraction", 0.2)
    fixed.setdefault("data.test_fraction", 0.0)
    return fixed


def _wait_attr(study, key: str, seconds: float):
    end = time.monotonic() + seconds
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() >= end:
            return value
        time.sleep(0.5)


def gated_value(best: float, metric: str, gate: dict | None) -> float:
    """A trial's value: its best ``metric`` as trained, scaled for a window model by what its correction weight,
    chosen on the validation windows at the end of the fit (:mod:`ts_neuralode.api.correction_gate`), changed the
    validation MAE (``mae / mae_as_trained``, at most 1: the weight 1 is one of the choices).
    The returned model forecasts with that weight, so trials are ranked as they will forecast: a trial whose learned
    correction hurts but whose base is good (BXLator's trend line: val_mae 2.2 as trained, 0.91x the last value on
    its base alone, results/peers_irregular.md) is not ranked by the correction it will not use. Only for error
    metrics (``*mae``); others, and trials without a gate, keep their value."""
    if not gate or not str(metric).endswith("mae") or not (math.isfinite(best) and best > 0):
        return best
    gated, trained = gate.get("mae"), gate.get("mae_as_trained")
    if gated is None or trained is None or not (math.isfinite(gated) and math.isfinite(trained) and trained > 0):
        return best
    return best * min(1.0, max(0.0, float(gated) / float(trained)))


@dataclass(frozen=True)
class _Search:
    """What every trial of one :func:`~ts_neuralode.api.model_choice.search` call shares: the study and its
    storage, the space and the options, where trials write, tracking, the stopping rules, the progress bar and the
    result."""

    study: Any
    storage: Any
    study_id: int
    space: Sequence[Any]  # of model_choice_space.Param
    fixed: dict[str, Any]
    defaults: dict[str, Any]
    path: Path
    out: Path
    callbacks: Sequence | None
    track: Any  # model_choice_runs._Tracking
    parent: str | None
    seed: int
    metric: str
    deadline: float | None
    patience: int | None
    bar: Any  # model_choice_runs._Progress
    result: SearchResult
    folds: int = 1  # backtest folds scoring a complete trial (model_choice_folds)

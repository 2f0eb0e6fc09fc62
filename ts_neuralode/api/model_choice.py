"""The automatic model choice: ``Forecaster.fit(data, "auto", budget=...)`` / ``ts-neuralode fit --model auto``.

It searches the model families (latent ODE, ODE-RNN, GRU-ODE) × evolutions (ODE, GRU / coupling / ResNet flow)
and their key options (:data:`ts_neuralode.api.model_choice_space.SEARCH_SPACE`, a declared table) with Optuna, on the
forecast task's **time split**: every trial trains on each series' history before its last ``horizon`` and is
scored on that last horizon (``data.train_end`` moves the cut to one time for every series). The score is the
validation metric (``val_mae`` by default: comparable across families, unlike their losses), its best epoch.

* **pruning**: :class:`TrialCallback` reports the metric to Optuna after every validation; a trial the pruner
  (median rule by default) finds hopeless stops there;
* **budget**: a number of trials (the study's total, across workers and resumes) and/or a wall time for this call;
* **storage**: ``storage="sqlite:///study.db"`` (or PostgreSQL on a cluster) keeps the study; the same storage and
  ``study_name`` resume it after an interruption (an interrupted trial is run again with its parameters), and
  several processes or machines sharing them split the trials between them (``worker=True``: search only);
* **MLflow**: a parent run for the search, each trial (and each refit) a child run with its per-epoch metrics;
* **result**: the best trial refitted on train + validation for its best number of epochs and returned as a
  :class:`~ts_neuralode.api.forecaster.Forecaster`; or with ``ensemble=k`` the top ``k`` as an
  :class:`~ts_neuralode.api.model_choice_ensemble.EnsembleForecaster` (a mixture of their predictive samples).

Candidates are neural models only: a naive or statistical forecast is never returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from lightning.pytorch import Callback

from ts_neuralode.api.fitting import fit
from ts_neuralode.api.model_choice_ensemble import EnsembleForecaster
from ts_neuralode.api.model_choice_space import SEARCH_SPACE, Param, check_space, describe, flatten, nest, sample
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.api.preflight import tracking_store
from ts_neuralode.errors import ConfigError, DataError, SolverError, TrainingError, TSNeuralODEError
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri

try:
    import optuna
except ImportError:  # pragma: no cover - optuna is a dependency; a broken install gets one line
    optuna = None

DEFAULT_TRIALS = 20
DEFAULT_EPOCHS = 20
DEFAULT_STUDY = "ts_neuralode_auto"
DEFAULT_METRIC = "val_mae"
#: trainer options of every trial unless the user sets them
TRIAL_TRAINER = {"max_epochs": DEFAULT_EPOCHS, "gradient_clip_val": 1.0, "enable_progress_bar": False,
                 "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1}
HEARTBEAT_S = 10       # a running trial records a heartbeat this often (RDB storages)
GRACE_S = 60           # a trial without one for this long is stale: its worker died; it is failed and run again
PARENT_WAIT_S = 30     # a worker joining a study waits this long for the creator to record the MLflow parent run
ATTR = "ts_neuralode"  # prefix of the study's user attributes


def _require_optuna() -> None:
    if optuna is None:
        raise ConfigError("the automatic model choice needs optuna: pip install 'optuna>=4'")


# -- budget -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """``trials``: trials of the study in total (all workers and resumes together; None: no limit); ``time``:
    seconds of wall time for this call's search (None: no limit). A trial running at the deadline stops there and
    is scored on the validations it made. Refits come after the search and are not counted."""

    trials: int | None = DEFAULT_TRIALS
    time: float | None = None

    @classmethod
    def coerce(cls, value: Any) -> "Budget":
        """``20`` (trials), ``"30min"`` / a Timedelta (time), ``{"trials": 20, "time": "1h"}``, or a Budget."""
        if isinstance(value, cls):
            out = value
        elif value is None:
            out = cls()
        elif isinstance(value, bool):
            raise ConfigError(f"budget={value!r}: pass a number of trials, a duration such as '30min', or "
                              "{'trials': N, 'time': '1h'}")
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
            out = cls(trials=None if trials is None else _int(trials, "budget trials"),
                      time=None if t is None else _seconds(t))
        else:
            raise ConfigError(f"budget={value!r}: pass a number of trials, a duration such as '30min', or "
                              "{'trials': N, 'time': '1h'}")
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


# -- the Lightning callback of a trial ----------------------------------------------------------------------
class TrialCallback(Callback):
    """Reports ``metric`` to the Optuna ``trial`` after every validation and stops the fit when the pruner says so
    (``pruned``), when ``patience`` validations passed without improvement, or at ``deadline`` (``time.monotonic``;
    ``stopped_by_time``). Keeps each epoch's value and the best one (``best``, ``best_epoch``). With a
    ``parent_run_id`` it makes the fit's MLflow run a child of it (and adds ``tags``); ``run_id`` is that run."""

    def __init__(self, trial=None, metric: str = DEFAULT_METRIC, *, deadline: float | None = None,
                 patience: int | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        self.trial, self.metric, self.deadline, self.patience = trial, metric, deadline, patience
        self.parent_run_id, self.tags = parent_run_id, dict(tags or {})
        self.values: list[float] = []
        self.best, self.best_epoch = math.inf, None
        self.pruned = self.stopped_by_time = False
        self.run_id: str | None = None
        self.client = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)
        if logger is None or self.parent_run_id is None:
            return
        try:
            self.run_id, self.client = logger.run_id, logger.experiment
            self.client.set_tag(self.run_id, "mlflow.parentRunId", self.parent_run_id)
            for k, v in self.tags.items():
                self.client.set_tag(self.run_id, k, v)
        except Exception as err:  # tracking problems never stop a trial (the fit's own tracking reports them)
            warnings.warn(f"model choice: cannot tag MLflow run as a child of {self.parent_run_id} ({err})",
                          stacklevel=1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_by_time = True
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if self.metric not in metrics:
            known = sorted(k for k in metrics if k.startswith("val_"))
            raise ConfigError(f"model choice: the fit logs no {self.metric!r} to select on; pass metric= one of "
                              f"{', '.join(known) or 'val_loss'}")
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            value = math.inf
        epoch = int(trainer.current_epoch)
        self.values.append(value)
        if value < self.best:
            self.best, self.best_epoch = value, epoch
        if self.trial is not None:
            self.trial.report(value if math.isfinite(value) else sys.float_info.max, epoch)
            if self.trial.should_prune():
                self.pruned = True
                trainer.should_stop = True
        if self.patience and self.best_epoch is not None and epoch - self.best_epoch >= self.patience:
            trainer.should_stop = True


# -- the study ----------------------------------------------------------------------------------------------
def _storage(url: str | None):
    """An Optuna storage: None -> in memory (no resume); a URL (``sqlite:///…``, ``postgresql://…``) -> RDB with
    heartbeats (a dead worker's trial is failed after GRACE_S and run again); a bare path -> a sqlite file."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    url = str(url)
    if "://" not in url:
        url = f"sqlite:///{Path(url).resolve()}"
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # workers wait for each other's writes
        if ":///" in url:
            Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    for attempt in range(4):  # workers starting together race to create the tables: the losers try again
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                  heartbeat_stale_trial_callback=retry, **kwargs)
        except Exception as err:  # sqlalchemy: bad URL, unreachable server, missing driver, a race
            if attempt < 3 and "://" in url and not isinstance(err, (ImportError, ValueError)):
                time.sleep(1.0 + attempt)
                continue
            first = " ".join(str(err).split())[:300]
            raise ConfigError(f"storage={url!r}: cannot open the Optuna storage ({first}); pass e.g. "
                              "sqlite:///study.db or postgresql://user:pass@host/db") from err


def _counts(t) -> bool:
    """Whether trial ``t`` uses the trials budget: running, or run to an outcome (complete, pruned, failed). Waiting
    trials and interrupted ones (failed without an outcome: they are run again) do not."""
    return t.state == optuna.trial.TrialState.RUNNING or "outcome" in t.user_attrs


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


class _Quiet:
    """A trial's output (Lightning's messages, warnings, prints) goes to its log file instead of the console."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8")
        self.levels = {}
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            lg = logging.getLogger(name)
            self.levels[name] = lg.level
            lg.setLevel(logging.WARNING)
        self.redirects = contextlib.ExitStack()
        self.redirects.enter_context(contextlib.redirect_stdout(self.file))
        self.redirects.enter_context(contextlib.redirect_stderr(self.file))
        return self

    def __exit__(self, *exc) -> None:
        self.redirects.close()
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        self.file.close()


class _Heartbeat:
    """Records the trial's heartbeat every HEARTBEAT_S seconds while it runs (RDB storages)."""

    def __init__(self, storage, trial_id: int | None) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = None

    def __enter__(self):
        if self.trial_id is not None and hasattr(self.storage, "record_heartbeat") and \
                self.storage.get_heartbeat_interval():
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(HEARTBEAT_S):
                return

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


class _Progress:
    """A bar on a TTY (tqdm), else one line per trial on stderr; nothing when disabled."""

    def __init__(self, enabled: bool | None, total: int | None, done: int) -> None:
        self.stream = sys.stderr
        self.total = total
        self.enabled = True if enabled is None else bool(enabled)
        self.bar = None
        if self.enabled and (enabled is None and self.stream.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="auto", unit="trial", file=self.stream)

    def trial(self, line: str, postfix: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
        else:
            print(f"auto: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def _fixed_options(data_options, model_options, trainer) -> dict[str, Any]:
    """The user's options, flat, with the search's time split forced: the forecast task split by time."""
    fixed = {**flatten("data", data_options), **flatten("model", model_options), **flatten("trainer", trainer)}
    if fixed.get("data.task", "forecast") != "forecast":
        raise ConfigError(f"model auto searches on the forecast task's time split; drop data task="
                          f"{fixed['data.task']!r} (it uses task='forecast')")
    if fixed.get("data.split_by", "time") != "time":
        raise ConfigError("model auto validates on the end of every series (split_by='time'); drop split_by")
    if fixed.get("data.horizon") is None:
        raise ConfigError("model auto needs the forecast horizon: pass data_options={'horizon': ...} "
                          "(--data.horizon, a number of time units or a duration such as 2D)")
    if float(fixed.get("data.val_fraction", 0.2)) <= 0 and fixed.get("data.train_end") is None:
        raise ConfigError("model auto scores each trial on the validation horizon; drop val_fraction=0")
    fixed["data.task"] = "forecast"
    fixed["data.split_by"] = "time"
    fixed.setdefault("data.val_fraction", 0.2)
    fixed.setdefault("data.test_fraction", 0.0)
    return fixed


def _open_study(storage_url, study_name, pruner, settings):
    storage = _storage(storage_url)
    name = study_name or DEFAULT_STUDY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction="minimize", pruner=pruner)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
            created = False
    fp = _fingerprint(settings)
    if created:
        study.set_user_attr(f"{ATTR}.fingerprint", fp)
        study.set_user_attr(f"{ATTR}.settings", json.loads(json.dumps(settings, default=str)))
    else:
        stored = _wait_attr(study, f"{ATTR}.fingerprint", 10.0)
        if stored is None:
            raise ConfigError(f"study {name!r} at {storage_url} was not made by the model choice; pass another "
                              "study_name")
        if stored != fp:
            old = study.user_attrs.get(f"{ATTR}.settings") or {}
            new = json.loads(json.dumps(settings, default=str))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"study {name!r} at {storage_url} was started with other settings ({', '.join(diff)} "
                              "differ); resume it with the same data and options, or pass another study_name")
    return storage, study, created


def _wait_attr(study, key: str, seconds: float):
    end = time.monotonic() + seconds
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() >= end:
            return value
        time.sleep(0.5)


# -- MLflow -------------------------------------------------------------------------------------------------
class _Tracking:
    """The search's parent run (created once per study; workers and resumes reuse it)."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment_name: str | None, run_name: str | None):
        self.enabled = enabled
        self.client = None
        self.uri = None
        self.experiment_name = experiment_name or "ts_neuralode"
        self.run_name = run_name
        if enabled:
            from mlflow import MlflowClient


            self.uri = tracking_store(resolve_tracking_uri(tracking_uri), off="pass tracking=False")
            self.client = MlflowClient(self.uri)

    def parent(self, study, created: bool, settings: Mapping[str, Any]) -> str | None:
        if not self.enabled:
            return None
        key = f"{ATTR}.mlflow_parent_run_id"
        fresh = not created and not study.get_trials(deepcopy=False)  # a worker that created it a moment ago
        run_id = study.user_attrs.get(key) or (_wait_attr(study, key, PARENT_WAIT_S) if fresh else None)
        if run_id is not None:
            with contextlib.suppress(Exception):
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        exp = self.client.get_experiment_by_name(self.experiment_name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment_name)
        run = self.client.create_run(exp_id, run_name=self.run_name or f"auto_{study.study_name}",
                                     tags={"ts_neuralode.kind": "model_choice", "ts_neuralode.study": study.study_name})
        run_id = run.info.run_id
        for k, v in settings.items():
            with contextlib.suppress(Exception):
                self.client.log_param(run_id, k, str(v)[:6000])
        study.set_user_attr(key, run_id)
        return run_id

    def tag(self, run_id: str | None, tags: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        with contextlib.suppress(Exception):
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))
            for k, v in (metrics or {}).items():
                if v is not None and math.isfinite(v):
                    self.client.log_metric(run_id, k, float(v))

    def end(self, run_id: str | None, status: str) -> None:
        if self.enabled and run_id is not None:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, status)


# -- the search ---------------------------------------------------------------------------------------------
def search(data: Any, *, data_options: Mapping[str, Any] | None = None,
           model_options: Mapping[str, Any] | None = None, trainer: Mapping[str, Any] | None = None,
           callbacks: Sequence | None = None, output_dir: str | os.PathLike = "ts_neuralode_fit",
           tracking: bool = True, tracking_uri: str | None = None, experiment_name: str | None = None,
           run_name: str | None = None, seed: int = 0, budget: Any = DEFAULT_TRIALS, metric: str = DEFAULT_METRIC,
           space: Sequence[Param] | None = None, storage: str | None = None, study_name: str | None = None,
           pruner=None, enqueue: Sequence[Mapping[str, Any]] | None = None, patience: int | None = None,
           progress: bool | None = None) -> SearchResult:
    """Run trials until the budget is spent (see the module docstring); returns the :class:`SearchResult`.

    Args as :func:`fit_auto`; ``enqueue``: configurations to try first (``{"model.model": "ode_rnn", "model.lr":
    0.01}``; options not given are sampled)."""
    _require_optuna()
    budget = Budget.coerce(budget)
    space = check_space(SEARCH_SPACE if space is None else space)
    out = Path(output_dir)
    fixed = _fixed_options(data_options, model_options, trainer)
    path = _prepare_data(data, out)
    defaults = {f"trainer.{k}": v for k, v in TRIAL_TRAINER.items()}
    if not tracking:
        defaults["trainer.logger"] = False
    epochs = int(fixed.get("trainer.max_epochs", DEFAULT_EPOCHS))
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))
    settings = {"data": _data_digest(path), "fixed": fixed, "metric": metric, "seed": seed,
                "defaults": {k: v for k, v in defaults.items() if k != "trainer.logger"},  # tracking may differ
                "space": [repr(p) for p in space]}
    storage_obj, study, created = _open_study(storage, study_name, pruner, settings)
    track = _Tracking(tracking, tracking_uri, experiment_name, run_name)
    parent = track.parent(study, created, {"budget_trials": budget.trials, "budget_time_s": budget.time,
                                           "metric": metric, "study_name": study.study_name,
                                           "storage": storage or "memory", "data": str(path),
                                           **{f"fixed/{k}": v for k, v in fixed.items()}})
    if created:  # a resumed study has them queued (or done) already
        for params in enqueue or ():
            study.enqueue_trial(dict(params))
    study_id = storage_obj.get_study_id_from_name(study.study_name)
    deadline = None if budget.time is None else time.monotonic() + budget.time
    n_startup = 10 if budget.trials is None else min(10, max(2, budget.trials // 2))
    done_before = sum(1 for t in study.get_trials(deepcopy=False) if "outcome" in t.user_attrs)
    bar = _Progress(progress, budget.trials, min(done_before, budget.trials or done_before))
    result = SearchResult(study, parent, "trials", settings=settings)
    status = "FINISHED"
    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                result.stop_reason = "time"
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
            trial = _claim(study, storage_obj, study_id, budget.trials)
            if trial is None:
                break
            study.sampler = optuna.samplers.TPESampler(seed=(int(seed) * 100_003 + trial.number) % 2**32,
                                                       n_startup_trials=n_startup)
            _run_trial(trial, study, storage_obj, study_id, space, fixed, defaults, path, out, callbacks, track,
                       parent, seed, metric, deadline, patience, bar, result)
            result.ran.append(trial.number)
    except BaseException:
        status = "KILLED"
        raise
    finally:
        bar.close()
        if status == "KILLED":
            track.end(parent, "KILLED")
    return result


def _claim(study, storage, study_id: int, budget_trials: int | None):
    """The next trial of the study within the trials budget, or None when the budget is spent. Trials are numbered
    by the storage in one transaction, so workers racing for the last trial agree: the one whose trial ranks past
    the budget puts it back in the queue (a resume with a larger budget runs it first)."""
    if budget_trials is not None and sum(_counts(t) for t in study.get_trials(deepcopy=False)) >= budget_trials:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize": we beat ourselves
        trial = study.ask()
    if budget_trials is None:
        return trial
    rank = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and _counts(t))
    if rank >= budget_trials:
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(tid, optuna.trial.TrialState.WAITING)
        return None
    return trial


def _run_trial(trial, study, storage, study_id, space, fixed, defaults, path, out, callbacks, track, parent, seed,
               metric, deadline, patience, bar, result) -> None:
    States = optuna.trial.TrialState
    n = trial.number
    searched, options = sample(trial, space, fixed)
    full = {**defaults, **options}
    label = describe(searched)
    trial.set_user_attr("options", json.loads(json.dumps(full, default=str)))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    tdir = out / "trials" / f"trial_{n:04d}"
    if tdir.exists():  # an earlier, interrupted attempt of this number (or of a stale run)
        shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True, exist_ok=True)
    groups = nest(full)
    model = groups["model"].pop("model", "latent_ode")
    cb = TrialCallback(trial, metric, deadline=deadline, patience=patience, parent_run_id=parent,
                       tags={"ts_neuralode.trial": str(n), "ts_neuralode.study": study.study_name})
    tid = storage.get_trial_id_from_study_id_trial_number(study_id, n)
    started = time.monotonic()
    fc, reason = None, None
    try:
        with _Heartbeat(storage, tid), _Quiet(tdir / "log.txt"):
            fc = fit(str(path), model, data_options=groups["data"], model_options=groups["model"],
                     trainer=groups["trainer"], callbacks=[cb, *(callbacks or [])], output_dir=tdir,
                     tracking=track.enabled, tracking_uri=track.uri, experiment_name=track.experiment_name,
                     run_name=f"trial_{n:04d}", log_model=False, seed=seed)
    except (ConfigError, DataError) as err:  # the user's options or data: every trial would fail the same way
        _abandon(study, trial, track, cb, retry=False)
        raise _user_error(err, n, label) from err
    except (TSNeuralODEError, SolverError) as err:  # NaN loss, a solver that cannot finish: this configuration fails
        reason = " ".join(str(err).split())[:500]
    except Exception as err:  # a bug met by one configuration: recorded (traceback in the trial's log), search goes on
        import traceback

        message = getattr(err, "ts_neuralode_message", None)  # TrainingGuard's line for a failing solve
        if message is None:
            with open(tdir / "log.txt", "a", encoding="utf-8") as log:
                traceback.print_exc(file=log)
        reason = (" ".join(str(message).split())[:500] if message is not None else
                  f"{type(err).__name__}: {' '.join(str(err).split())[:400]} (traceback in {tdir / 'log.txt'})")
    except BaseException:  # Ctrl-C (Lightning turns it into SystemExit), SIGTERM: run it again when resumed
        _abandon(study, trial, track, cb, retry=True)
        raise
    seconds = time.monotonic() - started
    shutil.rmtree(tdir / "checkpoints", ignore_errors=True)  # the model directory holds the best weights
    trial.set_user_attr("seconds", round(seconds, 3))
    trial.set_user_attr("epochs", len(cb.values))
    if cb.run_id:
        trial.set_user_attr("mlflow_run_id", cb.run_id)
    if fc is not None:
        trial.set_user_attr("model_dir", str(Path(fc.fit_info["model_dir"]).resolve()))
        trial.set_user_attr("monitor", fc.fit_info.get("monitor"))
        trial.set_user_attr("best_score", fc.fit_info.get("best_score"))
    if reason is None and cb.pruned:
        outcome, state = "pruned", States.PRUNED
    elif reason is None and math.isfinite(cb.best):
        outcome, state = "complete", States.COMPLETE
        trial.set_user_attr("best_epoch", cb.best_epoch)
    else:
        outcome, state = "failed", States.FAIL
        reason = reason or ("stopped by the time budget before its first validation" if cb.stopped_by_time else
                            f"no finite {metric}")
        trial.set_user_attr("reason", reason)
    if cb.stopped_by_time:
        trial.set_user_attr("stopped_by_time", True)
    trial.set_user_attr("outcome", outcome)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.tell(trial, cb.best if state == States.COMPLETE else None, state=state)
    track.tag(cb.run_id, {"ts_neuralode.outcome": outcome},
              {"trial_value": cb.best} if state == States.COMPLETE else None)
    best = result.best(1)
    best_txt = f"best {best[0].value:.4g} (trial {best[0].number})" if best else "no complete trial yet"
    if outcome == "complete":
        what = f"{metric}={cb.best:.4g} at epoch {cb.best_epoch}"
    elif outcome == "pruned":
        what = f"pruned after epoch {cb.values and len(cb.values) - 1}"
    else:
        what = f"failed: {reason}"
    done = len(result.trials())
    of = "" if bar.total is None else f"/{bar.total}"
    bar.trial(f"[{done}{of}] trial {n} {label}: {what} in {seconds:.1f}s; {best_txt}", best_txt)


def _abandon(study, trial, track, cb, retry: bool) -> None:
    """Fail an interrupted trial without an outcome (it does not use the budget) and, with ``retry``, queue its
    parameters to run again first when the search resumes."""
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if retry:
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, frozen)
    track.tag(cb.run_id, {"ts_neuralode.outcome": "interrupted"})
    track.end(cb.run_id, "KILLED")


def _user_error(err: Exception, n: int, label: str) -> Exception:
    return type(err)(f"model auto, trial {n} ({label}): {' '.join(str(err).split())}")


# -- refit and result ---------------------------------------------------------------------------------------
def refit_trial(trial, data_path: Path, output_dir: Path, *, callbacks: Sequence | None = None, track: _Tracking,
          parent: str | None, seed: int, log_model: bool, forecaster_cls: type[Predictor] = Predictor):
    """The trial's configuration trained on train + validation (no validation split; ``data.train_end`` dropped)
    for the trial's best number of epochs; returns the fitted ``forecaster_cls``."""

    full = dict(trial.user_attrs["options"])
    full["data.val_fraction"] = 0.0
    full.pop("data.train_end", None)
    full["trainer.max_epochs"] = int(trial.user_attrs.get("best_epoch", 0)) + 1
    full["trainer.limit_val_batches"] = 0  # nothing left to validate on
    groups = nest(full)
    model = groups["model"].pop("model", "latent_ode")
    rdir = output_dir / "refit" / f"trial_{trial.number:04d}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True, exist_ok=True)
    cb = TrialCallback(None, parent_run_id=parent, tags={"ts_neuralode.refit_of_trial": str(trial.number)})
    with _Quiet(rdir / "log.txt"):
        fc = fit(str(data_path), model, data_options=groups["data"], model_options=groups["model"],
                 trainer=groups["trainer"], callbacks=[cb, *(callbacks or [])], output_dir=rdir,
                 tracking=track.enabled, tracking_uri=track.uri, experiment_name=track.experiment_name,
                 run_name=f"refit_trial_{trial.number:04d}", log_model=log_model, seed=seed,
                 forecaster_cls=forecaster_cls)
    shutil.rmtree(rdir / "checkpoints", ignore_errors=True)
    return fc


def fit_auto(data: Any, *, data_options: Mapping[str, Any] | None = None,
             model_options: Mapping[str, Any] | None = None, trainer: Mapping[str, Any] | None = None,
             callbacks: Sequence | None = None, output_dir: str | os.PathLike = "ts_neuralode_fit",
             tracking: bool = True, tracking_uri: str | None = None, experiment_name: str | None = None,
             run_name: str | None = None, log_model: bool = True, seed: int = 0, budget: Any = DEFAULT_TRIALS,
             metric: str = DEFAULT_METRIC, space: Sequence[Param] | None = None, ensemble: int = 1,
             refit: bool = True, storage: str | None = None, study_name: str | None = None, pruner=None,
             enqueue: Sequence[Mapping[str, Any]] | None = None, patience: int | None = None,
             progress: bool | None = None, forecaster_cls: type[Predictor] = Predictor):
    """Search, then return the winner refitted (a Forecaster) or the top ``ensemble`` (an EnsembleForecaster).

    Args:
        data, data_options, model_options, trainer, callbacks, output_dir, tracking, tracking_uri, experiment_name,
            run_name, log_model, seed: as :meth:`Forecaster.fit` (the options given are fixed, not searched;
            ``data_options`` needs the forecast ``horizon``; ``trainer.max_epochs`` (default 20) bounds each trial).
        budget: trials of the study (an int), a wall time for this call's search (``"30min"``), or both
            (``{"trials": 20, "time": "1h"}``); default 20 trials.
        metric: the validation metric to minimise (``val_mae``; ``val_crps``, ``val_mse`` … as logged by the fit).
        space: the search space (default :data:`~ts_neuralode.api.model_choice_space.SEARCH_SPACE`).
        ensemble: keep the top ``k`` trials as a mixture (1: the single best model).
        refit: train the chosen configuration(s) again on train + validation for the best trial's epochs (False:
            return the trials' own models, trained without the validation horizon).
        storage, study_name: the Optuna storage URL (``sqlite:///study.db``, ``postgresql://…``; None: in memory)
            and the study in it: the same pair resumes a search and lets several workers share it.
        pruner: an Optuna pruner (default: median rule after 3 trials and a quarter of the epochs).
        enqueue: configurations to try first (``[{"model.model": "ode_rnn"}]``).
        patience: stop a trial after this many validations without improvement (None: run all epochs).
        progress: None: a bar on a terminal, one line per trial otherwise; False: silent.
    """
    _require_optuna()
    if not isinstance(ensemble, int) or isinstance(ensemble, bool) or ensemble < 1:
        raise ConfigError(f"ensemble={ensemble!r} must be an integer >= 1 (the number of best trials to mix)")
    out = Path(output_dir)
    result = search(data, data_options=data_options, model_options=model_options, trainer=trainer,
                    callbacks=callbacks, output_dir=out, tracking=tracking, tracking_uri=tracking_uri,
                    experiment_name=experiment_name, run_name=run_name, seed=seed, budget=budget, metric=metric,
                    space=space, storage=storage, study_name=study_name, pruner=pruner, enqueue=enqueue,
                    patience=patience, progress=progress)
    return finish(result, data, out, ensemble=ensemble, refit=refit, callbacks=callbacks, tracking=tracking,
                  tracking_uri=tracking_uri, experiment_name=experiment_name, seed=seed, log_model=log_model,
                  forecaster_cls=forecaster_cls)


def finish(result: SearchResult, data: Any, output_dir: Path, *, ensemble: int = 1, refit: bool = True,
           callbacks: Sequence | None = None, tracking: bool = True, tracking_uri: str | None = None,
           experiment_name: str | None = None, seed: int = 0, log_model: bool = True,
           forecaster_cls: type[Predictor] = Predictor):
    """The search's result as a model: the best ``ensemble`` trials, refitted or loaded (as ``forecaster_cls``),
    saved under ``output_dir/model``."""

    chosen = result.best(ensemble)
    n = {k: len(result.trials(k)) for k in ("complete", "pruned", "failed")}
    if not chosen:
        raise TrainingError(f"model auto: no trial completed ({n['pruned']} pruned, {n['failed']} failed; reasons in "
                            f"{output_dir / 'trials'}/*/log.txt); raise the budget or trainer.max_epochs")
    track = _Tracking(tracking, tracking_uri, experiment_name, None)
    parent = result.parent_run_id
    path = _prepare_data(data, output_dir) if not isinstance(data, pd.DataFrame) else output_dir / "data.csv"
    members = []
    for t in chosen:
        if refit:
            members.append(refit_trial(t, path, output_dir, callbacks=callbacks, track=track, parent=parent,
                                              seed=seed, log_model=log_model, forecaster_cls=forecaster_cls))
        else:
            model_dir = t.user_attrs.get("model_dir")
            if not model_dir or not Path(model_dir).is_dir():
                raise ConfigError(f"model auto: trial {t.number}'s model directory {model_dir} is not on this "
                                  "machine (another worker ran it); use refit=True")
            members.append(forecaster_cls.load(model_dir))
    final = members[0] if len(members) == 1 else EnsembleForecaster(members)
    model_dir = output_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    final.save(model_dir)
    best = chosen[0]
    info = {"model_dir": str(model_dir), "study_name": result.study.study_name, "best_trial": best.number,
            "best_value": best.value, "metric": result.settings.get("metric"), "params": dict(best.params),
            "members": [t.number for t in chosen], "trials": n, "stop_reason": result.stop_reason,
            "parent_run_id": parent, "refit": bool(refit),
            "run_id": (members[0].fit_info or {}).get("run_id") if refit and len(members) == 1 else None,
            "tracking_uri": track.uri}
    final.fit_info = info
    if track.enabled and parent is not None:
        track.tag(parent, {"ts_neuralode.best_trial": best.number, "ts_neuralode.members": info["members"]},
                  {"best_value": best.value, "trials_complete": n["complete"], "trials_pruned": n["pruned"],
                   "trials_failed": n["failed"]})
        if len(members) > 1 and log_model:
            with contextlib.suppress(Exception):
                track.client.log_artifacts(parent, str(model_dir), "model")
        track.end(parent, "FINISHED")
    return final


def summary(result: SearchResult) -> str:
    """One line per finished trial (number, outcome, value, configuration) — what ``--worker`` prints."""
    buf = io.StringIO()
    for t in result.trials():
        value = "" if t.value is None else f" {t.value:.4g}"
        buf.write(f"trial {t.number}: {t.user_attrs['outcome']}{value} {describe(t.params)}\n")
    return buf.getvalue()


__all__ = ["Budget", "DEFAULT_METRIC", "SearchResult", "TrialCallback", "finish", "fit_auto", "refit_trial", "search",
           "summary"]

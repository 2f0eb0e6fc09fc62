"""The automatic model choice's Optuna storage: opened from a URL (in memory, sqlite, PostgreSQL), the heartbeat of a
running trial (a dead worker's trial is failed and run again), and the study whose settings a resume must match."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ts_neuralode.api.model_choice_study import ATTR, DEFAULT_STUDY, _counts, _fingerprint, _wait_attr
from ts_neuralode.errors import ConfigError

try:
    import optuna
except ImportError:  # pragma: no cover - optuna is a dependency; a broken install gets one line
    optuna = None

HEARTBEAT_S = 10  # a running trial records a heartbeat this often (RDB storages)
GRACE_S = 60  # a trial without one for this long is stale: its worker died; it is failed and run again


def open_storage(url: str | None):
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
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=retry,
                    **kwargs,
                )
        except Exception as err:  # sqlalchemy: bad URL, unreachable server, missing driver, a race
            if attempt < 3 and "://" in url and not isinstance(err, (ImportError, ValueError)):
                time.sleep(1.0 + attempt)
                continue
            first = " ".join(str(err).split())[:300]
            raise ConfigError(
                f"storage={url!r}: cannot open the Optuna storage ({first}); pass e.g. "
                "sqlite:///study.db or postgresql://user:pass@host/db"
            ) from err


class Heartbeat:
    """Records the trial's heartbeat every HEARTBEAT_S seconds while it runs (RDB storages)."""

    def __init__(self, storage, trial_id: int | None) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = None

    def __enter__(self):
        if (
            self.trial_id is not None
            and hasattr(self.storage, "record_heartbeat")
            and self.storage.get_heartbeat_interval()
        ):
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


def open_study(storage_url, study_name, pruner, settings):
    """The study ``study_name`` in the storage at ``storage_url``: created with the search's settings, or loaded and
    checked to have been started with the same ones (ConfigError, one line, naming the options that differ).
    Returns (storage, study, created)."""
    storage = open_storage(storage_url)
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
            raise ConfigError(
                f"study {name!r} at {storage_url} was not made by the model choice; pass another study_name"
            )
        if stored != fp:
            old = study.user_attrs.get(f"{ATTR}.settings") or {}
            new = json.loads(json.dumps(settings, default=str))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"study {name!r} at {storage_url} was started with other settings ({', '.join(diff)} "
                "differ); resume it with the same data and options, or pass another study_name"
            )
    return storage, study, created


def next_starting_point(study, points: Sequence[Mapping[str, Any]], budget_trials: int | None) -> None:
    """Queue the next of ``points`` when the study has fewer trials than points, none waiting, and budget left."""
    trials = study.get_trials(deepcopy=False)
    if len(trials) >= len(points) or any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return
    if budget_trials is not None and sum(_counts(t) for t in trials) >= budget_trials:
        return
    study.enqueue_trial(dict(points[len(trials)]))


def claim_trial(study, storage, study_id: int, budget_trials: int | None):
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


def abandon_trial(study, trial, track, cb, retry: bool) -> None:
    """Fail an interrupted trial without an outcome (it does not use the budget) and, with ``retry``, queue its
    parameters to run again first when the search resumes."""
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if retry:
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, frozen)
    track.tag(cb.run_id, {"ts_neuralode.outcome": "interrupted"})
    track.end(cb.run_id, "KILLED")


__all__ = [
    "HEARTBEAT_S",
    "GRACE_S",
    "open_storage",
    "Heartbeat",
    "open_study",
    "next_starting_point",
    "claim_trial",
    "abandon_trial",
]

"""The automatic model choice: ``Forecaster.fit(data, "auto", budget=...)`` / ``ts-neuralode fit --model auto``.

It searches the model families (latent ODE, ODE-RNN, GRU-ODE) × evolutions (ODE, GRU / coupling / ResNet flow)
and their key options (:data:`ts_neuralode.api.model_choice_space.SEARCH_SPACE`, a declared table) with Optuna, on the
forecast task's **time split**: every trial trains on each series' history before its last ``horizon`` and is
scored on that last horizon (``data.train_end`` moves the cut to one time for every series). The score is the
validation metric (``val_mae`` by default: comparable across families, unlike their losses), its best epoch.
Where fewer than 10 series validate, a complete trial is also fitted and scored with its validation one and two
horizons earlier, and ranked by the geometric mean of its folds (``folds``: :mod:`.model_choice_folds`).

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

import inspect
import json
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ts_neuralode.api.model_choice_bases import trend_is_searched
from ts_neuralode.api.model_choice_finish import (
    _user_error,
    finish,
    fit_configuration,
    refit_trial,
    summary,
    validation_choices,
)
from ts_neuralode.api.model_choice_folds import combined, fold_count, fold_values
from ts_neuralode.api.model_choice_runs import TrialCallback, _Progress, _Quiet, _Tracking
from ts_neuralode.api.model_choice_space import (
    Param,
    check_space,
    default_space,
    describe,
    sample,
    searches_trend,
    starting_points,
)
from ts_neuralode.api.model_choice_storage import Heartbeat, abandon_trial, claim_trial, next_starting_point, open_study
from ts_neuralode.api.model_choice_study import (
    DEFAULT_EPOCHS,
    DEFAULT_METRIC,
    DEFAULT_TRIALS,
    Budget,
    SearchResult,
    _data_digest,
    _fixed_options,
    _prepare_data,
    _require_optuna,
    _Search,
    choice_table,
    gated_value,
    log_scale_applies,
    resolve_season,
)
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.errors import ConfigError, DataError, SolverError, TSNeuralODEError

try:
    import optuna
except ImportError:  # pragma: no cover - optuna is a dependency; a broken install gets one line
    optuna = None

#: trainer options of every trial unless the user sets them
TRIAL_TRAINER = {
    "max_epochs": DEFAULT_EPOCHS,
    "gradient_clip_val": 1.0,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
}


# -- the search ---------------------------------------------------------------------------------------------
def search(
    data: Any,
    *,
    data_options: Mapping[str, Any] | None = None,
    model_options: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    callbacks: Sequence | None = None,
    output_dir: str | os.PathLike = "ts_neuralode_fit",
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
    seed: int = 0,
    budget: Any = DEFAULT_TRIALS,
    metric: str = DEFAULT_METRIC,
    space: Sequence[Param] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner=None,
    enqueue: Sequence[Mapping[str, Any]] | None = None,
    patience: int | None = None,
    progress: bool | None = None,
    folds: int | str = "auto",
) -> SearchResult:
    """Run trials until the budget is spent (see the module docstring); returns the :class:`SearchResult`.

    Args:
        data: a DataFrame or a CSV / Parquet path, as :meth:`Forecaster.fit`.
        data_options: ``--data.*`` options, fixed for every trial (not searched); needs the forecast ``horizon``.
        model_options: ``--model.*`` options, fixed for every trial (not searched).
        trainer: ``--trainer.*`` options, fixed for every trial; ``max_epochs`` (default 20) bounds each trial.
        callbacks: extra Lightning callbacks of every trial and refit.
        output_dir: the trials, the refits and the model directory (``<output_dir>/model``).
        tracking: record the search in MLflow (a parent run, a child run per trial and refit).
        tracking_uri: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
        experiment_name: MLflow experiment (None: ``ts_neuralode``).
        run_name: MLflow name of the search's parent run.
        seed: seed of the sampler and of every trial's fit.
        budget: trials of the study (an int), a wall time for this call's search (``"30min"``), or both
            (``{"trials": 20, "time": "1h"}``); default 20 trials.
        metric: the validation metric to minimise (``val_mae``; ``val_crps``, ``val_mse`` … as logged by the fit).
        space: the search space (default :func:`~ts_neuralode.api.model_choice_space.default_space`:
            :data:`~ts_neuralode.api.model_choice_space.SEARCH_SPACE`, and the log scale for positive seasonal data).
        storage: the Optuna storage URL (``sqlite:///study.db``, ``postgresql://…``; None: in memory): the same
            storage and study name resume a search and let several workers share it.
        study_name: the study in the storage (None: ``ts_neuralode_auto``).
        pruner: an Optuna pruner (default: median rule after 3 trials and a quarter of the epochs).
        enqueue: configurations to try first (``[{"model.model": "ode_rnn"}]``); None: the package's
            :func:`~ts_neuralode.api.model_choice_space.starting_points`, ``[]``: none.
        patience: stop a trial after this many validations without improvement (None: run all epochs).
        progress: None: a bar on a terminal, one line per trial otherwise; False: silent.
        folds: backtest folds scoring each complete trial (:mod:`ts_neuralode.api.model_choice_folds`): ``"auto"``
            (3 where fewer than 10 series validate and the history has room, else 1) or an integer.
    """
    _require_optuna()
    budget = Budget.coerce(budget)
    out = Path(output_dir)
    fixed = _fixed_options(data_options, model_options, trainer)
    path = _prepare_data(data, out)
    table = choice_table(fixed, path)
    fixed, season_line = resolve_season(fixed, path, seed, table)
    log_scale = space is None and "data.scaler" not in fixed and log_scale_applies(fixed, table)
    trend, trend_line = trend_is_searched(fixed, table, seed) if space is None else (True, None)
    space = check_space(default_space(log_scale, trend) if space is None else space)
    n_folds, fold_line = fold_count(fixed, table, folds)
    del table
    for line in (season_line, trend_line, fold_line):
        if line is not None and progress is not False:
            print(f"model auto: {line}", file=sys.stderr)
    if log_scale and progress is not False:
        print("model auto: every value to forecast is positive: the log scale is searched too", file=sys.stderr)
    defaults = {f"trainer.{k}": v for k, v in TRIAL_TRAINER.items()}
    if not tracking:
        defaults["trainer.logger"] = False
    epochs = int(fixed.get("trainer.max_epochs", DEFAULT_EPOCHS))
    if pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))
    settings = {
        "data": _data_digest(path),
        "fixed": fixed,
        "metric": metric,
        "seed": seed,
        "defaults": {k: v for k, v in defaults.items() if k != "trainer.logger"},  # tracking may differ
        "space": [repr(p) for p in space],
        "folds": n_folds,
    }
    storage_obj, study, created = open_study(storage, study_name, pruner, settings)
    track = _Tracking(tracking, tracking_uri, experiment_name, run_name)
    parent = track.parent(
        study,
        created,
        {
            "budget_trials": budget.trials,
            "budget_time_s": budget.time,
            "metric": metric,
            "study_name": study.study_name,
            "storage": storage or "memory",
            "data": str(path),
            **{f"fixed/{k}": v for k, v in fixed.items()},
        },
    )
    if created and enqueue is not None:  # a resumed study has them queued (or done) already
        for params in enqueue:
            study.enqueue_trial(dict(params))
    # the package's starting points go in one at a time, as trials are claimed: none is left waiting when the budget
    # ends first, and a resumed study (as many trials as points) has had them
    log_space = any(p.option == "data.scaler" for p in space)
    points = starting_points(fixed, log_space, searches_trend(space)) if enqueue is None else []
    study_id = storage_obj.get_study_id_from_name(study.study_name)
    deadline = None if budget.time is None else time.monotonic() + budget.time
    n_startup = 10 if budget.trials is None else min(10, max(2, budget.trials // 2))
    done_before = sum(1 for t in study.get_trials(deepcopy=False) if "outcome" in t.user_attrs)
    bar = _Progress(progress, budget.trials, min(done_before, budget.trials or done_before))
    result = SearchResult(study, parent, "trials", settings=settings)
    run = _Search(
        study,
        storage_obj,
        study_id,
        space,
        fixed,
        defaults,
        path,
        out,
        callbacks,
        track,
        parent,
        seed,
        metric,
        deadline,
        patience,
        bar,
        result,
        n_folds,
    )
    status = "FINISHED"
    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                result.stop_reason = "time"
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(study)
            next_starting_point(study, points, budget.trials)
            trial = claim_trial(study, storage_obj, study_id, budget.trials)
            if trial is None:
                break
            study.sampler = optuna.samplers.TPESampler(
                seed=(int(seed) * 100_003 + trial.number) % 2**32, n_startup_trials=n_startup
            )
            _run_trial(trial, run)
            result.ran.append(trial.number)
    except BaseException:
        status = "KILLED"
        raise
    finally:
        bar.close()
        if status == "KILLED":
            track.end(parent, "KILLED")
    return result


#: the defaults of :func:`search`'s options (what :func:`fit_auto` passes on to its finish too)
SEARCH_DEFAULTS = {
    name: p.default for name, p in inspect.signature(search).parameters.items() if p.default is not p.empty
}


def _run_trial(trial, run: _Search) -> None:
    """Run one claimed trial: fit its sampled options, record the outcome in the study, MLflow and the bar."""
    study, storage, metric, track, bar, result = run.study, run.storage, run.metric, run.track, run.bar, run.result
    States = optuna.trial.TrialState
    n = trial.number
    searched, options = sample(trial, run.space, run.fixed)
    full = {**run.defaults, **options}
    label = describe(searched)
    trial.set_user_attr("options", json.loads(json.dumps(full, default=str)))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    tdir = run.out / "trials" / f"trial_{n:04d}"
    if tdir.exists():  # an earlier, interrupted attempt of this number (or of a stale run)
        shutil.rmtree(tdir, ignore_errors=True)
    tdir.mkdir(parents=True, exist_ok=True)
    cb = TrialCallback(
        trial,
        metric,
        deadline=run.deadline,
        patience=run.patience,
        parent_run_id=run.parent,
        tags={"ts_neuralode.trial": str(n), "ts_neuralode.study": study.study_name},
    )
    tid = storage.get_trial_id_from_study_id_trial_number(run.study_id, n)
    started = time.monotonic()
    fc, reason = None, None
    try:
        with Heartbeat(storage, tid), _Quiet(tdir / "log.txt"):
            fc = fit_configuration(
                full,
                run.path,
                tdir,
                [cb, *(run.callbacks or [])],
                track,
                f"trial_{n:04d}",
                log_model=False,
                seed=run.seed,
            )
    except (ConfigError, DataError) as err:  # the user's options or data: every trial would fail the same way
        abandon_trial(study, trial, track, cb, retry=False)
        raise _user_error(err, n, label) from err
    except (TSNeuralODEError, SolverError) as err:  # NaN loss, a solver that cannot finish: this configuration fails
        reason = " ".join(str(err).split())[:500]
    except Exception as err:  # a bug met by one configuration: recorded (traceback in the trial's log), search goes on
        import traceback

        message = getattr(err, "ts_neuralode_message", None)  # TrainingGuard's line for a failing solve
        if message is None:
            with open(tdir / "log.txt", "a", encoding="utf-8") as log:
                traceback.print_exc(file=log)
        reason = (
            " ".join(str(message).split())[:500]
            if message is not None
            else f"{type(err).__name__}: {' '.join(str(err).split())[:400]} (traceback in {tdir / 'log.txt'})"
        )
    except BaseException:  # Ctrl-C (Lightning turns it into SystemExit), SIGTERM: run it again when resumed
        abandon_trial(study, trial, track, cb, retry=True)
        raise
    seconds = time.monotonic() - started
    shutil.rmtree(tdir / "checkpoints", ignore_errors=True)  # the model directory holds the best weights
    attrs: dict[str, Any] = {"seconds": round(seconds, 3), "epochs": len(cb.values)}
    if cb.run_id:
        attrs["mlflow_run_id"] = cb.run_id
    if fc is not None:
        attrs["model_dir"] = str(Path(fc.fit_info["model_dir"]).resolve())
        attrs["monitor"] = fc.fit_info.get("monitor")
        attrs["best_score"] = fc.fit_info.get("best_score")
        # what the trial measured on its validation windows, for the refit that has none (model_choice_finish)
        attrs["validation_choices"] = validation_choices(fc)
    if reason is None and cb.pruned:
        outcome, state = "pruned", States.PRUNED
    elif reason is None and math.isfinite(cb.best):
        outcome, state = "complete", States.COMPLETE
        attrs["best_epoch"] = cb.best_epoch
    else:
        outcome, state = "failed", States.FAIL
        reason = reason or (
            "stopped by the time budget before its first validation" if cb.stopped_by_time else f"no finite {metric}"
        )
        attrs["reason"] = reason
    # ranked as the returned model will forecast: with the correction weight chosen on validation
    value = gated_value(cb.best, metric, (fc.fit_info or {}).get("correction_gate") if fc is not None else None)
    gated = state == States.COMPLETE and value != cb.best
    folds_txt = ""
    # scored on earlier horizons too (model_choice_folds), unless the deadline stopped it (scored on the usual split
    # alone, as the budget's docstring says) or another worker has failed it meanwhile
    folds_now = state == States.COMPLETE and run.folds > 1 and not cb.stopped_by_time
    if folds_now and storage.get_trial(tid).state == States.RUNNING:
        with Heartbeat(storage, tid), _Quiet(tdir / "log.txt"):
            more, fold_reason, by_time = fold_values(
                full,
                run.folds,
                lambda opts, fdir, cbs: fit_configuration(
                    opts,
                    run.path,
                    fdir,
                    [*cbs, *(run.callbacks or [])],
                    _Tracking(False, None, None, None),
                    f"trial_{n:04d}_fold",
                    log_model=False,
                    seed=run.seed,
                ),
                metric,
                tdir,
                lambda: TrialCallback(None, metric, deadline=run.deadline, patience=run.patience),
            )
        seconds = time.monotonic() - started
        attrs["seconds"] = round(seconds, 3)
        if fold_reason is not None:
            outcome, state, reason = "failed", States.FAIL, fold_reason
            attrs["reason"] = reason
            attrs.pop("best_epoch", None)
        else:
            attrs["fold_values"] = [value, *more]
            folds_txt = f"; folds {'/'.join(f'{v:.4g}' for v in attrs['fold_values'])}"
            value = combined(attrs["fold_values"])
            folds_txt += f" -> {value:.4g}"
            if by_time:
                attrs["stopped_by_time"] = True
                folds_txt += " (the deadline came first)"
    if gated:
        attrs["value_as_trained"] = cb.best
    if cb.stopped_by_time:
        attrs["stopped_by_time"] = True
    attrs["outcome"] = outcome  # last: a trial with an outcome counts in the budget
    try:
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.tell(trial, value if state == States.COMPLETE else None, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        # another worker failed it while it ran (no heartbeat for GRACE_S seconds: a loaded machine) and queued it to
        # run again; that run counts, this one is dropped
        bar.note(f"trial {n} {label}: dropped after {seconds:.1f}s (another worker had failed it and queued it again)")
        return
    track.tag(
        cb.run_id,
        {"ts_neuralode.outcome": outcome},
        {"trial_value": value, **{f"fold_{i}_value": v for i, v in enumerate(attrs.get("fold_values", []))}}
        if state == States.COMPLETE
        else None,
    )
    best = result.best(1)
    best_txt = f"best {best[0].value:.4g} (trial {best[0].number})" if best else "no complete trial yet"
    if outcome == "complete":
        what = f"{metric}={cb.best:.4g} at epoch {cb.best_epoch}"
        if gated:
            fold0 = attrs.get("fold_values", [value])[0]
            what += f" (x{fold0 / cb.best:.3g} with the correction weight chosen on validation: {fold0:.4g})"
        what += folds_txt
    elif outcome == "pruned":
        what = f"pruned after epoch {cb.values and len(cb.values) - 1}"
    else:
        what = f"failed: {reason}"
    done = len(result.trials())
    of = "" if bar.total is None else f"/{bar.total}"
    bar.trial(f"[{done}{of}] trial {n} {label}: {what} in {seconds:.1f}s; {best_txt}", best_txt)


# -- refit and result ---------------------------------------------------------------------------------------


def fit_auto(
    data: Any,
    *,
    ensemble: int = 1,
    refit: bool = True,
    log_model: bool = True,
    forecaster_cls: type[Predictor] = Predictor,
    **options: Any,
):
    """Search, then return the winner refitted (a Forecaster) or the top ``ensemble`` (an EnsembleForecaster).
    ``options`` are those of :func:`search`, declared there: the fixed options, the budget, the storage, MLflow.

    Args:
        data: a DataFrame or a CSV / Parquet path, as :meth:`Forecaster.fit`.
        log_model: log the returned model directory to MLflow.
        ensemble: keep the top ``k`` trials as a mixture (1: the single best model); a trial whose validation
            metric is more than 1.2x the best one's is left out of it.
        refit: train the chosen configuration(s) again on train + validation for the best trial's epochs (False:
            return the trials' own models, trained without the validation horizon).
    """
    _require_optuna()
    if not isinstance(ensemble, int) or isinstance(ensemble, bool) or ensemble < 1:
        raise ConfigError(f"ensemble={ensemble!r} must be an integer >= 1 (the number of best trials to mix)")
    result = search(data, **options)
    given = {**SEARCH_DEFAULTS, **options}  # what the finish shares with the search
    return finish(
        result,
        data,
        Path(given["output_dir"]),
        ensemble=ensemble,
        refit=refit,
        callbacks=given["callbacks"],
        tracking=given["tracking"],
        tracking_uri=given["tracking_uri"],
        experiment_name=given["experiment_name"],
        seed=given["seed"],
        log_model=log_model,
        forecaster_cls=forecaster_cls,
    )


__all__ = [
    "Budget",
    "DEFAULT_METRIC",
    "SearchResult",
    "TrialCallback",
    "finish",
    "fit_auto",
    "refit_trial",
    "search",
    "summary",
]

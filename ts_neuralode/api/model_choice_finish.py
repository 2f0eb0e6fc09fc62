"""The end of the automatic model choice (:mod:`ts_neuralode.api.model_choice`): the best trial(s) of a search refitted
on train + validation for their best number of epochs (or loaded), one model or an ensemble, and the summary line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ts_neuralode.api.calibration import transfer_calibration
from ts_neuralode.api.correction_gate import window_model
from ts_neuralode.api.fitting import fit
from ts_neuralode.api.model_choice_ensemble import EnsembleForecaster
from ts_neuralode.api.model_choice_runs import TrialCallback, _Quiet, _Tracking
from ts_neuralode.api.model_choice_space import describe, nest
from ts_neuralode.api.model_choice_study import ENSEMBLE_WITHIN, SearchResult, _prepare_data
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.errors import ConfigError, TrainingError


def _user_error(err: Exception, n: int, label: str) -> Exception:
    return type(err)(f"model auto, trial {n} ({label}): {' '.join(str(err).split())}")


def validation_choices(fc) -> dict[str, Any]:
    """What a fit chose on its held-out validation windows (``ts_neuralode.api.export.calibrate_fitted``): the window
    model's correction weight (None without a base) and the conformal band calibration (None when it could not be
    fitted). JSON-able: a trial keeps it as a user attribute, for its refit."""
    wm = window_model(fc)
    return {
        "correction_weight": None if wm is None else float(wm.correction_scale.item()),  # type: ignore[operator]
        "calibration": json.loads(json.dumps(fc.calibration)) if fc.calibration is not None else None,
    }


def inherit_validation_choices(
    fc,
    choices: Mapping[str, Any] | None,
    trial_number: int,
    *,
    trial_dir: str | None = None,
    data: Any = None,
    forecaster_cls: type[Predictor] = Predictor,
) -> bool:
    """Give a refit ``fc`` (trained on train + validation, so without validation windows of its own: its correction
    weight would stay 1 and its bands uncalibrated) what its trial chose on the validation windows: the correction
    weight, and a band calibration. The calibration is made for the refit's own bands on the trial's windows, from
    the trial's held-out errors there (:func:`ts_neuralode.api.calibration.transfer_calibration`, with the trial's
    model from ``trial_dir`` and the history ``data``); where the trial's model is not on this machine (another
    worker ran it), the trial's factors are taken as they are. Returns whether anything was given."""
    if not choices:
        return False
    given = False
    wm = window_model(fc)
    weight = choices.get("correction_weight")
    if wm is not None and weight is not None:
        wm.set_correction_scale(float(weight))
        given = True
    cal = choices.get("calibration")
    if cal is None or getattr(fc, "calibration", None) is not None:
        return given
    own = None
    if trial_dir is not None and data is not None and Path(trial_dir).is_dir():
        own = transfer_calibration(fc, forecaster_cls.load(trial_dir), data, cal)
    base = own if own is not None else cal
    how = "the trial's errors over this model's band widths" if own is not None else "the trial's factors"
    what = f"held-out validation windows of trial {trial_number} (the same configuration before its refit): {how}"
    fc.calibration = {**base, "fitted_on": {**dict(base.get("fitted_on") or {}), "what": what}}
    return True


def fit_configuration(
    options: Mapping[str, Any],
    data_path: Path,
    out: Path,
    callbacks: Sequence,
    track: _Tracking,
    run_name: str,
    *,
    log_model: bool,
    seed: int,
    forecaster_cls: type[Predictor] = Predictor,
):
    """Train one configuration of the search (flat ``options``: ``data.*``, ``model.*`` with the family in
    ``model.model``, ``trainer.*``) on ``data_path`` into ``out``, tracked as MLflow run ``run_name`` of the search's
    experiment: the fit of a trial and of a refit."""
    groups = nest(options)
    model = groups["model"].pop("model", "latent_ode")
    return fit(
        str(data_path),
        model,
        data_options=groups["data"],
        model_options=groups["model"],
        trainer=groups["trainer"],
        callbacks=callbacks,
        output_dir=out,
        tracking=track.enabled,
        tracking_uri=track.uri,
        experiment_name=track.experiment_name,
        run_name=run_name,
        log_model=log_model,
        seed=seed,
        forecaster_cls=forecaster_cls,
    )


def refit_trial(
    trial,
    data_path: Path,
    output_dir: Path,
    *,
    callbacks: Sequence | None = None,
    track: _Tracking,
    parent: str | None,
    seed: int,
    log_model: bool,
    forecaster_cls: type[Predictor] = Predictor,
):
    """The trial's configuration trained on train + validation (no validation split; ``data.train_end`` dropped)
    for the trial's best number of epochs; returns the fitted ``forecaster_cls`` with the correction weight and band
    calibration its trial chose on the validation windows (:func:`inherit_validation_choices`)."""

    full = dict(trial.user_attrs["options"])
    full["data.val_fraction"] = 0.0
    full.pop("data.train_end", None)
    full["trainer.max_epochs"] = int(trial.user_attrs.get("best_epoch", 0)) + 1
    full["trainer.limit_val_batches"] = 0  # nothing left to validate on
    rdir = output_dir / "refit" / f"trial_{trial.number:04d}"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True, exist_ok=True)
    cb = TrialCallback(None, parent_run_id=parent, tags={"ts_neuralode.refit_of_trial": str(trial.number)})
    with _Quiet(rdir / "log.txt"):
        fc = fit_configuration(
            full,
            data_path,
            rdir,
            [cb, *(callbacks or [])],
            track,
            f"refit_trial_{trial.number:04d}",
            log_model=log_model,
            seed=seed,
            forecaster_cls=forecaster_cls,
        )
    shutil.rmtree(rdir / "checkpoints", ignore_errors=True)
    choices = trial.user_attrs.get("validation_choices")
    if inherit_validation_choices(
        fc,
        choices,
        trial.number,
        trial_dir=trial.user_attrs.get("model_dir"),
        data=data_path,
        forecaster_cls=forecaster_cls,
    ):
        fc.save(fc.fit_info["model_dir"])
    return fc


def finish(
    result: SearchResult,
    data: Any,
    output_dir: Path,
    *,
    ensemble: int = 1,
    refit: bool = True,
    callbacks: Sequence | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    seed: int = 0,
    log_model: bool = True,
    forecaster_cls: type[Predictor] = Predictor,
):
    """The search's result as a model: the best ``ensemble`` trials, refitted or loaded (as ``forecaster_cls``),
    saved under ``output_dir/model``."""

    chosen, left_out = result.ensemble(ensemble)
    if left_out:
        far = ", ".join(f"{t.number} ({t.value:.4g})" for t in left_out)
        print(
            f"model auto: ensemble of {len(chosen)}: trial{'s' if len(left_out) > 1 else ''} {far} left out, more "
            f"than {ENSEMBLE_WITHIN:g}x the best "
            f"trial's {result.settings.get('metric', 'metric')} ({chosen[0].value:.4g})",
            file=sys.stderr,
        )
    n = {k: len(result.trials(k)) for k in ("complete", "pruned", "failed")}
    if not chosen:
        raise TrainingError(
            f"model auto: no trial completed ({n['pruned']} pruned, {n['failed']} failed; reasons in "
            f"{output_dir / 'trials'}/*/log.txt); raise the budget or trainer.max_epochs"
        )
    track = _Tracking(tracking, tracking_uri, experiment_name, None)
    parent = result.parent_run_id
    path = _prepare_data(data, output_dir) if not isinstance(data, pd.DataFrame) else output_dir / "data.csv"
    members = []
    for t in chosen:
        if refit:
            members.append(
                refit_trial(
                    t,
                    path,
                    output_dir,
                    callbacks=callbacks,
                    track=track,
                    parent=parent,
                    seed=seed,
                    log_model=log_model,
                    forecaster_cls=forecaster_cls,
                )
            )
        else:
            model_dir = t.user_attrs.get("model_dir")
            if not model_dir or not Path(model_dir).is_dir():
                raise ConfigError(
                    f"model auto: trial {t.number}'s model directory {model_dir} is not on this "
                    "machine (another worker ran it); use refit=True"
                )
            members.append(forecaster_cls.load(model_dir))
    final = members[0] if len(members) == 1 else EnsembleForecaster(members)
    model_dir = output_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    final.save(model_dir)
    best = chosen[0]
    info = {
        "model_dir": str(model_dir),
        "study_name": result.study.study_name,
        "best_trial": best.number,
        "best_value": best.value,
        "metric": result.settings.get("metric"),
        "params": dict(best.params),
        "members": [t.number for t in chosen],
        "trials": n,
        "stop_reason": result.stop_reason,
        "parent_run_id": parent,
        "refit": bool(refit),
        "run_id": (members[0].fit_info or {}).get("run_id") if refit and len(members) == 1 else None,
        "tracking_uri": track.uri,
    }
    final.fit_info = info
    if track.enabled and parent is not None:
        track.tag(
            parent,
            {"ts_neuralode.best_trial": best.number, "ts_neuralode.members": info["members"]},
            {
                "best_value": best.value,
                "trials_complete": n["complete"],
                "trials_pruned": n["pruned"],
                "trials_failed": n["failed"],
            },
        )
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

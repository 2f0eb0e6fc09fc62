"""The automatic model choice (ts_neuralode.api.model_choice): search, pruning, budgets, resume, workers, MLflow,
ensemble."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback

from conftest import TEST_SEED, small_tensor_threads, subprocess_env
from ts_neuralode.api import model_choice, model_choice_storage
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.api.model_choice import Budget
from ts_neuralode.api.model_choice_ensemble import EnsembleForecaster
from ts_neuralode.api.model_choice_space import SEARCH_SPACE, choice, nest, sample, scale_duration
from ts_neuralode.cli import main
from ts_neuralode.data.generators import generate
from ts_neuralode.errors import ConfigError

DATA = {"horizon": 1.0, "layout": "padded", "batch_size": 8, "windows_per_series": 4}
MODEL = {"latent_dim": 4, "hidden_dim": 16, "eval_samples": 4, "iwae_samples": 1}
TRAINER = {"max_epochs": 2}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(small_tensor_threads())
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def series() -> pd.DataFrame:
    """8 periodic series x 60 irregular points (times 0..~6): the last horizon (1.0) of each validates."""
    return generate("periodic", n_series=8, n_points=60, seed=0)


def test_budget_and_space_declarations():
    assert Budget.coerce(5) == Budget(trials=5, time=None)
    assert Budget.coerce("2min") == Budget(trials=None, time=120.0)
    assert Budget.coerce({"trials": 3, "time": "1h"}) == Budget(trials=3, time=3600.0)
    for bad in (0, {"trials": None, "time": None}, True, {"runs": 3}, "soon"):
        with pytest.raises(ConfigError):
            Budget.coerce(bad)
    assert scale_duration("2D", 2) == "4D" and scale_duration(1.5, 4) == 6.0
    # every family x evolution is in the table, and the user's fixed options are not searched
    table = {p.option: p for p in SEARCH_SPACE}
    assert set(table["model.model"].values) == {"latent_ode", "ode_rnn", "gru_ode"}
    assert set(table["model.evolution.kind"].values) == {"ode", "gru_flow", "coupling_flow", "resnet_flow"}
    study = optuna.create_study()
    searched, options = sample(study.ask(), SEARCH_SPACE, {"model.evolution.kind": "ode", "data.horizon": "2D"})
    assert "model.evolution.kind" not in searched and "model.evolution.flow_layers" not in searched
    assert "model.evolution.method" in searched  # applies to the fixed kind
    k = searched["data.context_horizons"]
    assert options["data.context"] == (None if k is None else f"{2 * k:g}D")
    assert nest({"model.evolution.kind": "ode", "data.horizon": 2})["model"] == {"evolution": {"kind": "ode"}}


def test_cli_options_are_grouped(tmp_path):
    from ts_neuralode.cli.model_choice import _from_config, _grouped, _merge, wants_auto

    assert wants_auto(["--model", "auto", "--data.path", "x"]) and wants_auto(["--model=auto"])
    assert not wants_auto(["--model.model", "auto"]) and not wants_auto(["--config", "auto"])
    got = _grouped(
        [
            "--data.horizon",
            "2D",
            "--model.evolution.kind=ode",
            "--model.lr",
            "0.01",
            "--data.value_cols",
            "[a, b]",
            "--data.context",
            "null",
            "--trainer.max_epochs",
            "3",
        ]
    )
    assert got == {
        "data": {"horizon": "2D", "value_cols": ["a", "b"], "context": None},
        "model": {"evolution": {"kind": "ode"}, "lr": 0.01},
        "trainer": {"max_epochs": 3},
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  horizon: 1D\n  layout: padded\nmodel:\n  evolution:\n    method: rk4\n")
    merged = _merge(_from_config(str(cfg)), got)  # the command line wins
    assert merged["data"]["horizon"] == "2D" and merged["data"]["layout"] == "padded"
    assert merged["model"]["evolution"] == {"method": "rk4", "kind": "ode"}
    with pytest.raises(ConfigError, match="unknown option"):
        _grouped(["--bogus", "1"])
    with pytest.raises(ConfigError, match=r"did you mean --budget\.time or --budget\.trials for --budget\?"):
        _grouped(["--budget", "2"])


@pytest.mark.slow
def test_search_refits_the_winner_and_logs_child_runs(series, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fc = Forecaster.fit(
        series,
        "auto",
        data_options=DATA,
        model_options=MODEL,
        trainer=TRAINER,
        output_dir=tmp_path / "out",
        tracking_uri=uri,
        experiment_name="auto",
        budget=3,
        log_model=False,
    )
    info = fc.fit_info
    assert isinstance(fc, Forecaster)
    assert sum(info["trials"].values()) == 3 and info["trials"]["complete"] >= 1
    assert info["metric"] == "val_mae" and math.isfinite(info["best_value"])
    # the winner's configuration, refitted on train + validation for its best number of epochs
    best = info["params"]
    assert fc.hparams["model"] == best.get("model.model")
    refit_dir = tmp_path / "out" / "refit" / f"trial_{info['best_trial']:04d}"
    assert (refit_dir / "model" / "config.json").is_file()
    out = fc.predict(series, horizon=1.0, num_points=4)
    assert len(out) == 8 * 4 and np.isfinite(out[fc.name]).all()
    assert Forecaster.load(info["model_dir"]).name == fc.name
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("auto: [")]
    assert len(lines) == 3 and lines[-1].startswith("auto: [3/3] trial 2 "), lines  # one line per trial (no TTY)
    # MLflow: the search's parent run, each trial and the refit a child of it, with per-epoch metrics
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("auto")
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["ts_neuralode.kind"] == "model_choice"
    assert float(parent.data.metrics["best_value"]) == pytest.approx(info["best_value"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [r for r in children if "ts_neuralode.trial" in r.data.tags]
    refits = [r for r in children if "ts_neuralode.refit_of_trial" in r.data.tags]
    assert sorted(int(r.data.tags["ts_neuralode.trial"]) for r in trials) == [0, 1, 2]
    assert len(refits) == 1 and refits[0].data.tags["ts_neuralode.refit_of_trial"] == str(info["best_trial"])
    assert len(runs) == 1 + 3 + 1
    for r in trials:
        hist = client.get_metric_history(r.info.run_id, "epoch/val_mae")
        assert len(hist) >= 1 and all(np.isfinite(m.value) for m in hist)
    done = [r for r in trials if r.data.tags["ts_neuralode.outcome"] == "complete"]
    assert min(r.data.metrics["trial_value"] for r in done) == pytest.approx(info["best_value"])


@pytest.mark.slow
def test_pruning_stops_a_hopeless_trial(series, tmp_path):
    # two trials that learn, then one that cannot (learning rate 1e-7): the median rule stops it early
    space = (choice("model.model", ("ode_rnn",)), choice("model.lr", (0.03, 1e-7)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)  # from the second validation on
    result = model_choice.search(
        series,
        data_options=DATA,
        model_options={**MODEL, "lr_schedule": "step"},
        trainer={"max_epochs": 6},
        output_dir=tmp_path,
        tracking=False,
        budget=3,
        space=space,
        pruner=pruner,
        progress=False,
        seed=TEST_SEED,
        enqueue=[{"model.lr": 0.03}, {"model.lr": 0.03}, {"model.lr": 1e-7}],
    )
    trials = result.study.get_trials()
    assert [t.params["model.lr"] for t in trials] == [0.03, 0.03, 1e-7]
    assert [t.user_attrs["outcome"] for t in trials] == ["complete", "complete", "pruned"]
    hopeless = trials[2]
    assert hopeless.state == optuna.trial.TrialState.PRUNED
    assert hopeless.user_attrs["epochs"] < 6  # stopped once it fell behind the others at the same epoch
    assert trials[0].user_attrs["epochs"] == 6
    # Forecaster.fit's contract: the checkpoint's monitor and best score after the fit
    assert trials[0].user_attrs["monitor"] == "val_loss" and math.isfinite(trials[0].user_attrs["best_score"])


@pytest.mark.slow
def test_time_budget_stops_the_search(series, tmp_path):
    start = time.monotonic()
    result = model_choice.search(
        series,
        data_options=DATA,
        model_options=MODEL,
        trainer={"max_epochs": 500},
        output_dir=tmp_path,
        tracking=False,
        budget={"trials": 50, "time": 4},
        progress=False,
    )
    elapsed = time.monotonic() - start
    assert result.stop_reason == "time"
    assert 1 <= len(result.ran) < 50
    last = result.study.get_trials()[-1]
    assert last.user_attrs.get("stopped_by_time") and last.user_attrs["epochs"] < 500
    assert elapsed < 4 + 90, elapsed  # the deadline stops the running trial (setup and teardown on a busy machine)


def _counted(study) -> list:
    return [t for t in study.get_trials() if "outcome" in t.user_attrs]


@pytest.mark.slow
def test_resume_after_a_killed_worker_continues_the_study(series, tmp_path, monkeypatch):
    csv = tmp_path / "data.csv"
    series.to_csv(csv, index=False)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kw = dict(
        data_options=DATA,
        model_options=MODEL,
        trainer={"max_epochs": 4},
        output_dir=str(tmp_path / "out"),
        tracking=False,
        storage=storage,
        study_name="resume",
        progress=False,
    )
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from ts_neuralode.api import model_choice\n"
        f"model_choice.search({str(csv)!r}, budget=3, **{kw!r})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # kill the worker (no chance to clean up) once trial 1 reported an epoch
            time.sleep(0.5)
            assert proc.poll() is None, proc.stdout.read()
            try:
                trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
            except Exception:  # the study is not created yet
                continue
            if len(trials) >= 2 and trials[1].intermediate_values:
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
    assert trials[0].user_attrs["outcome"] == "complete"
    killed = trials[1]
    assert killed.state == optuna.trial.TrialState.RUNNING and "outcome" not in killed.user_attrs
    # its worker's heartbeat stopped: after the grace period (shortened here from 60 s) it is stale
    monkeypatch.setattr(model_choice_storage, "HEARTBEAT_S", 1)
    monkeypatch.setattr(model_choice_storage, "GRACE_S", 2)
    time.sleep(3)
    first_value = trials[0].value
    result = model_choice.search(str(csv), budget=3, **kw)
    trials = result.study.get_trials()
    assert trials[1].state == optuna.trial.TrialState.FAIL and "outcome" not in trials[1].user_attrs
    assert len(_counted(result.study)) == 3  # the budget counts the study's trials: 1 before the kill, 2 now
    assert result.ran == [2, 3]  # the killed trial's parameters first, then a new one; trial 0 kept
    assert trials[0].value == first_value
    assert trials[2].params == killed.params and trials[2].user_attrs["outcome"] in ("complete", "pruned")
    again = model_choice.search(str(csv), budget=3, **kw)
    assert again.ran == [] and len(_counted(again.study)) == 3  # nothing left to do


class _CtrlC(Callback):
    """Presses Ctrl-C at the end of the first epoch of trial ``n`` (Lightning turns it into SystemExit)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.calls += 1
        trial = next(c for c in trainer.callbacks if isinstance(c, model_choice.TrialCallback)).trial
        if self.calls == 1 and trial is not None and trial.number == self.n:  # None: a backtest fold's fit
            raise KeyboardInterrupt


def _two_trials(series, tmp_path, name: str, callback: Callback, progress: bool = False) -> str:
    """A 2-trial search of the small options on a sqlite storage, with ``callback`` in every trial; the storage URL."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    model_choice.search(
        series,
        data_options=DATA,
        model_options=MODEL,
        trainer=TRAINER,
        output_dir=tmp_path,
        tracking=False,
        budget=2,
        storage=storage,
        study_name=name,
        progress=progress,
        callbacks=[callback],
    )
    return storage


@pytest.mark.slow
def test_an_interrupted_trial_is_queued_to_run_again(series, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            _two_trials(series, tmp_path, "ctrl_c", _CtrlC(0))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    trials = optuna.load_study(study_name="ctrl_c", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert "outcome" not in trials[0].user_attrs  # interrupted: not counted in the budget
    assert trials[1].params == trials[0].params  # queued to run first when the search resumes


class _StaleElsewhere(Callback):
    """At the end of trial ``n``'s fit, fails it in the storage, as another worker's stale-trial check does when a
    running trial's heartbeat is GRACE_S seconds late (a loaded machine)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_fit_end(self, trainer, pl_module) -> None:
        trial = next(c for c in trainer.callbacks if isinstance(c, model_choice.TrialCallback)).trial
        if trial is not None and trial.number == self.n:  # None: a backtest fold's fit
            storage = trial.study._storage
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


@pytest.mark.slow
def test_a_trial_failed_by_another_worker_is_dropped_and_the_search_goes_on(series, tmp_path, capsys):
    """Its result is not recorded over the FAIL (Optuna refuses to update a finished trial: the worker used to exit
    with that error) and it does not count in the budget."""
    storage = _two_trials(series, tmp_path, "stale", _StaleElsewhere(0), progress=True)
    trials = optuna.load_study(study_name="stale", storage=storage).get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL and "outcome" not in trials[0].user_attrs
    assert len(_counted(optuna.load_study(study_name="stale", storage=storage))) == 2  # two others ran
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("auto: trial 0 ") and ": dropped after" in line for line in lines), lines


@pytest.mark.slow
def test_two_workers_share_one_storage(series, tmp_path):
    csv = tmp_path / "data.csv"
    series.to_csv(csv, index=False)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "fit",
        "--model",
        "auto",
        "--worker",
        "--data.path",
        str(csv),
        "--data.horizon",
        "1.0",
        "--data.layout",
        "padded",
        "--data.batch_size",
        "8",
        "--data.windows_per_series",
        "4",
        "--model.latent_dim",
        "4",
        "--model.hidden_dim",
        "16",
        "--model.eval_samples",
        "4",
        "--trainer.max_epochs",
        "2",
        "--budget.trials",
        "5",
        "--storage",
        storage,
        "--study_name",
        "shared",
        "--tracking",
        "false",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ts_neuralode.cli", *args, "--output_dir", str(tmp_path / f"w{i}")],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    failed = [f"worker {i} exited {p.returncode}:\n{outs[i][-4000:]}" for i, p in enumerate(procs) if p.returncode]
    if failed:  # the whole tail of each failing worker's output (an assert's repr cuts it)
        pytest.fail("\n".join(failed), pytrace=False)
    study = optuna.load_study(study_name="shared", storage=storage)
    counted = _counted(study)
    assert len(counted) == 5, [(t.number, t.state, t.user_attrs) for t in study.get_trials()]
    workers = {t.user_attrs["worker"] for t in counted}
    assert len(workers) == 2, workers  # both contributed
    assert sorted(t.number for t in counted) == list(range(5))
    assert all("worker ran trials" in o for o in outs)
    # the search is done: a final call only refits the best trial
    rc = main(["fit", "--model", "auto", *args[4:], "--output_dir", str(tmp_path / "final"), "--progress", "false"])
    assert rc == 0
    assert len(_counted(optuna.load_study(study_name="shared", storage=storage))) == 5
    assert (tmp_path / "final" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_ensemble_bands_come_from_the_mixture(series, tmp_path):
    # two members that agree on everything but the level: the same model fitted to y and to y + 100
    opts = dict(
        data_options={**DATA, "task": "forecast", "val_fraction": 0.0, "test_fraction": 0.0},
        model_options={**MODEL, "evolution": {"kind": "gru_flow"}},
        trainer={"max_epochs": 1},
        tracking=False,
    )
    a = Forecaster.fit(series, "ode_rnn", output_dir=tmp_path / "a", **opts)
    b = Forecaster.fit(series.assign(y=series["y"] + 1000.0), "ode_rnn", output_dir=tmp_path / "b", **opts)
    ens = EnsembleForecaster([a, b])
    kw = dict(horizon=1.0, num_points=3, num_samples=200)
    out = ens.predict(series, level=[50, 90], **kw)
    qa = a.predict(series, level=[], quantiles=[0.1, 0.5], **kw)
    qb = b.predict(series, level=[], quantiles=[0.5, 0.9], **kw)
    na, nb = a.name, b.name
    spread = float((qa[f"{na}-q-50"] - qa[f"{na}-q-10"]).abs().max())
    assert float((qb[nb] - qa[na]).min()) > 20 * spread  # the members do not overlap
    tol = 0.05 * spread + 1e-6
    np.testing.assert_allclose(out["ensemble"], (qa[na] + qb[nb]) / 2, atol=1e-4)
    # an equal mixture of two far-apart members: its q-quantile is member a's 2q-quantile below the gap and member
    # b's (2q - 1)-quantile above it; the 90% band runs from a's 10% to b's 90% quantile, the 50% one median to median
    np.testing.assert_allclose(out["ensemble-lo-90"], qa[f"{na}-q-10"], atol=tol)
    np.testing.assert_allclose(out["ensemble-hi-90"], qb[f"{nb}-q-90"], atol=tol)
    np.testing.assert_allclose(out["ensemble-lo-50"], qa[f"{na}-q-50"], atol=tol)
    np.testing.assert_allclose(out["ensemble-hi-50"], qb[f"{nb}-q-50"], atol=tol)
    assert float((out["ensemble-hi-90"] - out["ensemble-lo-90"]).min()) > 900  # wider than either member's band
    # saved and loaded as one model (Forecaster.load knows the directory), the same forecasts
    ens.save(tmp_path / "ens")
    back = Forecaster.load(tmp_path / "ens")
    assert isinstance(back, EnsembleForecaster) and len(back.members) == 2
    pd.testing.assert_frame_equal(back.predict(series, level=[50, 90], **kw), out)
    # backtest rows, scored against the observations with the baselines beside
    cv = back.cross_validation(series, horizon=1.0, n_windows=1, level=[90], num_samples=50)
    assert {"y", "ensemble", "ensemble-lo-90", "ensemble-hi-90", "locf", "mean"} <= set(cv.columns)
    assert len(cv) > 0 and np.isfinite(cv["ensemble"]).all()


def test_an_ensemble_keeps_only_trials_near_the_best():
    study = optuna.create_study()
    for value in (0.50, 0.40, 0.47, 2.0, 0.44):  # trials 0..4
        t = optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs={"outcome": "complete"})
        study.add_trial(t)
    result = model_choice.SearchResult(study, None, "trials")
    kept, left = result.ensemble(3)  # the top 3: 0.40, 0.44, 0.47, all within 1.2x of 0.40
    assert [t.number for t in kept] == [1, 4, 2] and left == []
    kept, left = result.ensemble(5, within=1.15)  # 0.47 > 1.15 x 0.40
    assert [t.number for t in kept] == [1, 4] and [t.number for t in left] == [2, 0, 3]
    assert [t.number for t in result.ensemble(1)[0]] == [1]


def test_auto_errors_are_one_line(series, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    series.to_csv(csv, index=False)
    rc = main(["fit", "--model", "auto", "--data.path", str(csv), "--tracking", "false"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "horizon" in err[0]
    with pytest.raises(ConfigError, match="budget applies only to model='auto'"):
        Forecaster.fit(series, "ode_rnn", budget=3, tracking=False, output_dir=tmp_path / "x")
    # a fit's own options in the wrong place: the group dict that takes them
    with pytest.raises(ConfigError, match=r"max_epochs is not an argument of its own; pass trainer=\{'max_epochs'"):
        Forecaster.fit(series, "ode_rnn", max_epochs=3, tracking=False, output_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match=r"pass model_options=\{'evolution': \{'method': \.\.\.\}\}"):
        Forecaster.fit(series, "ode_rnn", method="rk4", tracking=False, output_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="bogus is not an option"):
        Forecaster.fit(series, "ode_rnn", bogus=1, tracking=False, output_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="ensemble"):
        Forecaster.fit(series, "auto", data_options=DATA, ensemble=0, tracking=False, output_dir=tmp_path / "y")
    rc = main(
        [
            "fit",
            "--model",
            "auto",
            "--data.path",
            str(csv),
            "--data.horizon",
            "1",
            "--budget.trials",
            "1",
            "--bogus",
            "1",
            "--tracking",
            "false",
        ]
    )
    assert rc == 2 and "--bogus" in capsys.readouterr().err


def test_starting_points_follow_the_season():
    """The first trials: the ODE-RNN correcting the harmonic forecast with a season; without one, on the last value
    and on the trend line; in both cases then the level in global units (a season does not make a population's
    shared level useless: BXLator given a 12.5 period forecast at 0.485x the last value without this point, 0.192
    with it); every option they set is a value of the search space."""
    from ts_neuralode.api.model_choice_space import SEARCH_SPACE, starting_points

    with_season = starting_points({"data.horizon": "2D", "data.season": "24h"})
    without = starting_points({"data.horizon": 5})
    assert [p["model.base"] for p in with_season] == ["auto", "none"]
    assert with_season[1]["model.normalize"] == "none"
    assert [p["model.base"] for p in without][:2] == ["auto", "trend"]
    # then the level itself in the data's global units (a population of series sharing one process)
    assert len(without) == 3 and without[2]["model.base"] == "none" and without[2]["model.normalize"] == "none"
    space = {p.option: p for p in SEARCH_SPACE}
    for point in with_season + without:
        for option, value in point.items():
            p = space[option]
            assert value in p.values if p.kind == "choice" else p.low <= value <= p.high, (option, value)


def test_the_log_scale_is_a_starting_point_where_it_is_searched():
    """Positive seasonal values: the space searches ``data.scaler`` (standard / log) and the second starting point is
    the first on the log scale; not where the user fixed the scaler; a space with it but no season (a user's space)
    names the standard scale on every point."""
    from ts_neuralode.api.model_choice_space import LOG_SCALE, SEARCH_SPACE, default_space, starting_points

    assert default_space(False) == SEARCH_SPACE and LOG_SCALE not in SEARCH_SPACE
    assert default_space(True)[-1] == LOG_SCALE and "log" in LOG_SCALE.values
    season = {"data.horizon": "2D", "data.season": "24h"}
    points = starting_points(season, log_scale=True)
    # every point names its scaler: an option of the space a point leaves out would be sampled at random
    assert [p["data.scaler"] for p in points] == ["standard", "log", "standard"]
    assert points[1] == {**points[0], "data.scaler": "log"}
    assert all("data.scaler" not in p for p in starting_points({**season, "data.scaler": "standard"}, log_scale=True))
    assert [p["data.scaler"] for p in starting_points({"data.horizon": 5}, log_scale=True)] == ["standard"] * 3
    assert starting_points(season, log_scale=False) == starting_points(season)


def test_the_search_tries_the_log_scale_for_positive_seasonal_values_only(tmp_path):
    from ts_neuralode.api.model_choice_study import choice_table, log_scale_applies

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "unique_id": np.repeat(["a", "b"], 30),
            "ds": np.tile(np.arange(30.0), 2),
            "y": rng.uniform(1, 2, 60),
            "temp": rng.normal(-5, 1, 60),  # a past covariate may be negative: it is not forecast
        }
    )
    df.to_csv(path := tmp_path / "d.csv", index=False)
    season = {"data.horizon": 5, "data.season": 7, "data.past_cols": ["temp"]}
    assert log_scale_applies(season, choice_table(season, path))
    assert not log_scale_applies({**season, "data.season": None}, choice_table(season, path))  # no season
    assert not log_scale_applies(season, None)  # a Parquet folder: no table read
    df.loc[3, "y"] = 0.0
    df.to_csv(path, index=False)
    assert not log_scale_applies(season, choice_table(season, path))  # a value to forecast <= 0


def test_the_trend_base_is_searched_only_where_it_forecast_the_history_better_than_the_last_value(tmp_path):
    """The base screen: the trend through the last horizon, forecast from rolling origins of each series' history,
    against the last value. Noise around a level: the line extrapolates noise, not searched (no space entry, no
    starting point); growth with little noise: searched; a season or a base the user fixed: no screen."""
    from ts_neuralode.api.model_choice_bases import rolling_ratio, trend_is_searched
    from ts_neuralode.api.model_choice_space import default_space, searches_trend, starting_points
    from ts_neuralode.api.model_choice_study import choice_table

    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 60, (3, 50)), axis=1)  # 3 irregular series
    frame = lambda y: pd.DataFrame({"unique_id": np.repeat(["a", "b", "c"], 50), "ds": t.ravel(), "y": y.ravel()})  # noqa: E731
    fixed = {"data.horizon": 5}
    frame(10 + rng.normal(0, 1, t.shape)).to_csv(noise := tmp_path / "noise.csv", index=False)
    frame(2.0 * t + rng.normal(0, 0.5, t.shape)).to_csv(growth := tmp_path / "growth.csv", index=False)
    ratio, n = rolling_ratio(choice_table(fixed, noise), 5.0, 5.0, "trend")
    assert ratio > 1.1 and n >= 30, (ratio, n)  # 1.56 over 46 windows (1.26-1.37 with other seeds of the data)
    keep, line = trend_is_searched(fixed, choice_table(fixed, noise))
    assert not keep and "not searched" in line
    ratio, _ = rolling_ratio(choice_table(fixed, growth), 5.0, 5.0, "trend")
    assert ratio < 0.5, ratio  # 0.16: the last value misses the growth of a horizon (0.12-0.15 other seeds)
    assert trend_is_searched(fixed, choice_table(fixed, growth))[0]
    # nothing to screen: a season, a base the user fixed, a Parquet folder (no table)
    table = choice_table(fixed, noise)
    assert trend_is_searched({**fixed, "data.season": 7}, table) == (True, None)
    assert trend_is_searched({**fixed, "model.base": "trend"}, table) == (True, None)
    assert trend_is_searched(fixed, None) == (True, None)
    # ruled out: gone from the space and from the starting points
    assert searches_trend(default_space(False)) and not searches_trend(default_space(False, trend=False))
    assert [p["model.base"] for p in starting_points(fixed, trend=False)] == ["auto", "none"]


def test_the_refit_keeps_what_its_trial_chose_on_the_validation_windows(series, tmp_path):
    """The refit trains on train + validation, so it has no validation windows of its own: without its trial's
    choices its bands were left uncalibrated (BXLator: a 90% band covering 17% of the points, results/peers.md) and
    its correction weight reset to 1. It inherits the weight, and bands calibrated on its trial's windows from the
    trial's held-out errors over its own band widths (a refit's band can be wider or narrower than its trial's);
    the model directory keeps both."""
    from ts_neuralode.api.calibration import transfer_calibration
    from ts_neuralode.api.correction_gate import window_model
    from ts_neuralode.api.model_choice_finish import inherit_validation_choices

    data = {**DATA, "task": "forecast", "test_fraction": 0.0}
    fc = Forecaster.fit(
        series,
        "auto",
        data_options=data,
        model_options={"latent_dim": 4, "hidden_dim": 16},
        trainer={"max_epochs": 2},
        output_dir=tmp_path / "out",
        tracking=False,
        budget=1,
        log_model=False,
    )
    trial = Forecaster.load(tmp_path / "out" / "trials" / "trial_0000" / "model")
    assert trial.calibration is not None and window_model(trial) is not None  # the starting point: a window model
    assert fc.calibration is not None, "the refit's bands are uncalibrated"
    # the same windows, this model's widths (the identity: a model calibrated on itself gets its own factors back)
    assert fc.calibration["fitted_on"]["windows"] == trial.calibration["fitted_on"]["windows"]
    assert "trial 0" in fc.calibration["fitted_on"]["what"] and "band widths" in fc.calibration["fitted_on"]["what"]
    same = transfer_calibration(trial, trial, series, trial.calibration)
    for lv, f in trial.calibration["factors"].items():
        np.testing.assert_allclose(same["factors"][lv], f, rtol=1e-6)
    assert float(window_model(fc).correction_scale) == float(window_model(trial).correction_scale)
    back = Forecaster.load(fc.fit_info["model_dir"])
    assert back.calibration is not None and back.calibration["factors"] == fc.calibration["factors"]
    assert float(window_model(back).correction_scale) == float(window_model(trial).correction_scale)
    # where the trial's model is not on this machine (another worker ran it), its factors are taken as they are
    other = Forecaster.load(fc.fit_info["model_dir"])
    other.calibration = None
    choices = {"correction_weight": 0.0, "calibration": trial.calibration}
    assert inherit_validation_choices(other, choices, 0, trial_dir=str(tmp_path / "elsewhere"), data=series)
    assert other.calibration["factors"] == trial.calibration["factors"]
    assert other.calibration["fitted_on"]["what"].endswith("the trial's factors")
    # predict's default bands are the calibrated ones: stretched by the factors about the same midpoints
    kw = dict(horizon=1.0, num_points=3, num_samples=50, seed=0, level=[90])
    own, cal = back.predict(series, calibrated=False, **kw), back.predict(series, **kw)
    n = back.name
    np.testing.assert_allclose(cal[n], own[n])
    w_own = (own[f"{n}-hi-90"] - own[f"{n}-lo-90"]).to_numpy()
    w_cal = (cal[f"{n}-hi-90"] - cal[f"{n}-lo-90"]).to_numpy()
    f90, floor = np.asarray(back.calibration["factors"]["90"]), float(back.calibration["floors"]["90"])
    assert np.all(w_cal >= f90.min() * (w_own + 2 * floor) - 1e-6)
    assert np.all(w_cal <= f90.max() * (w_own + 2 * floor) + 1e-6)


def test_backtest_folds_where_few_series_validate(tmp_path):
    """One series validates on one horizon: a trial is also scored 1 and 2 horizons earlier where the history has
    room (each fold's training part at least half the usual split's, and a horizon long); many series, a user's
    train_end or a Parquet folder: one fold."""
    from ts_neuralode.api.model_choice_folds import combined, fold_count
    from ts_neuralode.api.model_choice_study import choice_table

    def table(n_series: int, span: float):
        t = np.linspace(0.0, span, 40)
        df = pd.DataFrame({"unique_id": np.repeat([f"s{i}" for i in range(n_series)], 40), "ds": np.tile(t, n_series)})
        df["y"] = np.sin(df["ds"])
        df.to_csv(path := tmp_path / f"d{n_series}_{span}.csv", index=False)
        return choice_table({"data.horizon": 1.0}, path)

    fixed = {"data.horizon": 1.0}
    k, line = fold_count(fixed, table(1, 20.0), "auto")
    assert k == 3 and "backtest folds: 3 (1 series validate" in line
    assert fold_count(fixed, table(12, 20.0), "auto") == (1, None)  # 12 horizons validate already
    assert fold_count(fixed, table(12, 20.0), 2)[0] == 2  # asked for
    assert fold_count(fixed, table(1, 4.5), "auto")[0] == 2  # fold 2 would train on 1.5 < half of 3.5 time units
    k, line = fold_count(fixed, table(1, 2.5), "auto")
    assert k == 1 and "no room" in line
    with pytest.raises(ConfigError, match=r"folds=3: .* has room for 1 .* pass folds=1"):
        fold_count(fixed, table(1, 2.5), 3)
    assert fold_count({**fixed, "data.train_end": 10.0}, table(1, 20.0), "auto") == (1, None)
    # a holdout_shift the user fixed leaves its horizons out first: 4.5 units with 1 shifted is the 3.5 above's room
    assert fold_count({**fixed, "data.holdout_shift": 1}, table(1, 5.5), "auto")[0] == 2
    with pytest.raises(ConfigError, match="train_end"):
        fold_count({**fixed, "data.train_end": 10.0}, table(1, 20.0), 2)
    assert fold_count(fixed, None, "auto") == (1, None)
    for bad in (0, "two", True, -1):
        with pytest.raises(ConfigError, match="must be 'auto' or an integer >= 1"):
            fold_count(fixed, table(1, 20.0), bad)
    # the geometric mean: a fold's scale multiplies every trial's value alike, the ranking stays
    assert combined([0.5, 2.0]) == pytest.approx(1.0)
    assert combined([0.1, 0.2]) < combined([0.1, 0.3])
    assert combined([0.5, math.inf]) == math.inf and combined([0.0, 1.0]) == 0.0


@pytest.mark.slow
def test_a_trial_of_one_series_is_ranked_on_its_folds(tmp_path, capsys):
    """One series: each complete trial is ranked by the geometric mean over its folds (the fold fits leave nothing
    behind); folds=1 scores the last horizon alone."""
    one = generate("periodic", n_series=1, n_points=80, seed=0)  # times 0..~5: two folds of horizon 1.0
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = dict(data_options=DATA, model_options=MODEL, trainer=TRAINER, tracking=False, seed=TEST_SEED)
    fc = Forecaster.fit(one, "auto", output_dir=tmp_path / "out", budget=2, storage=storage, log_model=False, **common)
    err = capsys.readouterr().err
    assert "backtest folds: 2 (1 series validate" in err
    study = optuna.load_study(study_name="ts_neuralode_auto", storage=storage)
    done = [t for t in study.get_trials() if t.user_attrs.get("outcome") == "complete"]
    assert done, [t.user_attrs.get("reason") for t in study.get_trials()]
    for t in done:
        folds = t.user_attrs["fold_values"]
        assert len(folds) == 2 and all(math.isfinite(v) and v > 0 for v in folds)
        assert t.value == pytest.approx(math.exp(np.mean(np.log(folds))))
    lines = [ln for ln in err.splitlines() if ln.startswith("auto: [")]
    assert any("; folds " in ln and " -> " in ln for ln in lines), lines
    assert not list((tmp_path / "out").glob("trials/*/fold_*")), "a fold's fit leaves nothing behind"
    assert fc.fit_info["best_value"] == pytest.approx(min(t.value for t in done))
    # folds=1: the last horizon alone, as before
    one_fold = model_choice.search(one, output_dir=tmp_path / "one", budget=1, folds=1, **common)
    t = one_fold.trials()[0]
    assert "fold_values" not in t.user_attrs and one_fold.settings["folds"] == 1

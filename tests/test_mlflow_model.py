"""The fit's MLflow model: a logged pyfunc model of the run, registered with --register_as, loaded with
mlflow.pyfunc.load_model, and served by a real ``mlflow models serve`` answering a request on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_FIT_ARGS, _free_port, stop_mlflow_server, subprocess_env
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main

NAME = "latent_ode_coupling_flow"
QUERY = {"horizon": "6h", "num_points": 3, "num_samples": 8, "seed": 0}


@pytest.fixture(scope="module")
def registered(tmp_path_factory, dt_csv):
    """A 1-epoch fit on the datetime CSV, tracked in a sqlite store and registered as ``tiny``."""
    import torch

    cwd = tmp_path_factory.mktemp("registered")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    args = [a for a in TINY_FIT_ARGS]
    args[args.index("--trainer.max_epochs") + 1] = "1"
    import contextlib
    import io

    torch.manual_seed(0)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(
            [
                "fit",
                "--data.path",
                str(dt_csv),
                "--data.time_unit",
                "h",
                "--tracking_uri",
                uri,
                "--artifact_location",
                str(cwd / "artifacts"),
                "--checkpoint_dir",
                str(cwd / "ck"),
                "--experiment_name",
                "served",
                "--register_as",
                "tiny",
                *args,
            ]
        )
    assert rc == 0, buf.getvalue()[-3000:]
    return {"uri": uri, "cwd": cwd, "model_dir": cwd / "ck" / "model", "output": buf.getvalue()}


def test_register_as_without_tracking_is_one_line(tiny_csv, capfd):
    rc = main(["fit", "--data.path", str(tiny_csv), "--tracking", "false", "--register_as", "x", *TINY_FIT_ARGS])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--register_as x registers the model logged to MLflow" in err[0], err


@pytest.mark.slow
def test_fit_logs_a_registered_pyfunc_model_of_a_training_experiment(registered):
    from mlflow import MlflowClient

    client = MlflowClient(registered["uri"])
    exp = client.get_experiment_by_name("served")
    assert exp.tags.get("mlflow.experimentKind") == "forecasting"  # the UI's forecasting layout, not GenAI's
    run = client.search_runs([exp.experiment_id])[0]
    logged = client.search_logged_models([exp.experiment_id])
    assert [(m.name, m.source_run_id) for m in logged] == [("forecaster", run.info.run_id)]
    # logged at the best checkpoint's epoch, with that epoch's scores (not the first epoch's)
    assert [o.step for o in run.outputs.model_outputs] == [0]  # a 1-epoch fit: its one epoch is the best
    linked = {m.key: m.value for m in logged[0].metrics or []}
    history = client.get_metric_history(run.info.run_id, "epoch/val_loss")
    assert linked.get("epoch/val_loss") == history[-1].value
    assert [o.model_id for o in run.outputs.model_outputs] == [logged[0].model_id]
    version = client.get_model_version("tiny", "1")
    assert version.run_id == run.info.run_id and logged[0].model_id in version.source


@pytest.mark.slow
def test_fit_prints_the_model_uri_and_both_uris_load_it(registered, dt_csv):
    """The ``models:/`` URI fit prints and ``runs:/<run>/forecaster`` both load with mlflow.pyfunc."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(registered["uri"])
    exp = client.get_experiment_by_name("served")
    run = client.search_runs([exp.experiment_id])[0]
    model_id = client.search_logged_models([exp.experiment_id])[0].model_id
    assert f"MLflow model models:/{model_id}" in registered["output"]
    history = pd.read_csv(dt_csv)[["unique_id", "ds", "y"]]
    mlflow.set_tracking_uri(registered["uri"])
    try:
        a = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(history, params=QUERY)
        b = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/forecaster").predict(history, params=QUERY)
    finally:
        mlflow.set_tracking_uri(None)
    assert np.allclose(a[NAME], b[NAME])


@pytest.mark.slow
def test_pyfunc_load_model_forecasts_like_the_forecaster(registered, dt_csv):
    import mlflow

    mlflow.set_tracking_uri(registered["uri"])
    try:
        model = mlflow.pyfunc.load_model("models:/tiny/1")
    finally:
        mlflow.set_tracking_uri(None)
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["unique_id", "ds", "y"]
    assert {p.name for p in sig.params} >= {"horizon", "freq", "num_points", "level", "context", "calibrated"}
    history = pd.read_csv(dt_csv)[["unique_id", "ds", "y"]]
    got = model.predict(history, params=QUERY)
    want = Forecaster.load(registered["model_dir"]).predict(history, **QUERY)
    assert list(got.columns) == list(want.columns)
    assert got["ds"].str.endswith("+01:00").all()
    assert (pd.to_datetime(got["ds"]) == want["ds"]).all()
    assert np.allclose(got[NAME], want[NAME]) and np.allclose(got[f"{NAME}-hi-90"], want[f"{NAME}-hi-90"])


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_request(registered, dt_csv, tmp_path):
    port = _free_port()
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": registered["uri"]}
    # the server execs uvicorn by name: the venv's scripts first on the PATH (as with an activated venv)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "models",
        "serve",
        "-m",
        "models:/tiny/1",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with open(tmp_path / "serve.log", "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow models serve did not answer /ping within 180 s"
            time.sleep(0.5)
        history = pd.read_csv(dt_csv)[["unique_id", "ds", "y"]].dropna()
        body = {"dataframe_split": history.to_dict(orient="split", index=False), "params": QUERY}
        req = urllib.request.Request(
            url + "/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        rows = pd.DataFrame(answer["predictions"])
        want = Forecaster.load(registered["model_dir"]).predict(history, **QUERY)
        assert len(rows) == len(want) == 3 * history["unique_id"].nunique()
        assert (pd.to_datetime(rows["ds"]) == want["ds"]).all()
        assert np.allclose(rows[NAME], want[NAME], rtol=1e-5)
        # a bad request: one JSON line saying what is wrong, no stack trace and no echo of the request
        bad = {"dataframe_split": history.to_dict(orient="split", index=False), "params": {"horizon": "-2h"}}
        req = urllib.request.Request(
            url + "/invocations", data=json.dumps(bad).encode(), headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=120)
        text = caught.value.read().decode()
        answer = json.loads(text)
        assert caught.value.code == 400 and len(text.strip().splitlines()) == 1, text
        assert answer["error_code"] == "BAD_REQUEST" and "stack_trace" not in answer, answer
        assert "horizon" in answer["message"] and "Failed to predict" not in answer["message"], answer
    finally:
        stop_mlflow_server(proc)  # the server's whole process group (uvicorn is its child)


# -- a model with known-future and static covariates --------------------------------------------------------------
PK_ARGS = [
    "--model.model",
    "ode_rnn",
    "--model.latent_dim",
    "4",
    "--model.hidden_dim",
    "8",
    "--model.evolution.method",
    "rk4",
    "--model.evolution.step_size",
    "0.5",
    "--data.batch_size",
    "8",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


@pytest.fixture(scope="module")
def pk_registered(tmp_path_factory):
    """A 1-epoch ODE-RNN on the pk set with ``future_cols=[rate]`` and ``static_cols=[weight]``, registered."""
    import torch

    from ts_neuralode.data.generators import generate

    cwd = tmp_path_factory.mktemp("pk_registered")
    df = generate("pk", n_series=8, n_points=15, seed=0)
    df["weight"] = df["unique_id"].map({u: 50.0 + 5 * i for i, u in enumerate(df["unique_id"].unique())})
    df.to_csv(cwd / "pk.csv", index=False)
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    torch.manual_seed(0)
    rc = main(
        [
            "fit",
            "--data.path",
            str(cwd / "pk.csv"),
            "--data.future_cols",
            "[rate]",
            "--data.static_cols",
            "[weight]",
            "--tracking_uri",
            uri,
            "--artifact_location",
            str(cwd / "artifacts"),
            "--checkpoint_dir",
            str(cwd / "ck"),
            "--experiment_name",
            "pk",
            "--register_as",
            "pk",
            *PK_ARGS,
        ]
    )
    assert rc == 0
    return {"uri": uri, "df": df, "model_dir": cwd / "ck" / "model"}


@pytest.mark.slow
def test_a_covariate_model_is_registered_and_forecasts_like_the_forecaster(pk_registered):
    """The signature carries the covariate columns (MLflow keeps them in a request); known-future values go in as
    rows with an empty y after the history; the forecast equals Forecaster.predict's. The served model's
    ``calibrated`` param says why it cannot be used."""
    import mlflow

    from ts_neuralode.errors import ForecastError

    mlflow.set_tracking_uri(pk_registered["uri"])
    try:
        model = mlflow.pyfunc.load_model("models:/pk/1")
    finally:
        mlflow.set_tracking_uri(None)
    assert model.metadata.signature.inputs.input_names() == ["unique_id", "ds", "y", "rate", "weight"]
    df = pk_registered["df"]
    future = df[(df["ds"] > 6.0) & (df["ds"] <= 9.0)].assign(y=np.nan)  # the dose schedule, no observations
    last = df[df["ds"] <= 9.0].dropna(subset=["rate"]).groupby("unique_id", as_index=False).last()
    future = pd.concat([future, last.assign(ds=9.0, y=np.nan)], ignore_index=True)  # the rate known up to t = 9
    request = pd.concat([df[df["ds"] <= 6.0], future], ignore_index=True)
    query = {"horizon": "2.5", "num_points": 3, "num_samples": 4, "seed": 0}
    got = model.predict(request, params=query)
    want = Forecaster.load(pk_registered["model_dir"]).predict(request, horizon=2.5, num_points=3, num_samples=4)
    assert list(got.columns) == list(want.columns) and len(got) == 3 * df["unique_id"].nunique()
    assert np.allclose(got["ode_rnn"], want["ode_rnn"]) and np.allclose(got["ode_rnn-hi-90"], want["ode_rnn-hi-90"])
    # fit calibrated the bands on its validation windows when they held enough points; the served model carries that
    # calibration (what Forecaster.predict applies by default) and raw_bands=true gives the model's own bands
    raw = model.predict(request, params={**query, "raw_bands": True})
    want_raw = Forecaster.load(pk_registered["model_dir"]).predict(
        request, horizon=2.5, num_points=3, num_samples=4, calibrated=False
    )
    assert np.allclose(raw["ode_rnn-hi-90"], want_raw["ode_rnn-hi-90"])
    from ts_neuralode.integrations.mlflow.logged_model import forecast_frame

    bare = Forecaster.load(pk_registered["model_dir"])
    bare.calibration = None
    with pytest.raises(ForecastError, match="holds no band calibration"):
        forecast_frame(bare, request, {**query, "calibrated": True})


@pytest.mark.slow
def test_a_failed_model_log_with_register_as_is_one_error_line(tiny_csv, tmp_path, capfd):
    """MLflow refuses the name (a real registry error): the fit exits 2 with one line, not a warning and 0."""
    args = [a for a in TINY_FIT_ARGS]
    args[args.index("--trainer.max_epochs") + 1] = "1"
    rc = main(
        [
            "fit",
            "--data.path",
            str(tiny_csv),
            "--tracking_uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifact_location",
            str(tmp_path / "artifacts"),
            "--checkpoint_dir",
            str(tmp_path / "ck"),
            "--register_as",
            "a/b",
            *args,
        ]
    )
    err = [ln for ln in capfd.readouterr().err.strip().splitlines() if "error" in ln.lower()]
    assert rc == 2 and len(err) == 1, err
    assert (
        err[0].startswith("ts-neuralode: error: --register_as a/b: the MLflow model was not logged")
        and "Names cannot contain" in err[0]
    ), err
    assert (tmp_path / "ck" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_fit_info_names_no_run_of_an_earlier_fit(registered, dt_csv, tmp_path):
    """An untracked fit in a directory holding an earlier fit's mlflow_run.json reports no run id."""
    import shutil

    from ts_neuralode.api.fitting import run_fit

    (tmp_path / "checkpoints").mkdir()
    shutil.copy(registered["cwd"] / "ck" / "mlflow_run.json", tmp_path / "checkpoints")
    args = [a for a in TINY_FIT_ARGS]
    args[args.index("--trainer.max_epochs") + 1] = "1"
    fc = run_fit(
        [
            "fit",
            "--data.path",
            str(dt_csv),
            "--data.time_unit",
            "h",
            "--checkpoint_dir",
            str(tmp_path / "checkpoints"),
            "--model_dir",
            str(tmp_path / "model"),
            "--tracking",
            "false",
            *args,
        ],
        tmp_path / "model",
    )
    assert fc.fit_info["run_id"] is None and fc.fit_info["tracking_uri"] is None

"""The fit's MLflow model: a logged pyfunc model of the run, registered with --register_as, loaded with
mlflow.pyfunc.load_model, and served by a real ``mlflow models serve`` answering a request on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_FIT_ARGS, _free_port, stop_mlflow_server, subprocess_env
from ts_neuralode.cli import main
from ts_neuralode.forecaster import Forecaster

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
    torch.manual_seed(0)
    rc = main(["fit", "--data.path", str(dt_csv), "--data.time_unit", "h", "--tracking_uri", uri,
               "--artifact_location", str(cwd / "artifacts"), "--checkpoint_dir", str(cwd / "ck"),
               "--experiment_name", "served", "--register_as", "tiny", *args])
    assert rc == 0
    return {"uri": uri, "cwd": cwd, "model_dir": cwd / "ck" / "model"}


def test_register_as_without_tracking_is_one_line(tiny_csv, capfd):
    rc = main(["fit", "--data.path", str(tiny_csv), "--tracking", "false", "--register_as", "x", *TINY_FIT_ARGS])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--register_as x registers the model logged to MLflow" in err[0], err


def test_fit_logs_a_registered_pyfunc_model_of_a_training_experiment(registered):
    from mlflow import MlflowClient

    client = MlflowClient(registered["uri"])
    exp = client.get_experiment_by_name("served")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    run = client.search_runs([exp.experiment_id])[0]
    logged = client.search_logged_models([exp.experiment_id])
    assert [(m.name, m.source_run_id) for m in logged] == [("forecaster", run.info.run_id)]
    assert [o.model_id for o in run.outputs.model_outputs] == [logged[0].model_id]
    version = client.get_model_version("tiny", "1")
    assert version.run_id == run.info.run_id and logged[0].model_id in version.source


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


def test_mlflow_models_serve_answers_a_request(registered, dt_csv, tmp_path):
    port = _free_port()
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": registered["uri"]}
    # the server execs uvicorn by name: the venv's scripts first on the PATH (as with an activated venv)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "models", "serve", "-m", "models:/tiny/1",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path, env=env)
    log.close()
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
        req = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        rows = pd.DataFrame(answer["predictions"])
        want = Forecaster.load(registered["model_dir"]).predict(history, **QUERY)
        assert len(rows) == len(want) == 3 * history["unique_id"].nunique()
        assert (pd.to_datetime(rows["ds"]) == want["ds"]).all()
        assert np.allclose(rows[NAME], want[NAME], rtol=1e-5)
    finally:
        stop_mlflow_server(proc)  # the server's whole process group (uvicorn is its child)

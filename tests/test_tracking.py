"""MLflow tracking of ``ts-neuralode fit``: the local default store and a real ``mlflow server``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import TINY_FIT_ARGS
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow.tracking import RUN_FILE, resolve_tracking_uri

EPOCH_KEYS = (
    "epoch/train_loss",
    "epoch/val_loss",
    "epoch/val_mse",
    "epoch/val_interp_mse",
    "epoch/nfe",
    "epoch/epoch_time_s",
)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out.add(a.path)
        if a.is_dir:
            out |= artifact_paths(client, run_id, a.path)
    return out


def only_run(client: MlflowClient, experiment_name: str):
    exp = client.get_experiment_by_name(experiment_name)
    assert exp is not None, f"experiment {experiment_name} missing"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def check_fit_run(client: MlflowClient, run, epochs: int) -> set[str]:
    """Params, per-epoch metric histories and artifacts every fit must log."""
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model"] == "latent_ode" and p["evolution/kind"] == "coupling_flow" and p["latent_dim"] == "4"
    assert p["layout"] == "padded" and p["batch_size"] == "8" and p["input_dim"] == "1"
    assert p["seed_everything"] == "0" and p["trainer/max_epochs"] == str(epochs)
    assert not any(k.startswith("_") for k in p), "LightningCLI private keys leaked into params"
    for key in EPOCH_KEYS:
        hist = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == list(range(epochs)), key
        assert all(np.isfinite(m.value) for m in hist), key
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "epoch/epoch_time_s"))
    arts = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "model/config.json", "model/weights.pt"} <= arts, arts
    assert any(a.startswith("checkpoints/") and a.endswith(".ckpt") for a in arts), arts
    assert any(a.startswith("plots/") and a.endswith(".png") for a in arts), arts
    return arts


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"  # relative -> absolute
    assert resolve_tracking_uri(f"sqlite:///{tmp_path / 'y.db'}") == f"sqlite:///{tmp_path / 'y.db'}"
    assert resolve_tracking_uri("runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    with pytest.raises(ConfigError, match="file store"):
        resolve_tracking_uri("./mlruns")


@pytest.mark.slow
def test_fit_logs_to_local_default_store(fitted_local):
    assert fitted_local["rc"] == 0
    cwd = fitted_local["cwd"]
    assert (cwd / "mlflow.db").is_file(), "default store must be ./mlflow.db"
    assert not (cwd / "mlruns" / "0").exists() or (cwd / "mlflow.db").is_file()
    client = MlflowClient(fitted_local["tracking_uri"])
    run = only_run(client, "ts_neuralode")
    check_fit_run(client, run, epochs=2)
    info = json.loads((fitted_local["ckpt_dir"] / RUN_FILE).read_text())
    assert info["run_id"] == run.info.run_id
    # the local model directory matches the one logged to MLflow
    assert (fitted_local["model_dir"] / "weights.pt").is_file()


@pytest.mark.slow
def test_fit_logs_to_real_server_and_model_reloads(mlflow_server, tiny_csv, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    rc = main(
        [
            "fit",
            "--data.path",
            str(tiny_csv),
            "--tracking_uri",
            mlflow_server,
            "--experiment_name",
            "server_test",
            "--run_name",
            "tiny",
            *TINY_FIT_ARGS,
        ]
    )
    assert rc == 0
    assert not (tmp_path / "mlflow.db").exists(), "with --tracking_uri nothing may go to the local store"
    client = MlflowClient(mlflow_server)
    run = only_run(client, "server_test")
    assert run.info.run_name == "tiny"
    check_fit_run(client, run, epochs=2)

    cfg_path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="config.yaml", tracking_uri=mlflow_server, dst_path=str(tmp_path / "dl")
    )
    cfg = yaml.safe_load(Path(cfg_path).read_text())
    assert cfg["model"]["evolution"]["kind"] == "coupling_flow" and cfg["trainer"]["max_epochs"] == 2
    assert cfg["data"]["path"] == str(tiny_csv) and cfg["tracking_uri"] == mlflow_server

    model_dir = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="model", tracking_uri=mlflow_server, dst_path=str(tmp_path / "dl")
    )
    fc = Forecaster.load(model_dir)
    out = fc.predict(tiny_csv, horizon=3.0, num_points=5, num_samples=4)
    assert len(out) == 12 * 5 and np.isfinite(out[fc.name].to_numpy()).all()

    # the CLI fetches the same model straight from the server (runs:/ URI)
    rc = main(
        [
            "forecast",
            "--model",
            f"runs:/{run.info.run_id}/model",
            "--tracking_uri",
            mlflow_server,
            "--data.path",
            str(tiny_csv),
            "--horizon",
            "3",
            "--num_points",
            "5",
            "--num_samples",
            "4",
            "--out",
            str(tmp_path / "fc.csv"),
            "--plots",
            "false",
            "--progress",
            "false",
        ]
    )
    assert rc == 0
    import pandas as pd

    again = pd.read_csv(tmp_path / "fc.csv")
    np.testing.assert_allclose(again[fc.name].to_numpy(), out[fc.name].to_numpy(), rtol=1e-5, atol=1e-6)

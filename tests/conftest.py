"""Shared test configuration."""

import torch

# The suite runs on 2-core CI machines; keep torch from oversubscribing them.
torch.set_num_threads(2)


# --- fixtures for the CLI / tracking / forecaster tests -------------------------------------------------
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, local artifact root) for the whole session.

    Yields its URL. Started in its own process group (the server forks uvicorn and job consumers), polled
    on /health until it answers, and the whole group is terminated at the end of the session.
    """
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--default-artifact-root", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                                   f"{(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("mlflow server did not answer on /health within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


TINY_FIT_ARGS = [
    "--model.model", "latent_ode", "--model.evolution", "coupling_flow", "--model.latent_dim", "4",
    "--model.hidden_dim", "16", "--model.eval_samples", "2", "--model.iwae_samples", "1",
    "--data.layout", "padded", "--data.batch_size", "8",
    "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
]


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """12 sine series x 20 irregular points (long format): 8 train / 2 val / 2 test series."""
    from ts_neuralode.data.generators import generate

    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    generate("sine", n_series=12, n_points=20, seed=1).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def fitted_local(tmp_path_factory, tiny_csv):
    """One tiny ``ts-neuralode fit`` run in-process with the default local tracking store.

    Runs in a fresh working directory with MLFLOW_TRACKING_URI unset, so the run lands in ``./mlflow.db``.
    Returns a dict: cwd, ckpt_dir, model_dir, tracking_uri, rc.
    """
    from ts_neuralode.cli import main

    cwd = tmp_path_factory.mktemp("fit_local")
    old_cwd, old_env = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(cwd)
    try:
        torch.manual_seed(0)
        rc = main(["fit", "--data.path", str(tiny_csv), *TINY_FIT_ARGS])
    finally:
        os.chdir(old_cwd)
        if old_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
    return {"cwd": cwd, "rc": rc, "ckpt_dir": cwd / "checkpoints", "model_dir": cwd / "checkpoints" / "model",
            "tracking_uri": f"sqlite:///{cwd / 'mlflow.db'}"}

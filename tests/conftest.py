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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids barrier waits on a busy 2-core machine (``pytestmark =
    pytest.mark.usefixtures("one_thread")`` in a test module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


# --- a datetime CSV (the demo's shape, small) and one fit on it, shared by test_cli.py and test_forecaster.py ---
DT_TZ = "+01:00"


@pytest.fixture(scope="session")
def dt_csv(tmp_path_factory) -> Path:
    """6 sensors x 16 irregular readings over 3 days: ISO datetimes with +01:00 offsets (minute resolution), a daily
    cycle, an ignored categorical ``site`` column and two empty ``y`` cells."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    start = pd.Timestamp("2024-01-08 00:00", tz="Europe/Berlin")
    frames = []
    for k in range(6):
        minutes = np.sort(rng.choice(3 * 24 * 60, 16, replace=False))
        hours = minutes / 60.0
        y = 20 + k + 4 * np.sin(2 * np.pi * hours / 24 + 0.3 * k) + rng.normal(0, 0.3, 16)
        ds = (start + pd.to_timedelta(minutes, unit="min")).strftime("%Y-%m-%dT%H:%M:%S%z")
        frames.append(pd.DataFrame({"unique_id": f"s{k}", "ds": [s[:-2] + ":" + s[-2:] for s in ds],
                                    "y": np.round(y, 3), "site": "north" if k < 3 else "south"}))
    df = pd.concat(frames, ignore_index=True)
    df.loc[[5, 40], "y"] = np.nan
    path = tmp_path_factory.mktemp("dt_data") / "sensors.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def dt_fitted(tmp_path_factory, dt_csv):
    """``ts-neuralode fit`` (in-process, progress bar left on) on :func:`dt_csv` with ``--data.time_unit h``.

    Returns a dict: rc, cwd, ckpt_dir, model_dir, tracking_uri, output (captured stdout + stderr of the fit).
    """
    import contextlib
    import io

    from ts_neuralode.cli import main

    cwd = tmp_path_factory.mktemp("dt_fit")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    args = [a for a in TINY_FIT_ARGS]
    i = args.index("--trainer.enable_progress_bar")
    del args[i:i + 2]
    buf = io.StringIO()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = main(["fit", "--data.path", str(dt_csv), "--data.time_unit", "h", "--tracking_uri", uri,
                       "--checkpoint_dir", str(cwd / "ck"), *args])
    finally:
        os.chdir(old_cwd)
    return {"rc": rc, "cwd": cwd, "ckpt_dir": cwd / "ck", "model_dir": cwd / "ck" / "model", "tracking_uri": uri,
            "output": buf.getvalue()}

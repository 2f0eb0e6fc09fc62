"""Shared test configuration."""

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# -- seeds, threads and margins -------------------------------------------------------------------------------------
# Tests that train or compare floats take their seed from TEST_SEED and assert through the ``margin`` fixture, which
# records how far each check is from failing. scripts/check_margins.py reruns them under several seeds and thread
# counts (TS_NEURALODE_TEST_SEED, TS_NEURALODE_TEST_THREADS) and reports the worst margin of every check
# (results/test_margins.md). Defaults: seed 0; 2 threads (the suite runs on 2-core CI machines: keep torch from
# oversubscribing them), 1 for modules of tiny tensors (small_tensor_threads).
TEST_SEED = int(os.environ.get("TS_NEURALODE_TEST_SEED", "0"))
TEST_THREADS = int(os.environ.get("TS_NEURALODE_TEST_THREADS", "0"))
MARGIN_LOG = os.environ.get("TS_NEURALODE_MARGIN_LOG")

torch.set_num_threads(TEST_THREADS or 2)
if TEST_THREADS:  # the entry points' thread choice (ts_neuralode.core.threads) keeps the margin check's count
    os.environ["TS_NEURALODE_THREADS"] = str(TEST_THREADS)

# Property-based tests (hypothesis): the same examples on every run and machine (derandomize), a modest count so CI
# time is stable, no example database written into the checkout. HYPOTHESIS_PROFILE=explore searches wider.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=60, print_blob=True)
settings.register_profile("explore", database=None, deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def small_tensor_threads() -> int:
    """Threads for modules of tiny tensors: one avoids barrier waits on a busy 2-core machine, unless the margin
    check asks for a thread count."""
    return TEST_THREADS or 1


#: fixtures that train a model or start a server: a test that uses one is slow (`pytest -m "not slow"` leaves it out)
SLOW_FIXTURES = {"dt_fitted", "fitted_local", "mlflow_server"}


def pytest_collection_modifyitems(config, items):
    for item in items:  # `pytest -m margin` selects every test that asserts through the margin fixture
        if "margin" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.margin)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class Margin:
    """``margin(label, value, limit)`` asserts ``value <= limit`` (``above=True``: ``value >= limit``) and records the
    headroom: limit / value (value / limit when above) — how many times the value could grow (shrink) before the
    check fails; 1.0 is the knife edge. Both must be positive.

    ``tol=``: an exact bound up to float rounding (a theorem, e.g. a Lipschitz bound): asserts
    ``value <= limit + tol`` and records tol / (value - limit), how many times the rounding excess over the exact
    bound could grow before the check fails (infinite when the exact bound holds)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid

    def __call__(
        self, label: str, value: float, limit: float, *, above: bool = False, tol: float | None = None, note: str = ""
    ) -> None:
        value, limit = float(value), float(limit)
        if tol is not None:
            headroom = tol / (value - limit) if value > limit else math.inf
            ok = value <= limit + tol
        elif above:
            headroom = value / limit if limit > 0 else math.inf
            ok = value >= limit
        else:
            headroom = limit / value if value > 0 else math.inf
            ok = value <= limit
        if MARGIN_LOG:
            with open(MARGIN_LOG, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "test": self.nodeid,
                            "check": label,
                            "value": value,
                            "limit": limit,
                            "above": above,
                            "tol": tol,
                            "headroom": headroom if math.isfinite(headroom) else None,
                            "seed": TEST_SEED,
                            "threads": torch.get_num_threads(),
                        }
                    )
                    + "\n"
                )
        bound = f"{limit:.4g}" + (f" + {tol:g}" if tol is not None else "")
        assert ok, f"{label}: {value:.4g} {'<' if above else '>'} limit {bound} {note}".rstrip()


@pytest.fixture
def margin(request) -> Margin:
    return Margin(request.node.nodeid)


# --- fixtures for the CLI / tracking / forecaster tests -------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict:
    """Environment of a ``python -m ts_neuralode.cli`` child: this checkout first on the path, no inherited
    MLFLOW_TRACKING_URI, and the margin check's thread count (as OMP_NUM_THREADS) when it sets one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("MLFLOW_TRACKING_URI", None)
    if TEST_THREADS:
        env["OMP_NUM_THREADS"] = str(TEST_THREADS)
    return env


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch stored in a checkpoint, or None while there is none (or one being written)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not there yet, or being written
        return None


def wait_for_epoch(proc: subprocess.Popen, ckpt: Path, epoch: int, timeout: float = 300) -> int | None:
    """Poll ``ckpt`` until it holds ``epoch`` or a later one (returned), or ``proc`` ends / ``timeout`` passes
    (None)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        got = checkpoint_epoch(ckpt)
        if got is not None and got >= epoch:
            return got
        time.sleep(0.02)
    return None


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids barrier waits on a busy 2-core machine (``pytestmark =
    pytest.mark.usefixtures("one_thread")`` in a test module); the margin check's thread count when it sets one
    (:func:`small_tensor_threads`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(small_tensor_threads())
    yield
    torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """Start a real ``mlflow server`` on 127.0.0.1 (sqlite backend, local artifact root under ``root``); return the
    process and its URL once /health answers. Started in its own process group (the server forks uvicorn and job
    consumers): stop it with :func:`stop_mlflow_server`."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(root / "server.log", "wb") as log:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("mlflow server did not answer on /health within 120 s")
            time.sleep(0.3)
    except BaseException:
        stop_mlflow_server(proc)
        raise


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (SIGKILL after 20 s)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (:func:`start_mlflow_server`) for the whole session; yields its URL."""
    proc, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield url
    finally:
        stop_mlflow_server(proc)


TINY_FIT_ARGS = [
    "--model.model",
    "latent_ode",
    "--model.evolution.kind",
    "coupling_flow",
    "--model.latent_dim",
    "4",
    "--model.hidden_dim",
    "16",
    "--model.eval_samples",
    "2",
    "--model.iwae_samples",
    "1",
    "--data.layout",
    "padded",
    "--data.batch_size",
    "8",
    "--trainer.max_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.log_every_n_steps",
    "1",
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
    return {
        "cwd": cwd,
        "rc": rc,
        "ckpt_dir": cwd / "checkpoints",
        "model_dir": cwd / "checkpoints" / "model",
        "tracking_uri": f"sqlite:///{cwd / 'mlflow.db'}",
    }


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
        frames.append(
            pd.DataFrame(
                {
                    "unique_id": f"s{k}",
                    "ds": [s[:-2] + ":" + s[-2:] for s in ds],
                    "y": np.round(y, 3),
                    "site": "north" if k < 3 else "south",
                }
            )
        )
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
    del args[i : i + 2]
    buf = io.StringIO()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        torch.manual_seed(0)
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
                    "--checkpoint_dir",
                    str(cwd / "ck"),
                    *args,
                ]
            )
    finally:
        os.chdir(old_cwd)
    return {
        "rc": rc,
        "cwd": cwd,
        "ckpt_dir": cwd / "ck",
        "model_dir": cwd / "ck" / "model",
        "tracking_uri": uri,
        "output": buf.getvalue(),
    }

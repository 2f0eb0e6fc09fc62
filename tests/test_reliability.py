"""Runs that go wrong: a diverging fit, a solver that gives up, a kill during a save, a tracking server that goes
away, an evaluation split with nothing in it. Each ends with one line (or carries on) and loses nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import (
    TINY_FIT_ARGS,
    checkpoint_epoch,
    start_mlflow_server,
    stop_mlflow_server,
    subprocess_env,
    wait_for_epoch,
)
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main
from ts_neuralode.integrations.mlflow.tracking import read_run_file
from ts_neuralode.training.callbacks import FAILURE_TAG

# A small ODE-RNN on fixed RK4 steps; with lr_decay_gamma 1e30 every 2 epochs the learning rate jumps from 1e-3 to
# 1e27 for epoch 2, which blows the weights up within a step or two: a divergence in the middle of a fit.
ODE_RNN = [
    "--model.model",
    "ode_rnn",
    "--model.evolution.kind",
    "ode",
    "--model.latent_dim",
    "4",
    "--model.hidden_dim",
    "16",
    "--model.eval_samples",
    "2",
    "--data.layout",
    "padded",
    "--data.batch_size",
    "4",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.num_sanity_val_steps",
    "0",
]
RK4 = ["--model.evolution.method", "rk4", "--model.evolution.step_size", "0.25"]
BLOW_UP_AT_EPOCH_2 = ["--model.lr_decay_every", "2", "--model.lr_decay_gamma", "1e30"]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("ts-neuralode: error:")]


def _run_in(cwd: Path, argv: list[str]) -> int:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return main(argv)
    finally:
        os.chdir(old)


# -- training that goes wrong ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_divergence_mid_fit_stops_with_one_line_and_keeps_the_last_good_files(tiny_csv, tmp_path, capfd):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ck = tmp_path / "ck"
    args = [
        "fit",
        "--data.path",
        str(tiny_csv),
        *ODE_RNN,
        *RK4,
        *BLOW_UP_AT_EPOCH_2,
        "--tracking_uri",
        uri,
        "--experiment_name",
        "diverge",
        "--checkpoint_dir",
        str(ck),
    ]
    assert _run_in(tmp_path, [*args, "--trainer.max_epochs", "2"]) == 0  # epochs 0 and 1 at lr 1e-3
    capfd.readouterr()
    before = _digests(ck)
    assert "last.ckpt" in before and "model/weights.pt" in before

    rc = _run_in(tmp_path, [*args, "--trainer.max_epochs", "4", "--ckpt_path", "last"])  # epoch 2 at lr 1e27
    err = capfd.readouterr().err
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1, err[-2000:]
    line = lines[0]
    assert "training diverged at epoch 2, step" in line, line
    assert "lower --model.lr (now 1e+27)" in line and "gradient_clip_val" in line, line
    assert str(ck / "last.ckpt") in line  # where the last good checkpoint is

    # the last good checkpoint, the best one and the model directory are byte for byte what they were
    assert _digests(ck) == before
    Forecaster.load(ck / "model")  # and still load
    run_id = read_run_file(ck)["run_id"]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG] == line.removeprefix("ts-neuralode: error: ")


@pytest.mark.slow
def test_solver_that_cannot_make_progress_stops_with_one_line(tiny_csv, tmp_path, capfd):
    # dopri5 cannot reach rtol 1e-12 in float32: it runs out of steps on the first batch
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "fit",
        "--data.path",
        str(tiny_csv),
        *ODE_RNN,
        "--model.evolution.method",
        "dopri5",
        "--model.evolution.rtol",
        "1e-12",
        "--model.evolution.atol",
        "1e-14",
        "--trainer.max_epochs",
        "2",
        "--tracking_uri",
        uri,
        "--checkpoint_dir",
        str(tmp_path / "ck"),
    ]
    rc = _run_in(tmp_path, args)
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    (line,) = _error_lines(err)
    assert "the ODE solver could not go on at epoch 0, step 0" in line, line
    assert "max_steps" in line and "looser --model.evolution.rtol/--model.evolution.atol" in line, line
    run = MlflowClient(uri).get_run(read_run_file(tmp_path / "ck")["run_id"])
    assert run.info.status == "FAILED" and "max_steps" in run.data.tags[FAILURE_TAG]


# -- nothing lost on a crash -----------------------------------------------------------------------------------------
# The child saves version 1, 2, 3, ... of a file as fast as it can and announces each save before it starts; the
# parent kills it (SIGKILL) at staggered moments. Whatever the moment, the file must be a complete earlier or current
# version. (Written with a plain torch.save / open().write instead, the same kills leave torn files.)
SAVERS = {
    "checkpoint": """
        from ts_neuralode.training.callbacks import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        def save(k):
            io.save_checkpoint({"version": k, "payload": torch.full((2_000_000,), float(k))}, target)
    """,
    "model_dir": """
        from ts_neuralode.data.timecodec import TimeCodec
        from ts_neuralode.data.transform import SeriesTransform
        from ts_neuralode.api.forecaster import Forecaster
        from ts_neuralode.training import ForecastingModule
        module = ForecastingModule(model="ode_rnn", evolution="gru_flow", latent_dim=64, hidden_dim=384)
        fc = Forecaster(module, SeriesTransform(channel_names=["y"], codec=TimeCodec()))
        def save(k):
            with torch.no_grad():
                for p in module.parameters():
                    p.fill_(float(k))
            fc.name = f"v{k}"
            fc.save(target)
    """,
    "forecast_csv": """
        from ts_neuralode.core.atomic import atomic_write_text
        def save(k):
            atomic_write_text(target, "".join(f"s{i},{k}\\n" for i in range(400_000)))
    """,
}


def _check_version(kind: str, target: Path) -> int:
    """The complete version in ``target`` (AssertionError when it is torn or mixed)."""
    if kind == "checkpoint":
        ckpt = torch.load(target, weights_only=True)
        assert torch.equal(ckpt["payload"], torch.full((2_000_000,), float(ckpt["version"])))
        return int(ckpt["version"])
    if kind == "model_dir":
        fc = Forecaster.load(target)
        values = {float(v) for p in fc.module.parameters() for v in p.detach().unique()}
        assert len(values) == 1, "weights of several versions"
        k = int(values.pop())
        assert fc.name == f"v{k}", "config.json and weights.pt of different versions"
        return k
    lines = target.read_text().splitlines()
    assert len(lines) == 400_000 and len({ln.split(",")[1] for ln in lines}) == 1
    return int(lines[0].split(",")[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SAVERS))
def test_a_kill_during_a_save_leaves_a_complete_file(kind, tmp_path):
    target = tmp_path / {"checkpoint": "last.ckpt", "model_dir": "model", "forecast_csv": "forecast.csv"}[kind]
    code = (
        "import sys, torch\ntarget = sys.argv[1]\n"
        + textwrap.dedent(SAVERS[kind])
        + textwrap.dedent("""
        k = 0
        while True:
            k += 1
            print(k, flush=True)
            save(k)
    """)
    )
    for delay in (0.0, 0.004, 0.011):  # into the save, at different depths
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(target)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            announced = 0
            while announced < 3:  # versions 1 and 2 are complete: a previous good file exists
                line = proc.stdout.readline()
                assert line, proc.stderr.read()[-2000:]
                announced = int(line)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
        last_started = announced + sum(1 for ln in proc.stdout.read().split() if ln.strip())
        got = _check_version(kind, target)
        assert 2 <= got <= last_started, (got, last_started)


@pytest.mark.slow
def test_test_on_a_split_without_test_series_says_so(fitted_local, tiny_csv, tmp_path, capfd):
    assert fitted_local["rc"] == 0
    rc = main(
        [
            "test",
            "--data.path",
            str(tiny_csv),
            *TINY_FIT_ARGS,
            "--data.test_fraction",
            "0",
            "--tracking",
            "false",
            "--ckpt_path",
            str(fitted_local["ckpt_dir"] / "last.ckpt"),
        ]
    )
    err = capfd.readouterr().err
    assert rc == 2
    (line,) = _error_lines(err)
    assert "no test series" in line and "--data.test_fraction" in line, line


# -- tracking that goes away -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tracking_server_going_away_mid_fit_does_not_lose_the_training(tiny_csv, tmp_path):
    epochs = 40
    server, url = start_mlflow_server(tmp_path)
    ck = tmp_path / "ck"
    env = subprocess_env()
    env.update(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"
    )  # fail fast once the server is gone (MLflow retries ~4 min)
    cmd = [
        sys.executable,
        "-m",
        "ts_neuralode.cli",
        "fit",
        "--data.path",
        str(tiny_csv),
        *TINY_FIT_ARGS,
        "--trainer.max_epochs",
        str(epochs),
        "--tracking_uri",
        url,
        "--checkpoint_dir",
        str(ck),
    ]
    fit = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        killed_at = wait_for_epoch(fit, ck / "last.ckpt", 1)
        if killed_at is not None:
            os.killpg(server.pid, signal.SIGKILL)  # the server goes away without a word
        _, err = fit.communicate(timeout=600)
    finally:
        if fit.poll() is None:
            fit.kill()
        stop_mlflow_server(server)
    assert killed_at is not None and killed_at < epochs - 5, f"the server was not killed mid-fit: {err[-2000:]}"
    assert fit.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert err.count("MLflow tracking at") == 1, err[-3000:]  # said once
    assert "training goes on without it" in err
    assert checkpoint_epoch(ck / "last.ckpt") == epochs - 1  # every epoch trained and checkpointed
    fc = Forecaster.load(ck / "model")  # the model directory is complete
    assert fc.transform.channel_names == ["y"]
    assert "tracking failed during the fit" in err


def test_unreachable_tracking_server_is_one_line_at_once(tiny_csv, tmp_path, capfd):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    rc = _run_in(
        tmp_path, ["fit", "--data.path", str(tiny_csv), *TINY_FIT_ARGS, "--tracking_uri", f"http://127.0.0.1:{port}"]
    )
    err = capfd.readouterr().err
    assert rc == 2 and time.time() - t0 < 60
    (line,) = _error_lines(err)
    assert "not reachable" in line and "--tracking false" in line, line

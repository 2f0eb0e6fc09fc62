"""Training past one machine: 2 "nodes" x 1 process, started by ``torchrun`` or as ``srun`` starts them, on loopback
(gloo), equal one process.

torchrun: each node is its own ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank R --master_addr 127.0.0.1`` in
its own working directory, running ``python -m ts_neuralode.cli fit`` with ``--trainer.num_nodes 2
--trainer.devices 1``: Lightning finds torchrun's environment (TorchElasticEnvironment) and runs the two processes
it was given. srun: each node's task is the same command run directly with the variables srun sets for each task
(SLURM_NTASKS, SLURM_PROCID, SLURM_NODEID, SLURM_NODELIST, ...): Lightning's SLURMEnvironment takes it from there
(no SLURM installation is involved). The setup that makes the runs agree to float rounding is test_ddp.py's (same
global batches, same start, a deterministic loss): its options, its tolerances and their recorded margins are
reused here.

The tracking store is one fresh sqlite file that both nodes are pointed at, as a user would on a shared disk: only
rank 0 may open it (two processes creating one sqlite store at once race on its schema; rank 1 opens none), and
rank 0 records the run's scale once: world size 2, 2 nodes, the global batch of 4, the DDP strategy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from test_ddp import ARGS, ATOL_WEIGHTS, EPOCHS, RTOL_LOSS, _history

from conftest import _free_port, subprocess_env
from ts_neuralode.cli import main
from ts_neuralode.errors import ConfigError
from ts_neuralode.training.multinode import check_launch, launcher

NODES = 2
TIMEOUT_S = 400


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _stop(proc: subprocess.Popen) -> None:
    """End a torchrun agent and its worker (its own process group): SIGTERM, SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def _launch(name: str, rank: int, port: int) -> tuple[list[str], dict]:
    """The command and environment of node ``rank``'s process as ``name`` starts it: ``torchrun`` (its agent on
    each node starts the worker and sets RANK, WORLD_SIZE, ...), or ``srun``, which runs the command itself in each
    task with SLURM's per-task variables (Lightning's SLURMEnvironment reads them; the root node is the first of
    SLURM_NODELIST, the port MASTER_PORT). No SLURM here: the variables are the ones srun sets for 2 nodes x 1
    task, so this runs Lightning's SLURM path, not SLURM."""
    env = subprocess_env()
    for key in list(env):
        if key.startswith("SLURM_") or key in TORCHRUN_ENV:
            del env[key]
    cli = ["-m", "ts_neuralode.cli"]
    if name == "torchrun":
        node = ["--nnodes", str(NODES), "--nproc_per_node", "1", "--node_rank", str(rank)]
        master = ["--master_addr", "127.0.0.1", "--master_port", str(port), "--max_restarts", "0"]
        return [*_torchrun(), *node, *master, *cli], env
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="ts-neuralode-fit",
        SLURM_NTASKS=str(NODES),
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NNODES=str(NODES),
        SLURM_JOB_NUM_NODES=str(NODES),
        SLURM_NODELIST="127.0.0.1",
        SLURM_PROCID=str(rank),
        SLURM_NODEID=str(rank),
        SLURM_LOCALID="0",
        MASTER_PORT=str(port),
    )
    return [sys.executable, *cli], env


@pytest.mark.slow
@pytest.mark.parametrize("launcher_name", ["torchrun", "srun"])
def test_two_nodes_match_one_process(launcher_name, tiny_csv, tmp_path, margin):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = _free_port()
    nodes, procs = [tmp_path / f"node{r}" for r in range(NODES)], []
    try:
        for rank, cwd in enumerate(nodes):
            cwd.mkdir()
            start, env = _launch(launcher_name, rank, port)
            cmd = [
                *start,
                "fit",
                "--data.path",
                str(tiny_csv),
                *ARGS,
                "--data.batch_size",
                "2",
                "--trainer.num_nodes",
                str(NODES),
                "--trainer.devices",
                "1",
                "--trainer.strategy",
                "ddp",
                "--tracking_uri",
                uri,
                "--experiment_name",
                "multi",
                "--checkpoint_dir",
                "ck",
            ]
            with open(cwd / "out.txt", "wb") as out, open(cwd / "err.txt", "wb") as err:
                procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True))
        deadline = time.time() + TIMEOUT_S
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for proc in procs:
            _stop(proc)
    errs = [(cwd / "err.txt").read_text() for cwd in nodes]
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"node {rank}: {errs[rank][-3000:]}"

    one = tmp_path / "one"
    one.mkdir()
    old = os.getcwd()
    os.chdir(one)
    try:
        rc = main(
            [
                "fit",
                "--data.path",
                str(tiny_csv),
                *ARGS,
                "--data.batch_size",
                "4",
                "--trainer.devices",
                "1",
                "--tracking_uri",
                uri,
                "--experiment_name",
                "single",
                "--checkpoint_dir",
                str(one / "ck"),
            ]
        )
    finally:
        os.chdir(old)
    assert rc == 0

    client = MlflowClient(uri)
    runs = {}
    for name in ("multi", "single"):
        found = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert len(found) == 1, f"{name}: {len(found)} runs (only rank 0 may create one)"
        assert found[0].info.status == "FINISHED"
        runs[name] = found[0]
    multi, single = runs["multi"], runs["single"]
    params = multi.data.params
    # the run's scale, recorded by rank 0: 2 nodes x 1 process x 2 series = the single run's global batch of 4
    assert (params["world_size"], params["num_nodes"], params["global_batch_size"]) == ("2", "2", "4"), params
    assert params["strategy"] == "DDPStrategy"
    started_by = {"torchrun": "TorchElasticEnvironment", "srun": "SLURMEnvironment"}[launcher_name]
    assert params["cluster_environment"] == started_by, params
    assert (single.data.params["world_size"], single.data.params["global_batch_size"]) == ("1", "4")
    # rank 0 reports the run; node 1 says nothing of MLflow, writes no checkpoint and no model
    assert "MLflow run" in errs[0] and "MLflow" not in errs[1], errs[1][-2000:]
    assert not (nodes[1] / "ck").exists() or not any((nodes[1] / "ck").iterdir())
    assert "sync_dist" not in errs[0] + errs[1]

    for key in ("epoch/train_loss", "epoch/val_loss"):
        a, b = _history(client, multi.info.run_id, key), _history(client, single.info.run_id, key)
        assert len(a) == EPOCHS
        rel = float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))
        print(f"{key}: {launcher_name} 2 nodes {a} vs single {b}: max rel diff {rel:.2e}")
        margin(f"{key}: max relative difference {launcher_name} 2 nodes vs single", rel, RTOL_LOSS)
    train = _history(client, single.info.run_id, "epoch/train_loss")
    margin("train loss moved over the fit", abs(train[-1] - train[0]), 1e-3, above=True)

    wa = torch.load(nodes[0] / "ck" / "model" / "weights.pt", weights_only=True)
    wb = torch.load(one / "ck" / "model" / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"weights: max abs diff {worst:.2e}")
    margin(f"weights: max abs difference {launcher_name} 2 nodes vs single", worst, ATOL_WEIGHTS)


TORCHRUN_ENV = {
    "RANK": "1",
    "GROUP_RANK": "1",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "1",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "none",
}


def _clear_launchers(monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith("SLURM_") or key in TORCHRUN_ENV:
            monkeypatch.delenv(key)


def test_launcher_and_shape_check(monkeypatch):
    _clear_launchers(monkeypatch)
    assert launcher() is None
    check_launch({"num_nodes": 1, "devices": 4})  # no launcher: Lightning starts its own processes

    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    assert launcher() == ("torchrun", 2, 1)
    check_launch({"num_nodes": 2, "devices": 1, "accelerator": "cpu"})
    check_launch({"num_nodes": "2", "devices": "auto", "accelerator": "cpu"})  # auto on CPU: one process per node
    shape = (
        r"torchrun started 2 processes, but --trainer.num_nodes 1 x --trainer.devices 1 = 1; .* "
        r"e.g. --trainer.num_nodes 2 --trainer.devices 1"
    )
    with pytest.raises(ConfigError, match=shape):
        check_launch({"num_nodes": 1, "devices": 1, "accelerator": "cpu"})

    _clear_launchers(monkeypatch)
    slurm = {
        "SLURM_NTASKS": "8",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "3",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NAME": "fit",
        "SLURM_JOB_ID": "1",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert launcher() == ("srun", 8, 4)
    check_launch({"num_nodes": 2, "devices": 4})
    with pytest.raises(ConfigError, match=r"srun started 8 processes.* e.g. --trainer.num_nodes 2 --trainer.devices 4"):
        check_launch({"num_nodes": 2, "devices": [0]})


def test_fit_under_torchrun_with_wrong_shape_is_one_line(monkeypatch, tiny_csv, tmp_path, capsys):
    """The CLI under torchrun's environment without --trainer.num_nodes: one line naming the options, before any
    process group is set up (nothing waits for a peer)."""
    _clear_launchers(monkeypatch)
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    rc = main(["fit", "--data.path", str(tiny_csv), *ARGS, "--trainer.strategy", "ddp", "--tracking", "false"])
    err = capsys.readouterr().err
    assert rc != 0
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1 and "--trainer.num_nodes 2 --trainer.devices 1" in line[0], err[-2000:]
    assert "Traceback" not in err

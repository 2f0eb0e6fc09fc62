"""Training past one machine: a fit started by an external launcher (``torchrun`` on each node, or SLURM's ``srun``).

Lightning finds the launcher from the environment the launcher sets (``TorchElasticEnvironment``: ``RANK``,
``GROUP_RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; ``SLURMEnvironment``: ``SLURM_NTASKS``, ``SLURM_PROCID`` …)
and then runs the processes it was given instead of starting its own. Only the Trainer's shape has to be told:
``--trainer.num_nodes N --trainer.devices P`` with ``N × P`` = the launcher's world size, and
``--trainer.strategy ddp``. The recipes (README, "Training on several machines"):

    # on each of N nodes (node_rank 0 … N-1), one process per node here; MASTER = node 0's address
    torchrun --nnodes N --nproc_per_node 1 --node_rank R --master_addr MASTER --master_port 29500 \\
        -m ts_neuralode.cli fit --config configs/ode_rnn.yaml --data.path data.csv \\
        --trainer.num_nodes N --trainer.devices 1 --trainer.strategy ddp --tracking_uri http://mlflow:5000

    # SLURM: one task per process, srun starts them all (Lightning's SLURMEnvironment)
    srun --nodes N --ntasks-per-node 1 ts-neuralode fit ... --trainer.num_nodes N --trainer.devices 1 \\
        --trainer.strategy ddp

What each rank does (tests/test_multinode.py runs 2 nodes × 1 process on loopback): every rank reads the data and
takes its own share of the training series (the data module's DistributedSampler); rank 0 alone writes
checkpoints, the model directory and the MLflow run (world size, nodes, global batch size and strategy as params,
:func:`ts_neuralode.integrations.mlflow.tracking.scale_params`); the other ranks open no MLflow store at all
(:class:`ts_neuralode.integrations.mlflow.tracking.TrackingLogger`), so they need no access to it.

:func:`check_launch` turns a Trainer shape that does not match the launcher's world size (Lightning's ValueError
deep inside ``Trainer``) into one line that says which options to pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ts_neuralode.errors import ConfigError


def launcher() -> tuple[str, int, int] | None:
    """(name, world size, processes per node) of the external launcher that started this process (``torchrun`` or
    ``srun``), or None when none did (a plain run, or one whose processes Lightning starts itself)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    env = os.environ
    if TorchElasticEnvironment.detect():
        world = int(env.get("WORLD_SIZE", "1"))
        return "torchrun", world, int(env.get("LOCAL_WORLD_SIZE", world))
    if SLURMEnvironment.detect() and env.get("SLURM_NTASKS", "").isdigit():
        world = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")).split("(")[0] or 1)
        return "srun", world, max(1, world // max(1, nodes))
    return None


def _count(value: Any) -> int | None:
    """A Trainer ``devices`` / ``num_nodes`` value as a process count, None when Lightning chooses (``auto``, a
    device list is counted)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)):
        return len(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if "," in text:
        return len([v for v in text.split(",") if v.strip()])
    return None


def check_launch(trainer: Mapping[str, Any]) -> None:
    """ConfigError when an external launcher started this process and ``trainer`` (the Trainer's options) asks
    for another number of processes than the launcher's world size."""
    found = launcher()
    if found is None:
        return
    name, world, per_node = found
    nodes = _count(trainer.get("num_nodes", 1)) or 1
    devices = _count(trainer.get("devices", "auto"))
    if devices is None:
        devices = 1 if str(trainer.get("accelerator", "auto")).lower() == "cpu" else None
    if devices is None or nodes * devices == world:
        return
    raise ConfigError(
        f"{name} started {world} processes, but --trainer.num_nodes {nodes} x --trainer.devices {devices} = "
        f"{nodes * devices}; pass --trainer.num_nodes (the nodes) and --trainer.devices (processes per node) whose "
        f"product is {world}, e.g. --trainer.num_nodes {world // per_node} --trainer.devices {per_node}"
    )


__all__ = ["launcher", "check_launch"]

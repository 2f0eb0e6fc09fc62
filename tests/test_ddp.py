"""Multi-process training: a 2-process DDP fit on CPU (gloo) equals a single-process fit of the same global batch.

Why the two runs can agree to float precision, and what each piece of the setup is for:

* the same global batches: ``--data.shuffle false`` gives a fixed order (the data module hands Lightning a
  non-shuffling DistributedSampler: rank r of 2 takes train series r, r+2, ...), and the per-device batch is
  halved (2 x 2 = 4 = the single run's batch), so DDP step k sees exactly the single run's batch k;
* the same weights at the start: ``seed_everything: 0`` on every rank (and DDP broadcasts rank 0's anyway);
* a deterministic loss: ODE-RNN (no sampling in training), ``obs_fraction 1`` (no random subsample), fixed RK4
  steps (no adaptive step choice that could differ between batch compositions), and series with the same number
  of points, so the per-rank loss (sum over points / points on the rank) averaged by DDP equals the single run's
  loss (sum / points in the global batch);
* ``epoch/train_loss`` under DDP is summed over both ranks' batches (MlflowTrackingCallback), not rank 0's half.

What is left is float32 rounding: DDP all-reduces gradients in another order than one backward pass sums them.
Measured differences were ~1e-7 relative on the losses and < 1e-6 on the weights after 6 Adam steps; the
tolerances below (rtol 1e-4 on losses, atol 1e-4 on weights) leave room for other BLAS/thread counts while still
failing on any real difference (a different batch order moves the epoch-0 loss by >10%).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from conftest import TEST_SEED, subprocess_env
from ts_neuralode.cli import main

EPOCHS = 3
ARGS = [
    "--model.model",
    "ode_rnn",
    "--model.evolution.kind",
    "ode",
    "--model.evolution.method",
    "rk4",
    "--model.evolution.step_size",
    "0.25",
    "--model.latent_dim",
    "4",
    "--model.hidden_dim",
    "16",
    "--model.lr",
    "0.01",
    "--model.eval_samples",
    "2",
    "--data.layout",
    "padded",
    "--data.obs_fraction",
    "1.0",
    "--data.shuffle",
    "false",
    "--trainer.max_epochs",
    str(EPOCHS),
    "--trainer.accelerator",
    "cpu",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.log_every_n_steps",
    "1",
    "--seed_everything",
    str(TEST_SEED),
]
# Recorded margins (scripts/check_margins.py, seeds 0-4 x threads 1, 2, 4; results/test_margins.md): loss differences
# at most 1.1e-7 relative (headroom 950), weights 5.9e-7 (170); the train loss moved by at least 0.069 (69x 1e-3).
RTOL_LOSS = 1e-4
ATOL_WEIGHTS = 1e-4


def _history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    assert [m.step for m in hist] == list(range(EPOCHS)), (key, [m.step for m in hist])
    return [m.value for m in hist]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(mlflow_server, tiny_csv, tmp_path, margin):
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    ddp_dir.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "ts_neuralode.cli",
        "fit",
        "--data.path",
        str(tiny_csv),
        *ARGS,
        "--data.batch_size",
        "2",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--tracking_uri",
        mlflow_server,
        "--experiment_name",
        "ddp",
        "--checkpoint_dir",
        str(ddp_dir / "ck"),
    ]
    proc = subprocess.run(cmd, cwd=ddp_dir, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one_dir.mkdir()
    old = os.getcwd()
    os.chdir(one_dir)
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
                mlflow_server,
                "--experiment_name",
                "single",
                "--checkpoint_dir",
                str(one_dir / "ck"),
            ]
        )
    finally:
        os.chdir(old)
    assert rc == 0

    client = MlflowClient(mlflow_server)
    runs = {}
    for name in ("ddp", "single"):
        exp = client.get_experiment_by_name(name)
        found = client.search_runs([exp.experiment_id])
        assert len(found) == 1, f"{name}: {len(found)} runs (only rank 0 may create one)"
        runs[name] = found[0]
        assert found[0].info.status == "FINISHED"
    ddp, one = runs["ddp"], runs["single"]
    assert ddp.data.params["trainer/devices"] == "2" and ddp.data.params["trainer/strategy"] == "ddp"
    assert ddp.data.params["batch_size"] == "2" and one.data.params["batch_size"] == "4"
    # the run's scale, recorded once by rank 0: 2 ranks x 2 series = the single run's global batch of 4
    assert (ddp.data.params["world_size"], ddp.data.params["global_batch_size"]) == ("2", "4")
    assert (one.data.params["world_size"], one.data.params["global_batch_size"]) == ("1", "4")
    assert ddp.data.params["strategy"] == "DDPStrategy" and "torch_threads" in ddp.data.params
    assert "sync_dist" not in proc.stderr, proc.stderr[-3000:]  # epoch logs are reduced, no DDP warnings
    assert proc.stderr.count("torch threads: ") == 1  # the thread choice, said once (rank 0's summary)

    for key in ("epoch/train_loss", "epoch/val_loss"):
        a, b = _history(client, ddp.info.run_id, key), _history(client, one.info.run_id, key)
        rel = float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))
        print(f"{key}: DDP {a} vs single {b}: max rel diff {rel:.2e}")
        margin(f"{key}: max relative difference DDP vs single", rel, RTOL_LOSS)
    # training changed the loss, so agreeing after 3 epochs is not agreeing at the initial weights only
    train = _history(client, one.info.run_id, "epoch/train_loss")
    margin("train loss moved over the fit", abs(train[-1] - train[0]), 1e-3, above=True)

    wa = torch.load(ddp_dir / "ck" / "model" / "weights.pt", weights_only=True)
    wb = torch.load(one_dir / "ck" / "model" / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"weights: max abs diff {worst:.2e}")
    margin("weights: max abs difference DDP vs single", worst, ATOL_WEIGHTS)

    # rank 0 alone wrote the checkpoints, the model directory and the artifacts (one set, not one per rank)
    ckpts = sorted(p.name for p in (ddp_dir / "ck").glob("*.ckpt"))
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    arts = {a.path for a in client.list_artifacts(ddp.info.run_id, "plots")}
    assert len(arts) == 2, arts  # one validation-forecast plot per validation series (2)
    assert "MLflow run" in proc.stderr and proc.stderr.count("best checkpoint:") == 1

"""Checkpoints and resume: a fit killed mid-training (SIGKILL) resumes with ``--ckpt_path last`` into the same
MLflow run, which ends with one epoch-level metric entry for every epoch — no gaps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import TINY_FIT_ARGS, checkpoint_epoch, subprocess_env, wait_for_epoch
from ts_neuralode.cli import main
from ts_neuralode.integrations.mlflow.tracking import read_run_file

EPOCHS = 12
KEYS = ("epoch/train_loss", "epoch/val_loss", "epoch/epoch_time_s")


@pytest.mark.slow
def test_killed_fit_resumes_into_the_same_run(mlflow_server, tiny_csv, tmp_path):
    ck = tmp_path / "ck"
    args = [
        "fit",
        "--data.path",
        str(tiny_csv),
        *TINY_FIT_ARGS,
        "--trainer.max_epochs",
        str(EPOCHS),
        "--tracking_uri",
        mlflow_server,
        "--experiment_name",
        "resume",
        "--checkpoint_dir",
        str(ck),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ts_neuralode.cli", *args],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        killed_at = wait_for_epoch(proc, ck / "last.ckpt", 1)
        if killed_at is not None:
            proc.kill()  # SIGKILL: no chance to clean up or finish the MLflow run
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, f"no checkpoint for epoch >= 1 before the fit ended: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -9

    run_id = read_run_file(ck)["run_id"]
    client = MlflowClient(mlflow_server)
    before = client.get_run(run_id)
    assert before.info.status == "RUNNING"  # killed: never finished
    steps_before = {m.step for m in client.get_metric_history(run_id, "epoch/train_loss")}
    resume_from = checkpoint_epoch(ck / "last.ckpt")
    assert 1 <= resume_from < EPOCHS - 1 and max(steps_before) < EPOCHS - 1, "the kill came too late to test resume"

    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main([*args, "--ckpt_path", "last"])
    finally:
        os.chdir(old)
    assert rc == 0

    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id], "the resumed fit must continue the same MLflow run"
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    for key in KEYS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        # every epoch at least once (an epoch cut short after its metrics but before its checkpoint is re-run,
        # so it may appear twice), nothing beyond the last
        assert sorted(set(steps)) == list(range(EPOCHS)), (key, sorted(steps))
    # it resumed from the latest epoch, not from scratch nor from an older (e.g. the best) checkpoint: only the
    # epochs the killed process logged after its last checkpoint are logged twice
    train_steps = [m.step for m in client.get_metric_history(run_id, "epoch/train_loss")]
    twice = {s for s in train_steps if train_steps.count(s) > 1}
    assert twice <= set(range(resume_from + 1, max(steps_before) + 1)), (resume_from, sorted(train_steps))
    assert checkpoint_epoch(ck / "last.ckpt") == EPOCHS - 1  # last.ckpt follows the latest epoch

"""The benchmark in MLflow: a parent run with one nested run per model (written between models, never timed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ts_neuralode.integrations.mlflow.io import finite_metrics, log_batch, open_run
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri

TAGS = {"ts_neuralode.subcommand": "benchmark"}


class BenchmarkTracker:
    """Parent run + one nested run per model, written with MlflowClient between models (never while timed)."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str | None, params: dict) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.client, self.exp_id, run = open_run(self.uri, experiment, run_name or "benchmark", TAGS)
        self.parent_id = run.info.run_id
        log_batch(self.client, self.parent_id, params=params)

    def child(self, name: str, params: dict, row: dict, history: dict) -> str:
        run = self.client.create_run(
            self.exp_id,
            run_name=name,
            tags={"mlflow.parentRunId": self.parent_id, **TAGS, "ts_neuralode.benchmark_model": name},
        )
        metrics = finite_metrics(
            {k: v for k, v in row.items() if k not in ("model", "family", "evolution", "method", "error")}
        )
        for key, values in history.items():
            metrics += [(f"epoch/{key}", float(v), step) for step, v in enumerate(values) if math.isfinite(v)]
        log_batch(self.client, run.info.run_id, params=params, metrics=metrics)
        if row.get("error"):
            self.client.set_tag(run.info.run_id, "ts_neuralode.error", row["error"][:5000])
        self.client.set_terminated(run.info.run_id, "FAILED" if row.get("error") else "FINISHED")
        return run.info.run_id

    def finish(self, files: Sequence[Path], status: str = "FINISHED") -> None:
        for f in files:
            if Path(f).is_file():
                self.client.log_artifact(self.parent_id, str(f))
        self.client.set_terminated(self.parent_id, status)

"""The one low-level MLflow layer: open an experiment, write params and metrics in MLflow's batch sizes.

Used by the fit's tracking callback (:mod:`ts_neuralode.integrations.mlflow.tracking`) and the benchmark's runs
(:mod:`ts_neuralode.api.benchmark.tracker`); both go through an ``MlflowClient`` and never log inside a timed loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ts_neuralode.errors import ConfigError

#: MLflow's per-call limits of ``log_batch``
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 250
#: the MLflow 3 UI's experiment type: forecasting (not GenAI: "custom_model_development" opened the GenAI layout and
#: listed the model under "Agent versions" in MLflow 3.17)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "forecasting"
#: the kind earlier versions set: moved to EXPERIMENT_KIND
OLD_EXPERIMENT_KIND = "custom_model_development"


def mark_training_experiment(client, experiment_id: str) -> None:
    """Tag the experiment as a forecasting one in the MLflow UI, unless it has another kind already (the kind earlier
    versions of this package set is updated)."""
    exp = client.get_experiment(experiment_id)
    if (exp.tags or {}).get(EXPERIMENT_KIND_TAG, OLD_EXPERIMENT_KIND) == OLD_EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def open_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, str]):
    """``(client, experiment id, run)``: a new run in ``experiment`` (created if missing) at ``uri``; a one-line
    ConfigError when the store cannot be opened."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else client.create_experiment(experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        )
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    except Exception as err:  # MlflowException, sqlalchemy errors: a user-fixable URI problem
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"--tracking_uri {uri}: cannot open the MLflow store ({first}); pass a writable "
            "sqlite:///FILE.db or a reachable server URL, or --tracking false"
        ) from err
    return client, exp_id, run


def finite_metrics(values: Mapping[str, Any], step: int = 0) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` for each finite number of ``values`` (strings, NaN and inf are left out)."""
    return [(k, float(v), step) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(float(v))]


def log_batch(
    client, run_id: str, params: Mapping[str, Any] | None = None, metrics: Iterable[tuple[str, float, int]] = ()
) -> None:
    """Params (values as strings, cut to MLflow's 250 characters) and ``(key, value, step)`` metrics, in as
    few ``log_batch`` calls as MLflow's limits allow (100 params, 1000 metrics a call)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ps = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in (params or {}).items()]
    ms = [Metric(k, float(v), now, step) for k, v, step in metrics]
    for i in range(0, len(ps), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=ps[i : i + MAX_PARAMS_PER_BATCH])
    for i in range(0, len(ms), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=ms[i : i + MAX_METRICS_PER_BATCH])

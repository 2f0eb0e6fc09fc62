"""What a trial of the automatic model choice reports (:mod:`ts_neuralode.api.model_choice`): the pruning callback
(:class:`TrialCallback`: the metric to Optuna, the run to MLflow), the MLflow parent and child runs
(:class:`_Tracking`), and the console (quiet trials, the progress line)."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from ts_neuralode.api.model_choice_study import ATTR, DEFAULT_METRIC, PARENT_WAIT_S, _wait_attr
from ts_neuralode.api.preflight import tracking_store
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri


class TrialCallback(Callback):
    """Reports ``metric`` to the Optuna ``trial`` after every validation and stops the fit when the pruner says so
    (``pruned``), when ``patience`` validations passed without improvement, or at ``deadline`` (``time.monotonic``;
    ``stopped_by_time``). Keeps each epoch's value and the best one (``best``, ``best_epoch``). With a
    ``parent_run_id`` it makes the fit's MLflow run a child of it (and adds ``tags``); ``run_id`` is that run."""

    def __init__(
        self,
        trial=None,
        metric: str = DEFAULT_METRIC,
        *,
        deadline: float | None = None,
        patience: int | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.trial, self.metric, self.deadline, self.patience = trial, metric, deadline, patience
        self.parent_run_id, self.tags = parent_run_id, dict(tags or {})
        self.values: list[float] = []
        self.best: float = math.inf
        self.best_epoch: int | None = None
        self.pruned = self.stopped_by_time = False
        self.run_id: str | None = None
        self.client: Any = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)
        if logger is None or self.parent_run_id is None:
            return
        try:
            self.run_id, self.client = logger.run_id, logger.experiment
            self.client.set_tag(self.run_id, "mlflow.parentRunId", self.parent_run_id)
            for k, v in self.tags.items():
                self.client.set_tag(self.run_id, k, v)
        except Exception as err:  # tracking problems never stop a trial (the fit's own tracking reports them)
            warnings.warn(
                f"model choice: cannot tag MLflow run as a child of {self.parent_run_id} ({err})", stacklevel=1
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_by_time = True
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if self.metric not in metrics:
            known = sorted(k for k in metrics if k.startswith("val_"))
            raise ConfigError(
                f"model choice: the fit logs no {self.metric!r} to select on; pass metric= one of "
                f"{', '.join(known) or 'val_loss'}"
            )
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            value = math.inf
        epoch = int(trainer.current_epoch)
        self.values.append(value)
        if value < self.best:
            self.best, self.best_epoch = value, epoch
        if self.trial is not None:
            self.trial.report(value if math.isfinite(value) else sys.float_info.max, epoch)
            if self.trial.should_prune():
                self.pruned = True
                trainer.should_stop = True
        if self.patience and self.best_epoch is not None and epoch - self.best_epoch >= self.patience:
            trainer.should_stop = True


class _Quiet:
    """A trial's output (Lightning's messages, warnings, prints) goes to its log file instead of the console."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8")
        self.levels = {}
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            lg = logging.getLogger(name)
            self.levels[name] = lg.level
            lg.setLevel(logging.WARNING)
        self.redirects = contextlib.ExitStack()
        self.redirects.enter_context(contextlib.redirect_stdout(self.file))
        self.redirects.enter_context(contextlib.redirect_stderr(self.file))
        return self

    def __exit__(self, *exc) -> None:
        self.redirects.close()
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        self.file.close()


class _Progress:
    """A bar on a TTY (tqdm), else one line per trial on stderr; nothing when disabled."""

    def __init__(self, enabled: bool | None, total: int | None, done: int) -> None:
        self.stream = sys.stderr
        self.total = total
        self.enabled = True if enabled is None else bool(enabled)
        self.bar = None
        if self.enabled and (enabled is None and self.stream.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="auto", unit="trial", file=self.stream)

    def trial(self, line: str, postfix: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
        else:
            print(f"auto: {line}", file=self.stream, flush=True)

    def note(self, line: str) -> None:
        """A line that does not count as a finished trial (the bar does not move)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"auto: {line}", file=self.stream)
        else:
            print(f"auto: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Tracking:
    """The search's parent run (created once per study; workers and resumes reuse it)."""

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment_name: str | None, run_name: str | None):
        self.enabled = enabled
        self.client = None
        self.uri = None
        self.experiment_name = experiment_name or "ts_neuralode"
        self.run_name = run_name
        if enabled:
            from mlflow import MlflowClient

            self.uri = tracking_store(resolve_tracking_uri(tracking_uri), off="pass tracking=False")
            self.client = MlflowClient(self.uri)

    def parent(self, study, created: bool, settings: Mapping[str, Any]) -> str | None:
        if not self.enabled:
            return None
        key = f"{ATTR}.mlflow_parent_run_id"
        fresh = not created and not study.get_trials(deepcopy=False)  # a worker that created it a moment ago
        run_id = study.user_attrs.get(key) or (_wait_attr(study, key, PARENT_WAIT_S) if fresh else None)
        if run_id is not None:
            with contextlib.suppress(Exception):
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        exp = self.client.get_experiment_by_name(self.experiment_name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment_name)
        run = self.client.create_run(
            exp_id,
            run_name=self.run_name or f"auto_{study.study_name}",
            tags={"ts_neuralode.kind": "model_choice", "ts_neuralode.study": study.study_name},
        )
        run_id = run.info.run_id
        for k, v in settings.items():
            with contextlib.suppress(Exception):
                self.client.log_param(run_id, k, str(v)[:6000])
        study.set_user_attr(key, run_id)
        return run_id

    def tag(self, run_id: str | None, tags: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        if not self.enabled or run_id is None:
            return
        with contextlib.suppress(Exception):
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))
            for k, v in (metrics or {}).items():
                if v is not None and math.isfinite(v):
                    self.client.log_metric(run_id, k, float(v))

    def end(self, run_id: str | None, status: str) -> None:
        if self.enabled and run_id is not None:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, status)

"""Lightning pieces that keep a run safe; the CLI adds them to every ``fit``/``validate``/``test``/``predict``.

* :class:`TrainingGuard` stops a fit whose loss or gradients become NaN/inf *before* the bad step changes the
  weights, and turns a solver that cannot make progress into one line (what, at which epoch/step, what to try).
  The exception goes through Lightning's own error path, so no checkpoint is written after it, the model
  directory (written only at the end of a fit) is left as it was, and the MLflow run is marked FAILED; the
  guard adds the reason as the run's ``ts_neuralode.failure`` tag.
* :class:`AtomicCheckpointIO` writes checkpoints atomically (:mod:`ts_neuralode.core.atomic`): a kill during a save
  leaves the previous checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger

from ts_neuralode.core.atomic import atomic_torch_save
from ts_neuralode.errors import TrainingError
from ts_neuralode.models.evolution_config import evolution_kind
from ts_neuralode.solvers.errors import SolverError

log = logging.getLogger(__name__)

FAILURE_TAG = "ts_neuralode.failure"
MESSAGE_ATTR = "ts_neuralode_message"  # the one-line explanation attached to a solver exception


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic (temporary file beside the checkpoint + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def solver_failure(exception: BaseException) -> bool:
    """Whether ``exception`` is the solver giving up: :class:`SolverError`, or ``odeint`` refusing a NaN/inf
    initial state or time (what a diverged encoder hands it)."""
    if isinstance(exception, SolverError):
        return True
    return isinstance(exception, ValueError) and "contains NaN/inf" in str(exception)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _first_line(exception: BaseException) -> str:
    text = str(exception).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exception).__name__


class TrainingGuard(Callback):
    """Stop a run that went numerically wrong with one line; see the module docstring.

    Args:
        ckpt_dir: the checkpoint directory, named in the message (its files are left as they were).
    """

    def __init__(self, ckpt_dir: str | Path | None = None) -> None:
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.failure: str | None = None
        self._batch_idx = 0

    # -- where and what to try --------------------------------------------------------------------
    def _where(self, trainer: Trainer) -> str:
        stage = trainer.state.stage.value if trainer.state.stage is not None else "run"
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if stage == "train":
            where += f" (batch {self._batch_idx} of the epoch)"
        elif stage not in ("train", "run"):
            where += f" ({stage})"
        return where

    @staticmethod
    def _lr(trainer: Trainer, pl_module: LightningModule) -> str:
        """The learning rate in use (after any decay schedule), else the configured one."""
        try:
            return f"{trainer.optimizers[0].param_groups[0]['lr']:g}"
        except (AttributeError, IndexError, KeyError, TypeError):
            return str((getattr(pl_module, "hparams", {}) or {}).get("lr", "?"))

    def _advice(self, trainer: Trainer, pl_module: LightningModule, solver_message: str | None = None) -> str:
        """What to try. ``solver_message``: the solver's own failure, when it is the solver that stopped."""
        hp = getattr(pl_module, "hparams", {}) or {}
        is_ode = evolution_kind(hp.get("evolution")) == "ode"
        lr = [
            f"a lower --model.lr (now {self._lr(trainer, pl_module)})",
            "gradient clipping (--trainer.gradient_clip_val 1.0)",
        ]
        if solver_message is None:
            tighter = "tighter --model.evolution.rtol/--model.evolution.atol or another --model.evolution.method"
            tries = lr + ([tighter] if is_ode else [])
        elif "max_steps" in solver_message:  # too many steps: the tolerances (or stiff dynamics) are the cause
            tries = [
                "looser --model.evolution.rtol/--model.evolution.atol",
                "a fixed-step method (e.g. --model.evolution.method rk4 --model.evolution.step_size 0.1)",
                *lr,
            ]
        else:  # step size underflow or a non-finite state: dynamics that blow up
            tries = [
                *lr,
                "tighter --model.evolution.rtol/--model.evolution.atol",
                "another --model.evolution.method (e.g. rk4 with --model.evolution.step_size 0.1)",
            ]
        return "try " + ", ".join(tries)

    @staticmethod
    def _weights_finite(pl_module: LightningModule) -> bool:
        params = [p.detach() for p in pl_module.parameters()]
        return not params or bool(torch.stack([p.isfinite().all() for p in params]).all())

    def _kept(self) -> str:
        """What is left on disk (fit only: validate/test/predict write no checkpoints)."""
        if self.ckpt_dir is None:
            return ""
        last = self.ckpt_dir / "last.ckpt"
        if last.is_file():
            return f"the checkpoints in {self.ckpt_dir} are as they were (the last good one: {last})"
        return f"no checkpoint was written to {self.ckpt_dir} yet"

    def _diverged(self, trainer: Trainer, pl_module: LightningModule, what: str) -> str:
        return _join(
            f"training diverged at {self._where(trainer)}: {what}", self._advice(trainer, pl_module), self._kept()
        )

    def _stop(self, trainer: Trainer, pl_module: LightningModule, what: str) -> None:
        self.failure = self._diverged(trainer, pl_module, what)
        raise TrainingError(self.failure)

    # -- checks -----------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        # Under DDP a rank must not stop alone (the others would wait in the gradient all-reduce): a non-finite
        # loss there makes every rank's reduced gradients non-finite, which the next check catches on all ranks.
        if getattr(trainer, "world_size", 1) > 1:
            return
        value = loss.detach()
        if not bool(torch.isfinite(value).all()):
            self._stop(trainer, pl_module, f"the loss became {float(value.float().sum()):g}")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if "16" in str(getattr(trainer, "precision", "")):
            return  # fp16 loss scaling expects inf gradients now and then: the scaler skips those steps itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([g.detach().isfinite().all() for g in grads]).all()):
            self._stop(trainer, pl_module, "the gradients became NaN/inf")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # finite gradients times a huge learning rate can still overflow the weights; stop before anything saves them
        if not self._weights_finite(pl_module):
            self._stop(trainer, pl_module, "the weights became NaN/inf in the last optimizer step")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if solver_failure(exception) and not getattr(exception, MESSAGE_ATTR, None):
            if not self._weights_finite(pl_module):  # the previous step blew the weights up; the solver only saw it
                self.failure = self._diverged(
                    trainer,
                    pl_module,
                    f"the weights became NaN/inf (the solver then stopped: {_first_line(exception)})",
                )
            elif not isinstance(exception, SolverError):  # odeint refused a NaN/inf state: it came from upstream
                self.failure = self._diverged(
                    trainer,
                    pl_module,
                    f"the model's state became NaN/inf before an ODE solve ({_first_line(exception)})",
                )
            else:
                first = _first_line(exception)
                self.failure = _join(
                    f"the ODE solver could not go on at {self._where(trainer)} ({first})",
                    self._advice(trainer, pl_module, first),
                    self._kept(),
                )
            setattr(exception, MESSAGE_ATTR, self.failure)
        elif isinstance(exception, TrainingError):
            self.failure = str(exception)
        if self.failure and trainer.is_global_zero:
            logger = find_logger(trainer)
            if logger is not None:  # the logger marks the run FAILED right after this hook
                safe = getattr(logger, "safe_call", None)
                call = safe if safe is not None else (lambda fn, *a: fn(*a))
                call(lambda: logger.experiment.set_tag(logger.run_id, FAILURE_TAG, self.failure[:5000]))


def find_logger(trainer: Trainer) -> MLFlowLogger | None:
    """The run's MLflow logger, or None (also once tracking has failed, see
    :class:`ts_neuralode.integrations.mlflow.tracking.TrackingLogger`)."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return None if getattr(logger, "tracking_failed", False) else logger
    return None

"""The parts of a Lightning ``Trainer`` every run of the project gets: the best and ``last`` checkpoints, MLflow
tracking (logger + callback), atomic checkpoint writes. Used by :func:`ts_neuralode.api.fitting.train` (fit) and by
the ``validate | test | predict`` subcommands (:mod:`ts_neuralode.cli.lightning`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar

from ts_neuralode.training.callbacks import AtomicCheckpointIO

#: metric the best checkpoint (and ``fit_info["best_score"]``) follow when the fit validates; else the training loss
VAL_MONITOR = "val_loss"
TRAIN_MONITOR = "train_loss"


def has_validation_series(datamodule) -> bool:
    """Whether validation will run on any series (val_fraction > 0 can still round to none for few series)."""
    if datamodule is None:
        return True
    if hasattr(datamodule, "split_ids"):
        return len(datamodule.split_ids("val")) > 0
    return getattr(datamodule, "val_fraction", 0) > 0


def progress_bar(trainer_cfg: dict, callbacks: list) -> list:
    """The TQDM progress bar when the run shows one and the user chose none: Lightning would pick its Rich bar
    whenever ``rich`` happens to be installed (a dependency of other tools), which writes nothing per epoch when
    the output is not a terminal — a fit's log would then depend on what else the environment holds."""
    if trainer_cfg.get("enable_progress_bar", True) is False or any(isinstance(c, ProgressBar) for c in callbacks):
        return []
    return [TQDMProgressBar()]


def checkpoint_callbacks(ckpt_dir: Path, has_val: bool) -> list:
    """The best checkpoint (by ``val_loss`` when the fit validates; first, so that ``trainer.checkpoint_callback``
    is this one) and ``last.ckpt`` (the latest epoch, for ``--ckpt_path last``)."""
    out = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="epoch{epoch:03d}-{val_loss:.4f}" if has_val else "epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor=VAL_MONITOR if has_val else None,
            mode="min",
            save_top_k=1,
            save_last=not has_val,
            every_n_epochs=1,
        )
    ]
    if has_val:
        # last.ckpt must be the latest epoch for '--ckpt_path last'. Lightning >= 2.5 refreshes save_last only in a
        # step where a top-k checkpoint was saved, i.e. when val_loss improved, so a resume would restart from the
        # best epoch and redo the later ones. A second, unmonitored checkpoint named "last" (overwritten every
        # epoch, never versioned) is.
        out.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="last",
                monitor=None,
                save_top_k=1,
                save_last=False,
                every_n_epochs=1,
                enable_version_counter=False,
            )
        )
    return out


def with_atomic_checkpoints(plugins: Any) -> list:
    """Trainer plugins plus :class:`AtomicCheckpointIO` (a kill during a save keeps the old file) unless one of
    them already writes checkpoints."""
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    return plugins if any(hasattr(p, "save_checkpoint") for p in plugins) else [*plugins, AtomicCheckpointIO()]


__all__ = ["VAL_MONITOR", "TRAIN_MONITOR", "has_validation_series", "checkpoint_callbacks", "with_atomic_checkpoints"]

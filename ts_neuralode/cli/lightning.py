"""The Lightning side of ``ts-neuralode validate | test | predict``: :class:`TSNeuralODECLI`.

LightningCLI over :class:`~ts_neuralode.training.ForecastingModule` (``--model.*``, the evolution nested under
``--model.evolution.*``) and :class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule`
(``--data.*``), with the project's extra options (:func:`ts_neuralode.training.options.add_project_options`),
the tracking callbacks, and one-line errors for empty evaluation splits. ``fit`` is not run here: it is parsed by
:class:`ts_neuralode.training.options.FitOptions` and run by the API (:func:`ts_neuralode.api.fitting.train`).
Imported only by those subcommands (importing Lightning is slow; ``generate`` does not need it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ts_neuralode.api import preflight
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow import tracking
from ts_neuralode.integrations.mlflow.fit_tracking import tracking_parts
from ts_neuralode.training.callbacks import TrainingGuard
from ts_neuralode.training.checkpoints import with_atomic_checkpoints
from ts_neuralode.training.options import HintingCLI, add_project_options

PROG = "ts-neuralode"


class TSNeuralODECLI(HintingCLI):
    """``validate | test | predict`` (``fit`` is parsed by :class:`~ts_neuralode.training.options.FitOptions` and run
    by :func:`ts_neuralode.api.fitting.train`)."""

    def add_arguments_to_parser(self, parser) -> None:
        add_project_options(parser)

    def _parse_ckpt_path(self) -> None:
        # Lightning loads --ckpt_path here (for its hyperparameters), before before_instantiate_classes: a damaged
        # or foreign file is one line instead of torch's traceback
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            preflight.checkpoint_file(ckpt)
        super()._parse_ckpt_path()

    # -- before the trainer exists: checkpoint path, MLflow run to continue ----------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = Path(cfg.trainer.get("default_root_dir") or os.getcwd())
        self.ckpt_dir = Path(cfg.get("checkpoint_dir") or root / "checkpoints")
        preflight.lightning_run(self.subcommand, cfg, self.ckpt_dir)  # before any data is read or model built
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last":
            last = self.ckpt_dir / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = str(last)
            else:
                raise ConfigError(
                    f"--ckpt_path last: no checkpoint at {last}; run 'ts-neuralode fit' first "
                    "or pass --checkpoint_dir / an explicit --ckpt_path"
                )
        elif ckpt not in (None, "best", "hpc", "registry") and not Path(ckpt).is_file():
            raise ConfigError(
                f"--ckpt_path {ckpt}: checkpoint file not found; pass the path of a .ckpt "
                "file, or 'last' to resume from the checkpoint directory"
            )
        if ckpt == "best":
            raise ConfigError("--ckpt_path best only works inside one fit; pass the path of a .ckpt file")
        if cfg.get("register_as") and not (cfg.get("tracking") and cfg.get("log_model")):
            raise ConfigError(
                f"--register_as {cfg.get('register_as')} registers the model logged to MLflow; it needs "
                "--tracking true and --log_model true"
            )
        if "weights_only" in cfg and cfg.get("weights_only") is None:
            cfg.weights_only = True
        self.resume_run_id = None
        if cfg.get("ckpt_path"):
            self.resume_run_id = tracking.run_id_from_checkpoint(cfg.ckpt_path)
            if self.resume_run_id is None:
                info = tracking.read_run_file(Path(cfg.ckpt_path).parent) or {}
                self.resume_run_id = info.get("run_id")

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        callbacks = [TrainingGuard(None)]
        kwargs["plugins"] = with_atomic_checkpoints(self._get(self.config_init, "trainer", default={}).get("plugins"))
        logger, track_cbs = tracking_parts(cfg, self.subcommand, self.ckpt_dir, self.resume_run_id)
        if logger is not None:
            kwargs["logger"] = logger
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*callbacks, *track_cbs]}
        return super().instantiate_trainer(**kwargs)

    def before_validate(self) -> None:
        self._require_split("val", "validate", "--data.val_fraction")

    def before_test(self) -> None:
        self._require_split("test", "test", "--data.test_fraction")

    def _require_split(self, split: str, what: str, option: str) -> None:
        """Evaluating an empty split would 'succeed' and score nothing: say so instead."""
        dm = self.datamodule
        if dm is None or not hasattr(dm, "split_ids") or len(dm.split_ids(split)):
            return
        n = len(dm.series_ids)
        raise ConfigError(
            f"{PROG} {what}: the data split has no {split} series ({n} series, {option}="
            f"{getattr(dm, split + '_fraction', '?')}); raise {option} (with the same --data.seed "
            f"as the fit) or evaluate another split"
        )

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            print(
                "predict: ran Lightning's predict loop (forecasts at each series' own times, returned to "
                "Python, nothing written); for a CSV and PNGs at future times use "
                f"'{PROG} forecast --model <model directory> --data.path <csv> --horizon ...'",
                file=sys.stderr,
            )

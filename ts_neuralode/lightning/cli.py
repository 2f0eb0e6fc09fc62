"""The Lightning side of ``ts-neuralode fit | validate | test | predict``: :class:`TSNeuralODECLI`.

LightningCLI over :class:`~ts_neuralode.lightning.ForecastingModule` (``--model.*``, the evolution nested under
``--model.evolution.*``) and :class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule`
(``--data.*``), with the project's extra options (MLflow, checkpoint and model directories), its checkpoint
callbacks, the model export and tracking callbacks, and one-line errors for empty evaluation splits.
Imported only by those subcommands (importing Lightning is slow; ``generate`` does not need it).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from ts_neuralode import preflight, tracking
from ts_neuralode.callbacks import AtomicCheckpointIO, TrainingGuard
from ts_neuralode.errors import ConfigError
from ts_neuralode.export import ModelExportCallback

PROG = "ts-neuralode"


class TSNeuralODECLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--tracking_uri", type=str | None, default=None,
                            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
        parser.add_argument("--experiment_name", type=str, default="ts_neuralode", help="MLflow experiment")
        parser.add_argument("--run_name", type=str | None, default=None, help="MLflow run name")
        parser.add_argument("--artifact_location", type=str | None, default=None,
                            help="where a new MLflow experiment keeps artifacts (default: the store's own, "
                                 "./mlruns for a sqlite file)")
        parser.add_argument("--tracking", type=bool, default=True, help="record the run in MLflow")
        parser.add_argument("--checkpoint_dir", type=str | None, default=None,
                            help="checkpoints (+ mlflow_run.json); default <trainer.default_root_dir>/checkpoints")
        parser.add_argument("--model_dir", type=str | None, default=None,
                            help="fit: also write the reloadable model directory here (default "
                                 "<checkpoint_dir>/model)")
        parser.add_argument("--log_model", type=bool, default=True,
                            help="fit: log the model directory and forecast plots to MLflow")
        parser.add_argument("--register_as", type=str | None, default=None,
                            help="fit: also register the logged MLflow model under this name")
        parser.link_arguments("data.num_channels", "model.input_dim", apply_on="instantiate")
        # --data.season (a duration) reaches the seasonal baseline in model time units
        parser.link_arguments("data.season_period", "model.season_period", apply_on="instantiate")
        # known-future covariates (--data.future_cols, --data.calendar): their fitted spec sizes the model's control
        parser.link_arguments("data.covariates", "model.covariates", apply_on="instantiate")

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
            elif self.subcommand == "fit":
                warnings.warn(f"--ckpt_path last: no {last} yet; training from scratch", stacklevel=1)
                cfg.ckpt_path = None
            else:
                raise ConfigError(f"--ckpt_path last: no checkpoint at {last}; run 'ts-neuralode fit' first "
                                  "or pass --checkpoint_dir / an explicit --ckpt_path")
        elif ckpt not in (None, "best", "hpc", "registry") and not Path(ckpt).is_file():
            raise ConfigError(f"--ckpt_path {ckpt}: checkpoint file not found; pass the path of a .ckpt "
                              "file, or 'last' to resume from the checkpoint directory")
        if ckpt == "best" and self.subcommand != "fit":
            raise ConfigError("--ckpt_path best only works inside one fit; pass the path of a .ckpt file")
        if cfg.get("register_as") and not (cfg.get("tracking") and cfg.get("log_model")):
            raise ConfigError(f"--register_as {cfg.get('register_as')} registers the model logged to MLflow; it needs "
                              "--tracking true and --log_model true")
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
        trainer_cfg = cfg.trainer
        callbacks = [TrainingGuard(self.ckpt_dir if self.subcommand == "fit" else None)]
        if self.subcommand == "fit":  # the reloadable model directory (written before MLflow logs it)
            callbacks.append(ModelExportCallback(cfg.get("model_dir") or self.ckpt_dir / "model"))
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # a kill during a save keeps the old file
        logger_cfg = trainer_cfg.get("logger")
        if cfg.get("tracking") and logger_cfg in (None, True):
            tags = {"ts_neuralode.subcommand": self.subcommand}
            uri = tracking.resolve_tracking_uri(cfg.get("tracking_uri"))
            kwargs["logger"] = tracking.make_logger(
                uri, cfg.get("experiment_name"), cfg.get("run_name"),
                run_id=self.resume_run_id, tags=tags, artifact_location=cfg.get("artifact_location"),
            )
            callbacks.append(tracking.MlflowTrackingCallback(ckpt_dir=self.ckpt_dir,
                                                             log_model=bool(cfg.get("log_model")),
                                                             register_as=cfg.get("register_as")))
        user_cbs = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        if self.subcommand == "fit" and trainer_cfg.get("enable_checkpointing", True) is not False and not any(
                isinstance(c, ModelCheckpoint) for c in user_cbs):
            has_val = has_validation_series(self.datamodule) and (
                trainer_cfg.get("limit_val_batches") not in (0, 0.0))
            # The best checkpoint comes first: trainer.checkpoint_callback (best_model_path) is this one.
            callbacks.append(ModelCheckpoint(
                dirpath=str(self.ckpt_dir), filename="epoch{epoch:03d}-{val_loss:.4f}" if has_val else
                "epoch{epoch:03d}", auto_insert_metric_name=False, monitor="val_loss" if has_val else None,
                mode="min", save_top_k=1, save_last=not has_val, every_n_epochs=1,
            ))
            if has_val:
                # last.ckpt must be the latest epoch for '--ckpt_path last'. Lightning >= 2.5 refreshes
                # save_last only in a step where a top-k checkpoint was saved, i.e. when val_loss improved,
                # so a resume would restart from the best epoch and redo the later ones. A second,
                # unmonitored checkpoint named "last" (overwritten every epoch, never versioned) is.
                callbacks.append(ModelCheckpoint(
                    dirpath=str(self.ckpt_dir), filename="last", monitor=None, save_top_k=1, save_last=False,
                    every_n_epochs=1, enable_version_counter=False,
                ))
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """One line at the start of every fit: what each column of the data is used as."""
        dm = self.datamodule
        if self.trainer.is_global_zero and dm is not None and hasattr(dm, "column_summary"):
            print(dm.column_summary, file=sys.stderr)

    def after_fit(self) -> None:
        cb = next((c for c in self.trainer.callbacks if isinstance(c, tracking.MlflowTrackingCallback)), None)
        export = next((c for c in self.trainer.callbacks if isinstance(c, ModelExportCallback)), None)
        if self.trainer.is_global_zero:
            ckpt = self.trainer.checkpoint_callback
            best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
            lines = []
            if best:
                lines.append(f"best checkpoint: {best}")
            if export is not None and export.calibration_line:
                lines.append(export.calibration_line)
            if export is not None and export.model_dir_written:
                lines.append(f"model directory: {export.model_dir_written}  (ts-neuralode forecast --model ...)")
            failed = any(getattr(lg, "tracking_failed", False) for lg in self.trainer.loggers)
            if cb is not None and cb.run_id:
                uri = cb.tracking_uri or ""
                lines.append(f"MLflow run {cb.run_id} at {uri}" + (" (incomplete: tracking failed during the "
                                                                    "fit)" if failed else ""))
                if uri.startswith("sqlite:"):
                    lines.append(f"  view it: mlflow ui --backend-store-uri {uri}")
                if cb.model_uri:
                    lines.append(f"MLflow model {cb.model_uri}  (mlflow.pyfunc.load_model('{cb.model_uri}'), or "
                                 f"runs:/{cb.run_id}/forecaster)")
            for line in lines:
                print(line, file=sys.stderr)

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
        raise ConfigError(f"{PROG} {what}: the data split has no {split} series ({n} series, {option}="
                          f"{getattr(dm, split + '_fraction', '?')}); raise {option} (with the same --data.seed "
                          f"as the fit) or evaluate another split")

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            print("predict: ran Lightning's predict loop (forecasts at each series' own times, returned to "
                  "Python, nothing written); for a CSV and PNGs at future times use "
                  f"'{PROG} forecast --model <model directory> --data.path <csv> --horizon ...'", file=sys.stderr)


def has_validation_series(datamodule) -> bool:
    """Whether validation will run on any series (val_fraction > 0 can still round to none for few series)."""
    if datamodule is None:
        return True
    if hasattr(datamodule, "split_ids"):
        return len(datamodule.split_ids("val")) > 0
    return getattr(datamodule, "val_fraction", 0) > 0


def check_option_spelling(argv: Sequence[str]) -> None:
    """One line naming the new spelling when ``argv`` or a ``--config`` file uses the flat evolution options of
    older versions (``--model.evolution gru_flow``, ``--model.method rk4``; now ``--model.evolution.kind``,
    ``--model.evolution.method``)."""
    from ts_neuralode.models.evolution_config import LEGACY_FLAT_OPTIONS

    def check(key: str, value: Any, where: str) -> None:
        if key in LEGACY_FLAT_OPTIONS:
            raise ConfigError(f"{where}model.{key} is now {where}model.evolution.{key} (the evolution options are "
                              "nested under model.evolution)")
        if key == "evolution" and isinstance(value, str) and value.isidentifier():
            raise ConfigError(f"{where}model.evolution {value} is now {where}model.evolution.kind {value}")

    argv = list(argv)
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if name.startswith("--model."):
            check(name[len("--model."):], value, "--")
        elif name == "--config" and Path(value).is_file():
            import yaml

            try:
                model = (yaml.safe_load(Path(value).read_text()) or {}).get("model")
            except (yaml.YAMLError, AttributeError):
                continue  # jsonargparse reports a broken file in its own words
            for key, val in (model.items() if isinstance(model, dict) else ()):
                try:
                    check(key, val, "")
                except ConfigError as err:
                    raise ConfigError(f"--config {value}: {err}") from None

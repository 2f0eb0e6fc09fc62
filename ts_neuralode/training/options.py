"""The options of a fit, declared once: the parser of ``ts-neuralode fit`` and of :func:`ts_neuralode.api.fitting.fit`.

LightningCLI's parser generated from the signatures of :class:`~ts_neuralode.training.ForecastingModule`
(``--model.*``, the evolution nested under ``--model.evolution.*``),
:class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule` (``--data.*``) and Lightning's ``Trainer``
(``--trainer.*``), plus the project's own options (:func:`add_project_options`: MLflow, checkpoint and model
directories) and ``--ckpt_path`` / ``--weights_only`` of ``Trainer.fit``. :class:`FitOptions` only builds the
parser and parses: it instantiates nothing and runs nothing (the API does: :func:`ts_neuralode.api.fitting.train`),
so the command line, a config file and the Python API's dicts all go through the same declarations, defaults and
type checks.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningCLI

from ts_neuralode.core.option_hints import unknown_option_hint
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.evolution_config import LEGACY_FLAT_OPTIONS
from ts_neuralode.training.module import ForecastingModule

PROG = "ts-neuralode"


@dataclass(frozen=True)
class TrackingOptions:
    """MLflow: where and under which names a run is recorded.

    Args:
        tracking_uri: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)
        experiment_name: MLflow experiment of a new run
        run_name: MLflow name of a new run (default: the command's)
        tracking: record the run in MLflow (false: nothing)
    """

    tracking_uri: str | None = None
    experiment_name: str = "ts_neuralode"
    run_name: str | None = None
    tracking: bool = True


@dataclass(frozen=True)
class FitOutputs:
    """Where a fit keeps what it makes.

    Args:
        artifact_location: where a new MLflow experiment keeps artifacts (default: the store's own, ./mlruns for a
            sqlite file)
        checkpoint_dir: checkpoints (+ mlflow_run.json); default <trainer.default_root_dir>/checkpoints
        model_dir: fit: also write the reloadable model directory here (default <checkpoint_dir>/model)
        log_model: fit: log the model directory and forecast plots to MLflow
        register_as: fit: also register the logged MLflow model under this name
    """

    artifact_location: str | None = None
    checkpoint_dir: str | None = None
    model_dir: str | None = None
    log_model: bool = True
    register_as: str | None = None


@dataclass(frozen=True)
class ResumeOptions:
    """Resuming a fit (``Trainer.fit``'s options; LightningCLI adds them to its own ``fit`` subcommand).

    Args:
        ckpt_path: resume from this checkpoint: a .ckpt path, or 'last' (<checkpoint_dir>/last.ckpt)
        weights_only: load --ckpt_path with torch.load(weights_only=...) (default true)
    """

    ckpt_path: str | None = None
    weights_only: bool | None = None


def add_project_options(parser, fit: bool = False) -> None:
    """The options every Lightning subcommand shares besides ``--model.*``, ``--data.*``, ``--trainer.*``
    (:class:`TrackingOptions`, :class:`FitOutputs`) and the links from the fitted data module to the model; ``fit``:
    also :class:`ResumeOptions`."""
    for options in (TrackingOptions, FitOutputs, ResumeOptions) if fit else (TrackingOptions, FitOutputs):
        parser.add_class_arguments(options, None, instantiate=False)
    parser.link_arguments("data.num_channels", "model.input_dim", apply_on="instantiate")
    # --data.season (a duration) reaches the seasonal baseline in model time units
    parser.link_arguments("data.season_period", "model.season_period", apply_on="instantiate")
    # known-future covariates (--data.future_cols, --data.calendar): their fitted spec sizes the model's control
    parser.link_arguments("data.covariates", "model.covariates", apply_on="instantiate")


class HintingCLI(LightningCLI):
    """LightningCLI whose "unrecognized arguments" error names the options most likely meant."""

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            hint = unknown_option_hint(parser, str(err))
            if not hint:
                raise
            raise argparse.ArgumentError(None, f"{err}{hint}") from None


class FitOptions(HintingCLI):
    """LightningCLI reduced to its parser: ``FitOptions(args).parser`` / ``.config`` (a jsonargparse Namespace of
    the resolved options; nothing instantiated, no seed set, nothing run)."""

    def __init__(self, args: Sequence[str] | None = (), prog: str = f"{PROG} fit") -> None:
        # args are passed explicitly (the API has no command line); Lightning warns when sys.argv is set too
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
        super().__init__(
            ForecastingModule,
            IrregularTimeSeriesDataModule,
            seed_everything_default=0,
            parser_kwargs={"prog": prog, "exit_on_error": False},
            args=list(args or ()),
            run=False,
            auto_configure_optimizers=True,
            load_from_checkpoint_support=False,
        )

    def add_arguments_to_parser(self, parser) -> None:
        add_project_options(parser, fit=True)

    # parse only: the API (ts_neuralode.api.fitting.train) seeds, instantiates and runs
    def _parse_ckpt_path(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def fit_options(args: Sequence[str] = ()):
    """(parser, config) of a ``ts-neuralode fit`` command line (without the word ``fit``)."""
    check_option_spelling(args)
    opts = FitOptions(args)
    return opts.parser, opts.config


def merge_options(parser, cfg, overrides: Mapping[str, Any]):
    """``cfg`` with the nested dict ``overrides`` (``{"model": {"evolution": {"kind": "gru_flow"}}}``) merged in,
    type-checked by the same parser."""
    return parser.parse_object(dict(overrides), cfg)


def _check_legacy(key: str, value: Any, where: str) -> None:
    if key in LEGACY_FLAT_OPTIONS:
        raise ConfigError(
            f"{where}model.{key} is now {where}model.evolution.{key} (the evolution options are "
            "nested under model.evolution)"
        )
    if key == "evolution" and isinstance(value, str) and value.isidentifier():
        raise ConfigError(f"{where}model.evolution {value} is now {where}model.evolution.kind {value}")


def check_model_options(model_options: Mapping[str, Any] | None) -> None:
    """The check of :func:`check_option_spelling` on the API's ``model_options`` dict, in the API's words."""
    for key, val in (model_options or {}).items():
        if key in LEGACY_FLAT_OPTIONS:
            raise ConfigError(
                f"model_options={{'{key}': ...}} is now model_options={{'evolution': {{'{key}': ...}}}} "
                "(the evolution options are nested under 'evolution')"
            )
        if key == "evolution" and isinstance(val, str) and val.isidentifier():
            raise ConfigError(
                f"model_options={{'evolution': '{val}'}} is now model_options={{'evolution': {{'kind': '{val}'}}}}"
            )


def check_option_spelling(argv: Sequence[str]) -> None:
    """One line naming the new spelling when ``argv`` or a ``--config`` file uses the flat evolution options of
    older versions (``--model.evolution gru_flow``, ``--model.method rk4``; now ``--model.evolution.kind``,
    ``--model.evolution.method``)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if name.startswith("--model."):
            _check_legacy(name[len("--model.") :], value, "--")
        elif name == "--config" and Path(value).is_file():
            try:
                model = (yaml.safe_load(Path(value).read_text()) or {}).get("model")
            except (yaml.YAMLError, AttributeError):
                continue  # jsonargparse reports a broken file in its own words
            for key, val in model.items() if isinstance(model, dict) else ():
                try:
                    _check_legacy(key, val, "")
                except ConfigError as err:
                    raise ConfigError(f"--config {value}: {err}") from None


__all__ = [
    "FitOptions",
    "check_option_spelling",
    "HintingCLI",
    "check_model_options",
    "add_project_options",
    "TrackingOptions",
    "FitOutputs",
    "ResumeOptions",
    "fit_options",
    "merge_options",
]

"""``ts-neuralode fit`` (parsed by LightningCLI, run by the API: :func:`ts_neuralode.api.fitting.train`) and the
Lightning subcommands ``validate | test | predict`` (LightningCLI runs them: :mod:`ts_neuralode.cli.lightning`)."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence

from ts_neuralode.api.fitting import train
from ts_neuralode.cli.lightning import TSNeuralODECLI
from ts_neuralode.core.threads import current_choice
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.integrations.mlflow import tracking
from ts_neuralode.training import ForecastingModule
from ts_neuralode.training.options import check_option_spelling, fit_options

PROG = "ts-neuralode"


def fit_main(argv: Sequence[str]) -> int:
    """``ts-neuralode fit``: parse the options (:mod:`ts_neuralode.training.options`), train through the API
    (:func:`ts_neuralode.api.fitting.train`, the code path of ``Forecaster.fit``) and print where everything went."""
    parser, cfg = fit_options(argv)
    result = train(parser, cfg)
    if not result.is_global_zero:
        return 0
    lines = []
    if result.best_checkpoint:
        lines.append(f"best checkpoint: {result.best_checkpoint}")
    if result.calibration_line:
        lines.append(result.calibration_line)
    if result.model_dir_written:
        lines.append(f"model directory: {result.model_dir_written}  ({PROG} forecast --model ...)")
    if result.run_id:
        uri = result.tracking_uri or ""
        lines.append(
            f"MLflow run {result.run_id} at {uri}"
            + (" (incomplete: tracking failed during the fit)" if result.tracking_failed else "")
        )
        if uri.startswith("sqlite:"):
            lines.append(f"  view it: mlflow ui --backend-store-uri {uri}")
        if result.model_uri:
            lines.append(
                f"MLflow model {result.model_uri}  (mlflow.pyfunc.load_model('{result.model_uri}'), or "
                f"runs:/{result.run_id}/forecaster)"
            )
    choice = current_choice()  # the torch thread count this fit ran with (ts_neuralode.core.threads)
    if choice is not None:
        lines.append(choice.line)
    for line in lines:
        print(line, file=sys.stderr)
    return 0


def run_lightning(argv: Sequence[str]) -> TSNeuralODECLI:
    """``validate | test | predict`` (LightningCLI runs them)."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # no "Seed set to 0" noise
    # We pass argv explicitly (so main() works in-process); Lightning warns when sys.argv is also set, which is
    # always the case for the console script. The two are the same list there: silence that one warning.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
    check_option_spelling(argv[1:])

    return TSNeuralODECLI(
        ForecastingModule,
        IrregularTimeSeriesDataModule,
        save_config_callback=tracking.MlflowSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"prog": PROG, "exit_on_error": False},
        args=list(argv),
        auto_configure_optimizers=True,
    )

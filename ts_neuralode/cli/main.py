"""The ``ts-neuralode`` command.

    ts-neuralode fit      --config configs/latent_ode.yaml --data.path data.csv [--trainer.max_epochs 20]
    ts-neuralode validate | test | predict   (LightningCLI subcommands, same options; --ckpt_path PATH|last|best)
    ts-neuralode forecast --model MODEL_DIR_OR_CKPT --data.path history.csv --horizon 30D --out forecast.csv
    ts-neuralode backtest --model MODEL_DIR --data.path history.csv --horizon 2D --n_windows 4
    (ts_neuralode.api.backtest)
    ts-neuralode generate NAME --out PATH        (synthetic data sets; ts_neuralode.data.generators)
    ts-neuralode benchmark ...                   (ODE vs flow speed/accuracy; ts_neuralode.api.benchmark)

``fit``/``validate``/``test``/``predict`` are Lightning's CLI over :class:`ForecastingModule` (``--model.*``) and
:class:`IrregularTimeSeriesDataModule` (``--data.*``); ``data.num_channels`` sets ``model.input_dim``. Extra
options: ``--tracking_uri`` (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``), ``--experiment_name``,
``--run_name``, ``--artifact_location``, ``--tracking``, ``--checkpoint_dir`` (default
``<trainer.default_root_dir>/checkpoints``), ``--model_dir`` (where ``fit`` also writes the reloadable model
directory; default ``<checkpoint_dir>/model``), ``--log_model``. ``fit`` keeps ``last.ckpt`` (the latest epoch,
for ``--ckpt_path last``) and the best checkpoint by ``val_loss`` in the checkpoint directory.

Errors a user can cause print one line on stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ts_neuralode.cli.args import cli_words
from ts_neuralode.core.noise import quiet
from ts_neuralode.core.threads import configure_threads
from ts_neuralode.errors import ConfigError, SolverError, TSNeuralODEError

PROG = "ts-neuralode"
LIGHTNING_SUBCOMMANDS = ("validate", "test", "predict")
EXIT_USER_ERROR = 2


# -- the subcommands: each module is imported when its subcommand runs, so that '--help' and 'generate' start
# without loading Lightning, MLflow and Optuna (heavy: seconds on a busy machine)
def fit_main(argv: Sequence[str]) -> int:
    from ts_neuralode.cli.fit import fit_main as run

    return run(argv)


def run_lightning(argv: Sequence[str]) -> None:
    from ts_neuralode.cli.fit import run_lightning as run

    run(argv)


def forecast_main(argv: Sequence[str]) -> int:
    from ts_neuralode.cli.forecast import forecast_main as run

    return run(argv)


def generate_main(argv: Sequence[str]) -> int:
    from ts_neuralode.cli.generate import main as generate_cli

    return generate_cli(list(argv))


def benchmark_main(argv: Sequence[str]) -> int:
    from ts_neuralode.cli.benchmark import cli_main

    return int(cli_main(list(argv)) or 0)


def backtest_main(argv: Sequence[str]) -> int:
    from ts_neuralode.cli.backtest import main as backtest_cli

    return backtest_cli(list(argv))


def auto_main(argv: Sequence[str]) -> int | None:
    """``fit --model auto``: the automatic model choice (:mod:`ts_neuralode.cli.model_choice`), else None."""
    from ts_neuralode.cli.model_choice import main as run
    from ts_neuralode.cli.model_choice import wants_auto

    return run(argv) if wants_auto(argv) else None


EXTRA_SUBCOMMANDS = {
    "fit": fit_main,
    "forecast": forecast_main,
    "generate": generate_main,
    "benchmark": benchmark_main,
    "backtest": backtest_main,
}

SUBCOMMANDS = ("fit", *LIGHTNING_SUBCOMMANDS, *(s for s in EXTRA_SUBCOMMANDS if s != "fit"))

USAGE = f"""usage: {PROG} {{fit,validate,test,predict,forecast,backtest,generate,benchmark}} ...

  fit        train a model (LightningCLI: --config FILE, --model.*, --data.*, --trainer.*, --ckpt_path last);
             --model auto searches the models with Optuna ('fit --model auto --help')
  validate   evaluate on the validation split (--ckpt_path PATH)
  test       evaluate on the test split (--ckpt_path PATH)
  predict    Lightning predict loop over the data module's predict split (--ckpt_path PATH)
  forecast   forecast a history CSV at future times with a trained model (CSV + PNGs)
  backtest   rolling-origin backtest of a trained model: forecasts, metrics, report, plot, MLflow
  generate   write a synthetic data set (sine, square, ..., periodic, double_ou, pk) as CSV
  benchmark  ODE vs flow speed and accuracy

'{PROG} SUBCOMMAND --help' lists a subcommand's options; '{PROG} fit --print_config' prints a full config.
--verbose (any subcommand): also show Lightning's and MLflow's own messages (ts_neuralode.core.noise).
"""


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ts-neuralode`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_USER_ERROR
    sub = argv[0]
    quiet(verbose="--verbose" in argv)  # third-party chatter a user cannot act on (ts_neuralode.core.noise)
    argv = [a for a in argv if a != "--verbose"]
    try:
        configure_threads()  # torch threads fitted to the usable CPUs (ts_neuralode.core.threads)
        if sub == "fit":  # model choice: 'fit --model auto' searches (ts_neuralode.cli.model_choice)
            status = auto_main(argv[1:])
            if status is not None:
                return status
        if sub in EXTRA_SUBCOMMANDS:
            return EXTRA_SUBCOMMANDS[sub](argv[1:])
        if sub not in LIGHTNING_SUBCOMMANDS:
            raise ConfigError(f"unknown subcommand {sub!r}; use one of {', '.join(SUBCOMMANDS)}")
        run_lightning(argv)
        return 0
    except TSNeuralODEError as err:
        print(f"{PROG}: error: {cli_words(_one_line(err))}", file=sys.stderr)  # in the command line's words
        return EXIT_USER_ERROR
    except (SolverError, ValueError) as err:
        # the ODE solver giving up mid-run: TrainingGuard attached where and what to try
        message = getattr(err, "ts_neuralode_message", None)
        if message is None:
            raise
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except argparse.ArgumentError as err:  # jsonargparse's parser errors (bad/missing option)
        print(f"{PROG} {sub}: error: {_one_line(err)}; see '{PROG} {sub} --help'", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as err:  # Lightning stops on SIGTERM with SIGTERMException, a SystemExit of status 0
        if type(err).__name__ != "SIGTERMException":
            raise
        kept = "; the checkpoints of finished epochs are kept: continue with --ckpt_path last" if sub == "fit" else ""
        print(f"{PROG} {sub}: stopped by SIGTERM{kept}", file=sys.stderr)
        return 128 + 15


if __name__ == "__main__":
    sys.exit(main())

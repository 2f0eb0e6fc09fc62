"""The quiet default of the ``ts-neuralode`` commands: third-party chatter a user cannot act on, filtered in one place.

Left out unless ``--verbose`` (:func:`quiet`; each entry is a line seen on a demo fit, forecast or backtest):

* Lightning's start-up lines (``GPU available``, ``TPU available``, the ``litlogger`` tip), the model summary table,
  ``Trainer.fit stopped: max_epochs reached`` (INFO of the ``lightning.pytorch`` loggers);
* Lightning's warnings about its own internals: the ``LeafSpec`` deprecation, the ``tensorboardX`` note, the logging
  interval on small data, the ``num_workers`` bottleneck hint on CPU data of this size;
* MLflow's sqlite store set-up (``Creating initial MLflow database tables``, ``Updating database tables``), the input
  example validation line, the ``Downloading artifacts`` progress bars while the model is logged, and
  ``Experiment with name ... not found. Creating it`` (MLflow INFO; ``MLFLOW_LOGGING_LEVEL``,
  ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``).

What stays: the training progress bar, the package's own lines (what each column is, the calibration, the model
directory, the MLflow run and model) and every warning a user can act on (dropped series, extreme values, an
existing checkpoint directory, a failed tracking store). Only the CLI calls this: a Python user's logging is theirs.
"""

from __future__ import annotations

import logging
import os
import warnings

#: warnings (message regexes) about the libraries' own internals
NOISY_WARNINGS = (
    r".*LeafSpec.*",
    r".*tensorboardX.*",
    r".*smaller than the logging interval.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*Experiment with name .* not found.*",
)
#: loggers and the level below which their records are dropped
QUIET_LOGGERS = {
    "lightning.pytorch": logging.WARNING,
    "lightning.fabric": logging.WARNING,
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning.pytorch.loggers.mlflow": logging.ERROR,
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,
}


def quiet(verbose: bool = False) -> None:
    """Filter the chatter listed in the module docstring (nothing with ``verbose``)."""
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import lightning.pytorch  # noqa: F401 - it sets its loggers' levels when imported: set ours after that

    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)

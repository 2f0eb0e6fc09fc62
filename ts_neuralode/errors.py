"""Project exceptions.

Errors a user can cause (bad CSV, bad option, a forecast the model cannot serve) are raised as
:class:`TSNeuralODEError` subclasses with a single line saying what is wrong, where, and how to fix it.
The CLI prints that line and exits non-zero; tracebacks are for our own bugs.
"""

from __future__ import annotations

from ts_neuralode.solvers.errors import SolverError


class TSNeuralODEError(Exception):
    """Base class of every error a user can cause. The message is one line: any line breaks in it (e.g. from a
    pandas error quoted in it) are folded into spaces."""

    def __init__(self, *args) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (" ".join(args[0].split()),)
        super().__init__(*args)


class DataError(TSNeuralODEError, ValueError):
    """Invalid input data: file, column, row and a fix are named in the message."""


class ConfigError(TSNeuralODEError, ValueError):
    """Invalid option or combination of options."""


class ForecastError(TSNeuralODEError, ValueError):
    """A forecast request the model cannot serve (says why)."""


class TrainingError(TSNeuralODEError, RuntimeError):
    """A fit that cannot go on: the loss or gradients became NaN/inf, or the ODE solver could not make progress.

    The message says what happened, at which epoch and step, and what to try; the last good checkpoint and the
    model directory are left as they were."""


def check_choice(value, name: str, choices) -> None:
    """``ConfigError`` unless ``value`` is one of ``choices`` (the one wording of that error)."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}")


__all__ = [
    "check_choice",
    "TSNeuralODEError",
    "DataError",
    "ConfigError",
    "ForecastError",
    "TrainingError",
    "SolverError",
]

"""Project exceptions.

Errors a user can cause (bad CSV, bad option, a forecast the model cannot serve) are raised as
:class:`TSNeuralODEError` subclasses with a single line saying what is wrong, where, and how to fix it.
The CLI prints that line and exits non-zero; tracebacks are for our own bugs.
"""

from __future__ import annotations

from ts_neuralode.solvers.errors import SolverError


class TSNeuralODEError(Exception):
    """Base class of every error a user can cause."""


class DataError(TSNeuralODEError, ValueError):
    """Invalid input data: file, column, row and a fix are named in the message."""


class ConfigError(TSNeuralODEError, ValueError):
    """Invalid option or combination of options."""


class ForecastError(TSNeuralODEError, ValueError):
    """A forecast request the model cannot serve (says why)."""


__all__ = ["TSNeuralODEError", "DataError", "ConfigError", "ForecastError", "SolverError"]

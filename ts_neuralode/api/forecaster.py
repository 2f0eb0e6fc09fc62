"""The API's face: :class:`Forecaster`, a trained model that forecasts (:class:`~ts_neuralode.api.predictor.Predictor`:
``load``, ``save``, ``predict``, ``plot``) plus the verbs that reach the rest of the API: :meth:`Forecaster.fit`
(:mod:`ts_neuralode.api.fitting`, or the automatic model choice), :meth:`Forecaster.cross_validation`
(:mod:`ts_neuralode.api.backtest`) and :meth:`Forecaster.load` of an ensemble directory
(:mod:`ts_neuralode.api.model_choice_ensemble`).

    from ts_neuralode.api.forecaster import Forecaster
    fc = Forecaster.load("demo_output/model")             # a model directory, or a Lightning .ckpt
    out = fc.predict(history_df, horizon="30D", num_samples=100, level=[50, 90])

It sits on top of the API so that the modules it calls build plain predictors and never import it (the fit, the
backtest and the model choice take the class to build as ``forecaster_cls``).
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import pandas as pd
import torch

from ts_neuralode.api.backtest import cross_validation
from ts_neuralode.api.fitting import fit
from ts_neuralode.api.model_choice import SEARCH_DEFAULTS, fit_auto
from ts_neuralode.api.model_choice_ensemble import EnsembleForecaster, is_ensemble_dir
from ts_neuralode.api.predictor import Predictor
from ts_neuralode.core.option_hints import ending_in, option_names
from ts_neuralode.core.threads import configure_threads
from ts_neuralode.data.io import as_frame
from ts_neuralode.errors import ConfigError
from ts_neuralode.training.options import fit_options

#: the options of a fit that is no model choice: :func:`ts_neuralode.api.fitting.fit`'s, declared there
FIT_OPTIONS = tuple(name for name in inspect.signature(fit).parameters if name not in ("what", "forecaster_cls"))


#: the argument of :meth:`Forecaster.fit` that takes each group of ``ts-neuralode fit``'s options
_GROUP_ARGUMENT = {"data": "data_options", "model": "model_options", "trainer": "trainer"}


def _misplaced(name: str, known: set[str]) -> str:
    """What to pass instead of the keyword ``name`` that a fit (not a model choice) does not take: the group dict
    holding an option of that name among ``known`` (``ts-neuralode fit``'s options; ``max_epochs`` ->
    ``trainer={'max_epochs': ...}``), or model='auto' for a search option."""
    for option in ending_in(known, name):
        group, _, key = option[2:].partition(".")
        if group in _GROUP_ARGUMENT:
            nested = "..."
            for part in reversed(key.split(".")):
                nested = f"{{{part!r}: {nested}}}"
            return f"{name} is not an argument of its own; pass {_GROUP_ARGUMENT[group]}={nested}"
    if name in inspect.signature(fit_auto).parameters or name in SEARCH_DEFAULTS:
        return f"{name} applies only to model='auto' (the automatic model choice)"
    return f"{name} is not an option (the options: {', '.join(FIT_OPTIONS)})"


class Forecaster(Predictor):
    """A trained model that forecasts (see :class:`~ts_neuralode.api.predictor.Predictor` for the arguments), with
    :meth:`fit` and :meth:`cross_validation`."""

    @classmethod
    def fit(cls, data: Any, model: str | os.PathLike = "latent_ode", **options: Any) -> Forecaster:
        """Train a model from Python through the code path of ``ts-neuralode fit`` (its options, callbacks,
        checkpoints, model export and MLflow tracking; :func:`ts_neuralode.api.fitting.train`) and return it fitted.

        Args (the keyword ``options`` are those of :func:`ts_neuralode.api.fitting.fit`, declared there):
            data: a DataFrame (handed to the data module in memory) or a CSV / Parquet path.
            model: a model name (``latent_ode``, ``ode_rnn``, ``gru_ode``) or a config file (``configs/demo.yaml``).
            data_options / model_options / trainer: ``--data.*`` / ``--model.*`` / ``--trainer.*`` options as dicts
                (``{"evolution": {"kind": "gru_flow"}}`` for ``--model.evolution.kind``); they override the config.
            callbacks: extra Lightning callbacks for the Trainer (e.g. an Optuna pruning callback).
            output_dir: checkpoints (``checkpoints/``), the model directory (``model/``) and the resolved options
                (``config.yaml``) go here.
            tracking, tracking_uri, experiment_name, run_name, log_model: MLflow, as the CLI options of those names.
            seed: ``--seed_everything``.
        The returned forecaster's ``fit_info`` holds ``monitor`` (the metric the best checkpoint follows:
        ``val_loss``, or ``train_loss`` without validation) and ``best_score`` (its best value, a float), the
        resolved options (``config``), the ``ts-neuralode fit`` command line that reproduces the fit (``argv``), the
        directories and the MLflow run id.
        ``model="auto"``: the automatic model choice (:func:`ts_neuralode.api.model_choice.fit_auto`; its options
        ``budget``, ``ensemble``, ``refit``, ``storage``, ``study_name``, ``metric`` … go in ``options`` too).
        """
        configure_threads()  # torch threads fitted to this process's CPUs (ts_neuralode.core.threads)
        if str(model) == "auto":  # the automatic model choice searches, then refits through this same fit
            train = fit_auto
        else:
            unknown = sorted(set(options) - set(FIT_OPTIONS))
            if unknown:
                known = option_names(fit_options()[0])  # ts-neuralode fit's parser, built once for the message
                raise ConfigError(f"Forecaster.fit: {'; '.join(_misplaced(name, known) for name in unknown)}")
            train = functools.partial(fit, model=model)
        return train(as_frame(data), forecaster_cls=cls, **options)

    @classmethod
    def load(
        cls, path: str | os.PathLike, transform=None, map_location: str | torch.device = "cpu", name: str | None = None
    ):
        """As :meth:`Predictor.load <ts_neuralode.api.predictor.Predictor.load>`; a directory written by an
        :class:`~ts_neuralode.api.model_choice_ensemble.EnsembleForecaster` loads as one (its members as this
        class)."""
        if transform is None and is_ensemble_dir(path):
            return EnsembleForecaster.load(path, map_location=map_location, member_cls=cls)
        return super().load(path, transform=transform, map_location=map_location, name=name)

    def cross_validation(self, history: Any, horizon: float | str | pd.Timedelta, **options: Any) -> pd.DataFrame:
        """Rolling-origin backtest: Nixtla-style rows ``unique_id, ds, cutoff, y, <name>, <name>-lo-L,
        <name>-hi-L, …, locf, mean`` at the observation times within ``horizon`` after each cutoff; windows from
        ``n_windows`` (+ ``step``) before each series' end, or explicit ``cutoffs``; ``refit`` (True or every k
        windows) trains a new model on each window's history with ``ts-neuralode fit`` options ``fit_args``.
        Other options as :meth:`predict` (level, quantiles, num_samples, context, seed …); the keyword ``options``
        are those of :func:`ts_neuralode.api.backtest.cross_validation`, declared there. See
        :mod:`ts_neuralode.api.backtest` (also :func:`ts_neuralode.api.backtest.evaluate` for the metrics)."""
        return cross_validation(self, history, horizon, forecaster_cls=type(self), **options)


__all__ = ["Forecaster"]

"""The pyfunc class that serves a logged forecaster (:class:`ForecasterModel`): MLflow loads it from the
models-from-code entry that :func:`ts_neuralode.integrations.mlflow.logged_model.log_pyfunc` writes. It sits above
the API (it loads a :class:`~ts_neuralode.api.forecaster.Forecaster`); the logging itself sits under it."""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.errors import TSNeuralODEError
from ts_neuralode.integrations.mlflow.logged_model import forecast_frame, served_error


class ForecasterModel(PythonModel):
    """pyfunc wrapper of :class:`ts_neuralode.api.forecaster.Forecaster` (artifact ``model_dir``)."""

    def load_context(self, context) -> None:
        self.forecaster = Forecaster.load(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return forecast_frame(self.forecaster, model_input, params)
        except TSNeuralODEError as err:  # the user's request is wrong: one line, no traceback (served or not)
            raise served_error(err) from None

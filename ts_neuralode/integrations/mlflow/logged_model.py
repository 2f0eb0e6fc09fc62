"""The trained forecaster as an MLflow model (pyfunc flavour): loggable, registrable, servable.

``fit`` logs it next to the model directory (:func:`log_pyfunc`, called by the tracking callback), so the run's
page lists it under *Logged models*; ``--register_as NAME`` also registers it. Then

    model = mlflow.pyfunc.load_model("models:/<model id>")        # as fit prints it; or runs:/<run id>/forecaster
    model.predict(history_df, params={"horizon": "2D", "freq": "1h"})

    mlflow models serve -m models:/<model id> --env-manager local -h 127.0.0.1 -p 5001
    curl -X POST 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_split": {"columns": [...], "data": [...]}, "params": {"horizon": "2D"}}'

``predict`` takes a history frame in the training format (the input example shows it) and query options as
``params`` (``horizon``, ``freq``, ``num_points``, ``num_samples``, ``level``, ``context``, ``seed``,
``calibrated``; an empty string / 0 means "not given"), and returns the forecast frame of
:meth:`Forecaster.predict` (datetimes as ISO 8601 strings with their offset, so the frame travels as JSON).

Covariates. A model trained with ``--data.future_cols`` / ``--data.static_cols`` reads them from the same frame:
the input example and the signature carry those columns (MLflow drops columns the signature lacks). Known-future
values go in as extra rows with an empty ``y`` (every channel empty) at their times after the history, the same
way the training CSV holds them; each known-future column must be known up to each series' last query time (the
example has one such row per series, at the example query's last time). Static columns carry the series' value
on its rows.

Calibration. The model is a copy of the model directory as the fit left it, with the band calibration ``fit``
fitted on its held-out validation windows (``calibration.json``): the served bands are calibrated by default (param
``raw_bands=true``: the model's own bands). ``calibrated=true`` insists on a calibration and raises an error
when the model has none (a fit without a validation split). A later ``ts-neuralode backtest --calibrate`` writes a
new ``calibration.json`` into the local model directory only.

The MLflow model holds the model directory (weights + JSON config, no pickles) as an artifact, the package's
source (``code_paths``) and a code file that builds :class:`ForecasterModel` (MLflow's models-from-code: nothing
is pickled).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import ts_neuralode
from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.data.io import read_frame
from ts_neuralode.data.query_times import query_times
from ts_neuralode.errors import ForecastError

#: name of the logged model within the run (``runs:/<run id>/forecaster``; ``fit`` prints its ``models:/`` URI, the
#: one to use). Not "model": that is the run's folder of the plain model directory, and MLflow 3 merges a logged model
#: of the same name into it, looking the model up in the *global* tracking store even for a client of another one.
MODEL_NAME = "forecaster"
#: query options and their "not given" defaults (the params schema)
PARAM_DEFAULTS: dict[str, Any] = {
    "horizon": "",
    "freq": "",
    "num_points": 0,
    "num_samples": SAMPLING.num_samples,
    "level": list(SAMPLING.level),
    "context": "",
    "seed": SAMPLING.seed,
    "calibrated": False,
    "raw_bands": False,
}
EXAMPLE_ROWS = 8

_ENTRY = """# MLflow models-from-code entry of a ts_neuralode forecaster
# (see ts_neuralode.integrations.mlflow.logged_model)
import mlflow

from ts_neuralode.integrations.mlflow.pyfunc import ForecasterModel

mlflow.models.set_model(ForecasterModel())
"""


def served_error(err: Exception):
    """``err`` (a project error) as an ``MlflowException`` (BAD_REQUEST) of the same project class, whose message
    stays its one line: the scoring server answers a failing request with ``{"error_code": "BAD_REQUEST", "message":
    ...}`` and no stack trace, but it prefixes an MlflowException's message with the whole request (``Failed to
    predict data '<frame>'``) by assigning ``.message``; this exception keeps its own line instead."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    class ServedError(MlflowException, type(err)):
        @property
        def message(self) -> str:
            return self._line

        @message.setter
        def message(self, value: str) -> None:
            if not hasattr(self, "_line"):
                self._line = " ".join(str(value).split())

    ServedError.__name__ = type(err).__name__
    return ServedError(str(err), error_code=BAD_REQUEST)


def query_options(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` -> keyword arguments of :meth:`Forecaster.predict` ("" / 0 / None mean "not given")."""
    p = {**PARAM_DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
    unknown = sorted(set(p) - set(PARAM_DEFAULTS))
    if unknown:
        raise ForecastError(f"unknown params {unknown}; use {', '.join(PARAM_DEFAULTS)}")
    opts: dict[str, Any] = {
        "num_samples": int(p["num_samples"]),
        "level": [float(v) for v in p["level"]],
        "seed": int(p["seed"]),
    }
    for key in ("horizon", "freq", "context"):
        if str(p[key]).strip():
            opts[key] = str(p[key]).strip()
    if int(p["num_points"] or 0) > 0:
        opts["num_points"] = int(p["num_points"])
    if bool(p["raw_bands"]):
        opts["calibrated"] = False
    elif bool(p["calibrated"]):
        opts["calibrated"] = True
    return opts


def forecast_frame(forecaster, history: pd.DataFrame, params: dict[str, Any] | None) -> pd.DataFrame:
    """The forecast of ``history`` with the query ``params``, datetimes as ISO 8601 strings."""
    opts = query_options(params)
    if opts.get("calibrated") and forecaster.calibration is None:
        raise ForecastError(
            "params calibrated=true: this MLflow model holds no band calibration (its fit had no "
            "validation windows with enough points to calibrate on); send calibrated=false or leave it "
            "out for the model's own bands"
        )
    out = forecaster.predict(history, **opts)
    if pd.api.types.is_datetime64_any_dtype(out["ds"]):
        out["ds"] = [t.isoformat() for t in out["ds"]]
    return out


def covariate_columns(forecaster) -> list[str]:
    """The columns a model reads besides its channels: its known-future and static covariates."""
    spec = getattr(forecaster, "covariate_spec", None)
    return [] if spec is None else [*spec.future_cols, *spec.static_cols]


def input_example(datamodule, n_series: int = 2, rows: int = EXAMPLE_ROWS, forecaster=None) -> pd.DataFrame | None:
    """The last ``rows`` lines of the first ``n_series`` series of the training data, in its own columns (with
    ``forecaster``: also its covariate columns)."""

    read = dict(getattr(datamodule, "read_kwargs", {}) or {})
    df = datamodule.df if getattr(datamodule, "df", None) is not None else read_frame(datamodule.path)
    tr = datamodule.transform
    keep = [
        c
        for c in [
            read.get("id_col"),
            tr.time_col,
            *tr.channel_names,
            *(read.get("mask_cols") or []),
            *covariate_columns(forecaster),
        ]
        if c is not None and c in df.columns
    ]
    df = df[list(dict.fromkeys(keep))]
    id_col = read.get("id_col") if read.get("id_col") in df.columns else None
    if id_col is None:
        return df.tail(rows).reset_index(drop=True)
    ids = list(dict.fromkeys(df[id_col]))[:n_series]
    return pd.concat([df[df[id_col] == i].tail(rows) for i in ids], ignore_index=True)


def with_future_rows(forecaster, example: pd.DataFrame, query: dict[str, Any]) -> pd.DataFrame:
    """``example`` plus, for a model with known-future or static covariates, one row per series at the last time
    of the forecast ``query`` (params) with every channel empty and the series' last covariate values: how
    known-future values are sent (see the module docstring)."""

    cols = covariate_columns(forecaster)
    if not cols:
        return example
    opts = query_options(query)
    tab = forecaster.read_history(example)
    codec = tab.codec
    _, exact = query_times(
        codec, tab, list(range(tab.n_series)), opts.get("horizon"), None, opts.get("freq"), opts.get("num_points")
    )
    tr = forecaster.transform
    id_col = tab.id_col if tab.id_col in example.columns else None
    last = [np.max(q) for q in exact]
    if codec.is_datetime:
        stamps = codec.from_ns(np.asarray(last, dtype=np.int64))
        textual = not pd.api.types.is_datetime64_any_dtype(example[tr.time_col])
        last = [t.isoformat() for t in stamps] if textual else list(stamps)
    groups = [example] if id_col is None else [example[example[id_col] == i] for i in tab.ids]
    future = []
    for part, t in zip(groups, last, strict=True):
        row = part.iloc[[-1]].copy()
        row[cols] = part[cols].ffill().iloc[[-1]].to_numpy()
        for c in row.columns:
            if c not in cols and c not in (id_col, tr.time_col):
                row[c] = np.nan if pd.api.types.is_float_dtype(example[c]) else 0
        row[tr.time_col] = t
        future.append(row)
    return pd.concat([example, *future], ignore_index=True)


def example_params(forecaster, datamodule) -> dict[str, Any]:
    """The params default for the signature: the forecast task's horizon, when the model was trained on one."""
    params = dict(PARAM_DEFAULTS)
    horizon = getattr(datamodule, "horizon", None)
    if horizon is not None:
        params["horizon"] = str(horizon)
    return params


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in (
        "torch",
        "lightning",
        "jsonargparse",
        "pandas",
        "numpy",
        "torchmetrics",
        "scikit-learn",
        "mlflow",
        "matplotlib",
        "tqdm",
        "utilsforecast",
    ):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_pyfunc(
    tracking_uri: str,
    run_id: str,
    model_dir: str | Path,
    forecaster,
    datamodule,
    register_as: str | None = None,
    step: int = 0,
):
    """Log the model directory as an MLflow pyfunc model of run ``run_id`` (and register it as ``register_as``) at
    ``step`` (the best checkpoint's epoch: MLflow links the run's metrics of that step to the model, so the Logged
    Models page shows the scores of the weights it holds); returns MLflow's ``ModelInfo``."""
    import mlflow
    from mlflow.models import infer_signature

    example = input_example(datamodule, forecaster=forecaster)
    params = example_params(forecaster, datamodule)
    probe = dict(params)
    if not probe["horizon"]:  # a short forecast of the example, for the output schema only
        tab = forecaster.read_history(example)
        span = float(max(tab.last_times() - tab.first_times()))
        probe["horizon"] = str(span / 10 if span > 0 else 1.0)
    probe["num_points"], probe["num_samples"] = 2, 4  # the example request: a valid query (served in a test)
    example = with_future_rows(forecaster, example, probe)
    output = forecast_frame(forecaster, example, probe)
    signature = infer_signature(example, output, params=params)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            entry = Path(tmp) / "ts_neuralode_forecaster.py"
            entry.write_text(_ENTRY)
            with mlflow.start_run(run_id=run_id):
                return mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=str(entry),
                    artifacts={"model_dir": str(model_dir)},
                    code_paths=[str(Path(ts_neuralode.__file__).parent)],
                    signature=signature,
                    input_example=(example, probe),
                    pip_requirements=_requirements(),
                    registered_model_name=register_as or None,
                    step=int(step),
                )
    finally:
        mlflow.set_tracking_uri(previous)

"""Batch forecasts on Spark (ts_neuralode.integrations.spark): the fit's logged MLflow model on a local pyspark
session gives the forecasts of in-process ``Forecaster.predict`` on the same series.

The model is an ODE-RNN (its bands are Gaussian, drawn from no samples), so a forecast does not depend on which
series share a predict call: one group per series, and 3 hash buckets of several series each, must both equal one
in-process call over every series up to float32 rounding of another batch composition (measured ~3e-7; atol 1e-5).

The session: local[2], no UI, bound to 127.0.0.1, 2 shuffle partitions, this interpreter for the Python workers;
stopped at the end of the module. Skipped where pyspark (the ``spark`` extra) or Java is missing.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from test_ddp import ARGS

from conftest import subprocess_env
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.errors import ConfigError, ForecastError
from ts_neuralode.integrations.mlflow.logged_model import query_options

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[spark]')")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java runtime for pyspark", allow_module_level=True)

QUERY = {"horizon": "1.0", "num_points": 3, "num_samples": 8, "seed": 0}
ATOL = 1e-5


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_csv):
    """A 1-epoch ODE-RNN fit on the tiny CSV, tracked in sqlite: its logged model's URI and its model directory."""
    import contextlib
    import io

    from mlflow import MlflowClient

    from ts_neuralode.cli import main

    cwd = tmp_path_factory.mktemp("spark_fit")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    args = list(ARGS)
    args[args.index("--trainer.max_epochs") + 1] = "1"
    buf = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = main(
                [
                    "fit",
                    "--data.path",
                    str(tiny_csv),
                    *args,
                    "--data.batch_size",
                    "4",
                    "--tracking_uri",
                    uri,
                    "--experiment_name",
                    "spark",
                    "--checkpoint_dir",
                    str(cwd / "ck"),
                ]
            )
    finally:
        os.chdir(old)
    assert rc == 0, buf.getvalue()[-3000:]
    client = MlflowClient(uri)
    models = client.search_logged_models([client.get_experiment_by_name("spark").experiment_id])
    assert len(models) == 1
    return {"model_uri": f"models:/{models[0].model_id}", "tracking_uri": uri, "model_dir": cwd / "ck" / "model"}


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # the Python workers run this interpreter (with torch); the spark.pyspark.python setting alone does not reach
    # the workers of applyInPandas on every pyspark release, the environment variable does
    saved = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("ts_neuralode-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.executorEnv.PYTHONPATH", subprocess_env()["PYTHONPATH"])
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        if saved is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = saved


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(unique_id=frame["unique_id"].astype(str))
    return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("buckets", [None, 3])
def test_spark_forecasts_equal_in_process_predict(spark, logged, tiny_csv, buckets, margin):
    from ts_neuralode.integrations.spark import forecast_spark

    history = pd.read_csv(tiny_csv)
    expected = _sorted(Forecaster.load(logged["model_dir"]).predict(history, **query_options(QUERY)))
    out = forecast_spark(
        spark.createDataFrame(history), logged["model_uri"], QUERY, buckets=buckets, tracking_uri=logged["tracking_uri"]
    )
    if buckets is not None:  # one task per bucket (Spark's adaptive execution would merge them into one)
        assert out.rdd.getNumPartitions() == buckets
    got = _sorted(out.toPandas())
    n_series = history["unique_id"].nunique()
    assert len(got) == n_series * QUERY["num_points"] == len(expected)
    assert list(got.columns) == list(expected.columns)
    assert got["unique_id"].tolist() == expected["unique_id"].tolist()
    numeric = [c for c in expected.columns if c != "unique_id"]
    assert len(numeric) >= 6  # ds, the forecast and two bands (50, 90) of two bounds
    worst = float(np.max(np.abs(got[numeric].to_numpy(float) - expected[numeric].to_numpy(float))))
    margin(f"Spark (buckets={buckets}) vs in-process predict: max abs difference", worst, ATOL)
    # the forecasts differ between series (a frame of one series' rows repeated would not pass)
    assert got.groupby("unique_id")[numeric[1]].first().nunique() == n_series


def test_spark_bad_query_and_inputs_are_one_line(spark, logged, tiny_csv):
    from ts_neuralode.integrations.spark import forecast_spark

    history = spark.createDataFrame(pd.read_csv(tiny_csv))
    with pytest.raises(ForecastError, match="time axis is numeric") as err:  # on the driver, before any task runs
        forecast_spark(history, logged["model_uri"], {**QUERY, "horizon": "2D"}, tracking_uri=logged["tracking_uri"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no id column 'series'"):
        forecast_spark(history, logged["model_uri"], QUERY, id_col="series")
    with pytest.raises(ConfigError, match="buckets=0 must be a positive integer"):
        forecast_spark(history, logged["model_uri"], QUERY, buckets=0, tracking_uri=logged["tracking_uri"])
    with pytest.raises(ConfigError, match="no MLflow model folder"):
        forecast_spark(history, str(logged["model_dir"]), QUERY)  # the plain model directory is not an MLflow model

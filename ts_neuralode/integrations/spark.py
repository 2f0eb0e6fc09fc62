"""Batch forecasts on Spark: the logged MLflow model (:mod:`ts_neuralode.integrations.mlflow.logged_model`) run on
groups of series.

    from ts_neuralode.integrations.spark import forecast_spark

    history = spark.read.parquet("history/")                 # the training format: unique_id, ds, y ...
    out = forecast_spark(history, "models:/m-...", params={"horizon": "2D", "num_samples": 100})
    out.write.parquet("forecasts/")

``forecast_spark`` is ``history.groupBy("unique_id").applyInPandas(fn, schema)`` with ``fn`` a
:class:`ForecastFunction`: each group (one series, or with ``buckets=k`` the series of one of ``k`` hash buckets,
so that one call forecasts many series in the model's batches) goes through the model's pyfunc ``predict`` with
the query ``params`` (the same params as the served model: ``horizon``, ``freq``, ``num_points``,
``num_samples``, ``level``, ``context``, ``seed``, ``calibrated``, ``raw_bands``) and comes back as forecast rows.

How the model gets to the executors: the driver downloads ``model_uri`` (``models:/``, ``runs:/``, a path …) once
and ships the folder with ``SparkContext.addFile``; each Python worker loads it once and keeps it for the tasks
it serves. The executors need ts_neuralode and the model's requirements installed (torch, lightning, mlflow …, as
for ``mlflow models serve --env-manager local``); a local session uses the driver's Python. The output schema is read
from a forecast of the first series on the driver, which also checks ``params`` there: a bad query fails with the
model's one-line error before any task runs.

Same numbers as in-process: a group is one ``predict`` call with the same params and seed, so its rows equal
``Forecaster.predict`` on that group's series (tests/test_spark.py); a model whose bands come from samples (the
latent models) draws them per call, so a series' bands depend on the series it shares a call with, as they do
between in-process calls of different batches. Throughput: scripts/spark_forecast.py, results/spark_forecast.md.

pyspark is optional (``pip install "ts_neuralode[spark]"``, Java 17+): it is imported only in here.
"""

from __future__ import annotations

from typing import Any

from ts_neuralode.errors import ConfigError

#: the column that holds the hash bucket of a series when ``buckets`` groups several series per call
BUCKET_COL = "_ts_neuralode_bucket"


def _spark_type(dtype) -> str:
    """The Spark SQL type name of a pandas column dtype (a forecast frame holds ids, floats and ISO strings)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "string"


def output_schema(frame) -> str:
    """A DDL schema string (``` `unique_id` string, `ds` double, ...```) of a forecast frame."""
    return ", ".join(f"`{c}` {_spark_type(t)}" for c, t in frame.dtypes.items())


def local_model(model_uri: str, tracking_uri: str | None = None) -> str:
    """A local folder holding the MLflow model ``model_uri`` (downloaded when it is not one already)."""
    from pathlib import Path

    if "://" not in model_uri and ":/" not in model_uri:
        if not (Path(model_uri) / "MLmodel").is_file():
            raise ConfigError(
                f"model {model_uri!r} is no MLflow model folder (no MLmodel file in it); pass the "
                "models:/ or runs:/<run id>/forecaster URI that 'ts-neuralode fit' printed"
            )
        return str(Path(model_uri).resolve())
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=tracking_uri)
    except Exception as err:  # MlflowException, OSError: the URI or the store is wrong
        first = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"cannot fetch the MLflow model {model_uri!r} ({first}); pass the URI that "
            "'ts-neuralode fit' printed and --tracking_uri / tracking_uri= of its store"
        ) from None


#: the models loaded in this (worker) process, by folder: a Python worker serves many tasks and loads a model once
_MODELS: dict[str, Any] = {}


class ForecastFunction:
    """The ``applyInPandas`` function: a pandas frame of whole series -> their forecast frame.

    ``model_dir``: the local MLflow model folder; ``shipped``: it was sent with ``SparkContext.addFile`` and each
    worker finds it by its base name (``SparkFiles.get``). ``drop``: input columns to leave out (the bucket). Sent
    to the executors by reference (it is importable there: ts_neuralode is installed beside the model's
    requirements), so the model cache above lives as long as the worker process."""

    def __init__(
        self, model_dir: str, params: dict[str, Any] | None = None, *, shipped: bool = False, drop: tuple[str, ...] = ()
    ) -> None:
        import os

        self.model_dir, self.params, self.shipped, self.drop = model_dir, dict(params or {}), shipped, tuple(drop)
        self.name = os.path.basename(os.path.normpath(model_dir))

    def model(self):
        path = self.model_dir
        if self.shipped:
            from pyspark import SparkFiles

            path = SparkFiles.get(self.name)
        if path not in _MODELS:
            import mlflow.pyfunc

            _MODELS[path] = mlflow.pyfunc.load_model(path)
        return _MODELS[path]

    def __call__(self, frame):
        import pandas as pd

        frame = frame.drop(columns=[c for c in self.drop if c in frame.columns])
        out = self.model().predict(frame, params=self.params)
        # pandas >= 3 keeps strings in pyarrow-backed columns; pyspark 4.3's Arrow writer takes plain object ones
        # (a chunked arrow column fails in RecordBatch.from_arrays)
        for col in out.columns:
            if pd.api.types.is_string_dtype(out[col].dtype) and out[col].dtype != object:
                out[col] = out[col].astype(object)
        return out


def as_udf(fn: ForecastFunction):
    """``fn`` as a plain one-argument function: Spark reads the argument count of what it is given (a callable
    object's ``self`` would count as the group key)."""

    def forecast(frame):
        return fn(frame)

    return forecast


def ship(spark, model_dir: str) -> str:
    """Copy the model folder under a name of its own and send it to the executors (``SparkContext.addFile``);
    returns the copy's path. A name of its own: Spark refuses a second file of one base name from another path.
    The copy is removed when the driver's Python exits (the executors fetch it while jobs run). Needs a classic
    session (``SparkContext``), not Spark Connect."""
    import atexit
    import shutil
    import tempfile
    import uuid
    from pathlib import Path

    parent = tempfile.mkdtemp(prefix="ts_neuralode_spark_")
    atexit.register(shutil.rmtree, parent, ignore_errors=True)
    copy = Path(parent) / f"model_{uuid.uuid4().hex[:12]}"
    shutil.copytree(model_dir, copy)
    spark.sparkContext.addFile(str(copy), recursive=True)
    return str(copy)


def forecast_spark(
    history,
    model_uri: str,
    params: dict[str, Any] | None = None,
    *,
    id_col: str = "unique_id",
    buckets: int | None = None,
    partitions: int | None = None,
    tracking_uri: str | None = None,
    schema: str | None = None,
):
    """Forecast every series of the Spark DataFrame ``history`` with the MLflow model ``model_uri``; returns a Spark
    DataFrame of forecast rows (the columns of :meth:`Forecaster.predict`, datetimes as ISO strings).

    Args:
        history: the series in the model's training format (id, time, channels, covariates).
        params: the query (see :data:`ts_neuralode.integrations.mlflow.logged_model.PARAM_DEFAULTS`), e.g.
            ``{"horizon": "2D"}``.
        id_col: the series id column. buckets: None: one group (one predict call) per series; k: the series
            hashed into k groups, each forecast in the model's batches (fewer, larger calls: faster on many
            short series). partitions: Spark tasks of the per-series groups (default: the session's default
            parallelism, i.e. its cores); with ``buckets`` each bucket is one task. tracking_uri: the store of a
            ``models:/`` / ``runs:/`` URI.
        schema: the output DDL schema; default: read from a forecast of the first series on the driver.
    """
    from pyspark.sql import functions as F

    if id_col not in history.columns:
        raise ConfigError(
            f"history has no id column {id_col!r} (columns: {', '.join(history.columns)}); pass "
            "id_col= the column naming each series"
        )
    for name, value in (("buckets", buckets), ("partitions", partitions)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r} must be a positive integer, or None (see forecast_spark's help)")
    path = local_model(model_uri, tracking_uri)
    if schema is None:
        first = history.select(id_col).limit(1).collect()
        if not first:
            raise ConfigError("history holds no rows: nothing to forecast")
        probe = history.filter(F.col(id_col) == first[0][0]).toPandas()
        schema = output_schema(ForecastFunction(path, params)(probe))
    spark = history.sparkSession
    shipped = ship(spark, path)
    # An explicit repartition before the groupBy: the history is small in bytes for the compute it costs, and
    # adaptive query execution would coalesce groupBy's shuffle into one partition (one task, one core: measured
    # with 4 buckets of 1,000 series on local[2], all four ran in one Python worker one after the other). Spark
    # keeps the partition count of an explicit repartition, and the groupBy needs no second shuffle after it.
    if buckets is None:
        parts = partitions or spark.sparkContext.defaultParallelism
        fn = ForecastFunction(shipped, params, shipped=True)
        return history.repartition(parts, id_col).groupBy(id_col).applyInPandas(as_udf(fn), schema)
    keyed = history.withColumn(BUCKET_COL, F.pmod(F.hash(F.col(id_col)), F.lit(buckets)))
    fn = ForecastFunction(shipped, params, shipped=True, drop=(BUCKET_COL,))
    # by range: k bucket values into k partitions, one each (hashing them would put some buckets together)
    return keyed.repartitionByRange(buckets, BUCKET_COL).groupBy(BUCKET_COL).applyInPandas(as_udf(fn), schema)


__all__ = ["forecast_spark", "ForecastFunction", "ship", "output_schema", "local_model", "BUCKET_COL"]

#!/usr/bin/env python
"""Batch forecasts on Spark against one in-process ``Forecaster.predict`` (issue 24, part 4): series per second
and the largest difference between the two, at a few numbers of series.

Setup (not timed): sine series (``ts_neuralode.data.generators``, 20 irregular points each); an ODE-RNN (dopri5,
hidden 16: ``--model.model ode_rnn``, the CLI's defaults otherwise) trained 1 epoch on 200 of them with MLflow
tracking in a sqlite store, so that the model is the fit's *logged* MLflow model (``models:/...``), the one
:func:`ts_neuralode.integrations.spark.forecast_spark` runs; a local Spark session (``local[N]``, N = the usable
CPUs) with the history cached in it.

Timed, per size (same query: horizon 1.0, 3 points, seed 0):

* ``in-process``: ``Forecaster.load(model dir).predict(history)``, one call, batches of 64 series, 1 torch thread;
* ``spark, group per series``: ``forecast_spark(history_df, uri)``: ``groupBy("unique_id").applyInPandas``, one
  predict call per series (small sizes only: the per-call cost dominates);
* ``spark, k buckets``: ``forecast_spark(..., buckets=k)`` (k = 2 x N): the series hashed into k groups, each
  group one predict call in batches of 64;

each Spark run collected with ``toPandas()`` (as in-process ends with a pandas frame), after one warm-up run on a
small slice (Python workers started, model loaded). Every Spark result is compared with the in-process frame
(max abs difference over every numeric column; ODE-RNN bands are Gaussian, so they must agree).

    python scripts/spark_forecast.py --quick      # 1,000 series (~4 min on 2 busy shared cores)
    python scripts/spark_forecast.py              # 1,000, 5,000 and 20,000 series
    python scripts/spark_forecast.py --sizes 100000   # the issue's 100k series (buckets only)

Writes results/spark_forecast.md (``--out``). Needs pyspark (``pip install -e '.[spark]'``) and Java 17+.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ts_neuralode.api.forecaster import Forecaster  # noqa: E402
from ts_neuralode.core.threads import usable_cpus  # noqa: E402
from ts_neuralode.data.generators import generate  # noqa: E402
from ts_neuralode.integrations.mlflow.logged_model import query_options  # noqa: E402

QUERY = {"horizon": "1.0", "num_points": 3, "num_samples": 8, "seed": 0}
N_POINTS = 20
FIT_SERIES = 200


def fit_logged_model(work: Path) -> tuple[str, str, Path]:
    """(models:/ URI, tracking URI, model dir) of a 1-epoch ODE-RNN fit tracked in sqlite under ``work``."""
    from mlflow import MlflowClient

    from ts_neuralode.cli import main

    data = work / "fit.csv"
    generate("sine", n_series=FIT_SERIES, n_points=N_POINTS, seed=1).to_csv(data, index=False)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    buf = io.StringIO()
    old = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = main(
                [
                    "fit",
                    "--data.path",
                    str(data),
                    "--model.model",
                    "ode_rnn",
                    "--model.hidden_dim",
                    "16",
                    "--trainer.max_epochs",
                    "1",
                    "--trainer.enable_progress_bar",
                    "false",
                    "--tracking_uri",
                    uri,
                    "--experiment_name",
                    "spark_bench",
                    "--checkpoint_dir",
                    str(work / "ck"),
                    "--seed_everything",
                    "0",
                ]
            )
    finally:
        os.chdir(old)
    if rc != 0:
        raise SystemExit(f"fit failed: {buf.getvalue()[-2000:]}")
    client = MlflowClient(uri)
    model = client.search_logged_models([client.get_experiment_by_name("spark_bench").experiment_id])[0]
    return f"models:/{model.model_id}", uri, work / "ck" / "model"


def spark_session(cores: int):
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("ts_neuralode-spark-forecast")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", str(2 * cores))
        .config("spark.driver.memory", "2g")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.executorEnv.PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(unique_id=frame["unique_id"].astype(str))
    return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def max_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    a, b = _sorted(a), _sorted(b)
    if len(a) != len(b) or list(a.columns) != list(b.columns) or a["unique_id"].tolist() != b["unique_id"].tolist():
        return float("inf")
    cols = [c for c in a.columns if c != "unique_id"]
    return float(np.max(np.abs(a[cols].to_numpy(float) - b[cols].to_numpy(float))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 series only")
    ap.add_argument("--sizes", type=int, nargs="*", help="numbers of series (default: see --quick)")
    ap.add_argument(
        "--per_series_max",
        type=int,
        default=1000,
        help="largest size run with one group per series (default 1000: ~0.1 s per series)",
    )
    ap.add_argument("--out", default=str(ROOT / "results" / "spark_forecast.md"))
    args = ap.parse_args()
    sizes = args.sizes or ([1000] if args.quick else [1000, 5000, 20000])
    torch.set_num_threads(1)
    cores = usable_cpus()[0]
    buckets = 2 * cores
    load0 = os.getloadavg()[0]

    from ts_neuralode.integrations.spark import forecast_spark

    rows = []
    with tempfile.TemporaryDirectory(prefix="spark_bench_") as tmp:
        work = Path(tmp)
        model_uri, tracking_uri, model_dir = fit_logged_model(work)
        fc = Forecaster.load(model_dir)
        spark = spark_session(cores)
        try:
            full = generate("sine", n_series=max(sizes), n_points=N_POINTS, seed=2)
            full["unique_id"] = full["unique_id"].astype(str)
            ids = list(dict.fromkeys(full["unique_id"]))
            warm = spark.createDataFrame(full[full["unique_id"].isin(ids[:50])])
            for b in (None, buckets):  # warm-up: Python workers started, model loaded in each
                forecast_spark(warm, model_uri, QUERY, buckets=b, tracking_uri=tracking_uri).toPandas()
            for n in sizes:
                history = full[full["unique_id"].isin(set(ids[:n]))].reset_index(drop=True)
                t0 = time.perf_counter()
                expected = fc.predict(history, **query_options(QUERY))
                t_in = time.perf_counter() - t0
                rows.append(
                    {
                        "series": n,
                        "rows": len(history),
                        "how": "in-process predict (1 call, batches of 64)",
                        "seconds": t_in,
                        "series_per_s": n / t_in,
                        "max_abs_diff": 0.0,
                    }
                )
                print(rows[-1], flush=True)
                sdf = spark.createDataFrame(history).cache()
                sdf.count()
                for b in ([None] if n <= args.per_series_max else []) + [buckets]:
                    t0 = time.perf_counter()
                    got = forecast_spark(sdf, model_uri, QUERY, buckets=b, tracking_uri=tracking_uri).toPandas()
                    dt = time.perf_counter() - t0
                    how = (
                        "spark applyInPandas, one group per series"
                        if b is None
                        else f"spark applyInPandas, {b} hash buckets of series"
                    )
                    rows.append(
                        {
                            "series": n,
                            "rows": len(history),
                            "how": how,
                            "seconds": dt,
                            "series_per_s": n / dt,
                            "max_abs_diff": max_diff(got, expected),
                        }
                    )
                    print(rows[-1], flush=True)
                sdf.unpersist()
        finally:
            spark.stop()
    load1 = os.getloadavg()[0]
    write(args, rows, cores, buckets, load0, load1)


def write(args, rows, cores, buckets, load0, load1) -> None:
    import platform

    import pyspark

    cmd = (
        "python scripts/spark_forecast.py"
        + (" --quick" if args.quick else "")
        + (f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes else "")
    )
    lines = [
        "# Batch forecasts on Spark vs one in-process predict",
        "",
        f"Command: `OMP_NUM_THREADS=1 {cmd}` (scripts/spark_forecast.py; its docstring says what is timed).",
        "",
        f"Machine: {platform.machine()}, {cores} usable CPUs, **shared** with other jobs (load average "
        f"{load0:.1f} at the start, {load1:.1f} at the end): absolute times move with the load, the rows of one "
        f"size ran one after the other in one process. Spark {pyspark.__version__} `local[{cores}]`, "
        f"{2 * cores} shuffle partitions, Java 17; torch {torch.__version__}, 1 thread per process.",
        "",
        f"Model: the logged MLflow model of a 1-epoch ODE-RNN fit (hidden 16, dopri5) on {FIT_SERIES} sine series; "
        f"history: sine series of {N_POINTS} irregular points; query: {QUERY}. `max abs diff`: the largest "
        "difference between Spark's forecast frame and the in-process one over every numeric column (ds, forecast, "
        "bands), the same rows.",
        "",
        "| series | history rows | how | seconds | series / s | vs in-process | max abs diff |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    base = {r["series"]: r["seconds"] for r in rows if r["how"].startswith("in-process")}
    for r in rows:
        ratio = base[r["series"]] / r["seconds"]
        lines.append(
            f"| {r['series']:,} | {r['rows']:,} | {r['how']} | {r['seconds']:.1f} | "
            f"{r['series_per_s']:,.0f} | {ratio:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        f"`vs in-process`: in-process seconds / this row's seconds (above 1: faster than one in-process call). "
        f"Buckets: {buckets} = 2 x the cores.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

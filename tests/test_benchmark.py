"""``ts-neuralode benchmark``: outputs (table, CSV, PNG, markdown), MLflow parent + nested runs, one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.api import benchmark
from ts_neuralode.cli import main
from ts_neuralode.data.generators import generate


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny_csv(tmp_path):
    path = tmp_path / "tiny.csv"
    generate("sine", n_series=20, n_points=16, seed=1).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_benchmark_cli_outputs_and_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root lands here
    csv = _tiny_csv(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "res" / "bench.csv"
    rc = main(
        [
            "benchmark",
            "--data.path",
            str(csv),
            "--models",
            "latent_ode_rk4,latent_gru_flow",
            "--epochs",
            "1",
            "--data.batch_size",
            "8",
            "--latency_reps",
            "1",
            "--out",
            str(out),
            "--tracking_uri",
            uri,
            "--run_name",
            "tiny",
            "--progress",
            "false",
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    header = stdout.strip().splitlines()[0]
    for col in (
        "model",
        "params",
        "epoch time s (median)",
        "latency p50 ms",
        "latency p95 ms",
        "interp MSE",
        "extrap MSE",
    ):
        assert col in header
    assert stdout.count("| latent_") == 2

    table = pd.read_csv(out)
    assert list(table.columns) == list(benchmark.COLUMNS)
    # the models, then the default baselines (no --season: no seasonal row)
    assert list(table["model"]) == ["latent_ode_rk4", "latent_gru_flow", "locf", "mean", "linear"]
    models, baselines = table.iloc[:2], table.iloc[2:]
    assert (models["params"] > 0).all() and (baselines["params"] == 0).all()
    assert (baselines["family"] == "baseline").all() and baselines["epoch_time_s"].isna().all()
    assert (models["epoch_time_s"] > 0).all() and (table["latency_p95_ms"] >= table["latency_p50_ms"]).all()
    assert np.isfinite(table[["interp_mse", "extrap_mse", "interp_skill", "extrap_skill"]].to_numpy()).all()
    assert table["forecast_mse"].isna().all()  # not a forecast run
    # skill = MSE / the LOCF row's MSE, every row, both tasks
    locf = table.set_index("model").loc["locf"]
    for task in ("interp", "extrap"):
        np.testing.assert_allclose(table[f"{task}_skill"], table[f"{task}_mse"] / locf[f"{task}_mse"], rtol=1e-9)
    assert "interp skill" in header and "extrap skill" in header and "forecast" not in header
    assert "| locf | 0 |" in stdout
    rk4, flow = table.iloc[0], table.iloc[1]
    assert rk4["infer_nfe"] > 0 and rk4["train_nfe"] > 0  # the ODE counts function evaluations
    # the latent flow's decoder needs no evaluations (its shared Euler ODE-RNN encoder still counts its own)
    assert flow["infer_nfe"] < rk4["infer_nfe"] and flow["train_nfe"] < rk4["train_nfe"]
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out.with_suffix(".md").read_text()
    assert "ts-neuralode benchmark --data.path" in md and "| latent_gru_flow |" in md

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ts_neuralode_benchmark")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "tiny"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["epochs"] == "1"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["latent_gru_flow", "latent_ode_rk4", "linear", "locf", "mean"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert math.isfinite(child.data.metrics["interp_mse"]) and math.isfinite(child.data.metrics["extrap_skill"])
        hist = client.get_metric_history(child.info.run_id, "epoch/epoch_time_s")
        if child.info.run_name.startswith("latent_"):
            assert child.data.metrics["params"] > 0 and [m.step for m in hist] == [0]
        else:  # a baseline: nothing trained
            assert child.data.metrics["params"] == 0 and hist == []
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"bench.csv", "bench.png", "bench.md"} <= arts


@pytest.mark.slow
def test_run_benchmark_same_seed_same_init_and_shared_split():
    cfg = benchmark.BenchmarkConfig(
        dataset="sine", n_series=12, n_points=12, models=("latent_resnet_flow",), epochs=1, batch_size=6, latency_reps=1
    )
    a = benchmark.run_benchmark(cfg, progress=False)
    b = benchmark.run_benchmark(cfg, progress=False)
    # same data, seed and budget -> the same model and the same scores (timings aside)
    for col in ("params", "interp_mse", "extrap_mse", "final_train_loss"):
        assert a.table[col].iloc[0] == pytest.approx(b.table[col].iloc[0], rel=1e-5)
    assert a.layout == "padded"  # series with their own random times: no B*T union grid
    dms = benchmark.make_datamodules(cfg, benchmark.load_frame(cfg), "padded")
    assert list(dms["interpolation"].split["test"]) == list(dms["extrapolation"].split["test"])


@pytest.mark.slow
def test_forecast_task_on_one_long_series_with_seasonal_baseline(margin):
    """The bundled CO2 series (one series, weekly, 1958-2001: 41.75 years before the two held-out horizons, so 42
    windows, ×4 to fill 10 batches of 16: 168 an epoch): forecast windows split by time; the baselines' rows show at
    once what beats carrying the
    last value forward (the yearly cycle does, the mean does not)."""
    from pathlib import Path

    co2 = Path(__file__).resolve().parents[1] / "data" / "co2_mauna_loa.csv"
    cfg = benchmark.BenchmarkConfig(
        path=str(co2),
        read_options={"time_unit": "D"},
        models=("flow_rnn",),
        task="forecast",
        horizon="52W",
        context="104W",
        season="365D",
        epochs=1,
        batch_size=16,
        latency_reps=1,
        model_options={"latent_dim": 4, "hidden_dim": 8},
    )
    res = benchmark.run_benchmark(cfg, progress=False)
    t = res.table.set_index("model")
    assert list(t.index) == ["flow_rnn", "locf", "mean", "linear", "seasonal"]
    assert t[["interp_mse", "extrap_mse"]].isna().all().all()  # split by time: only the forecast test is scored
    assert np.isfinite(t["forecast_mse"]).all()
    np.testing.assert_allclose(t["forecast_skill"], t["forecast_mse"] / t.loc["locf", "forecast_mse"], rtol=1e-9)
    # naive forecasts of fixed data: deterministic, recorded so a change of window or scaler shows its headroom
    margin("seasonal naive skill vs LOCF", t.loc["seasonal", "forecast_skill"], 0.8)
    margin("series-mean skill vs LOCF", t.loc["mean", "forecast_skill"], 1.5, above=True)
    assert t.loc["linear", "forecast_mse"] == t.loc["locf", "forecast_mse"]  # after the cutoff linear is flat
    md = benchmark.markdown_table(res.table)
    assert "forecast skill" in md and "interp MSE" not in md
    assert "forecast windows (horizon 52W, context 104W, 168 training windows per epoch" in res.description


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--models", "latent_ode_dopri5,nope"], "unknown model"),
        (["--data.path", "x.csv", "--dataset", "sine"], "exactly one of"),
        ([], None),
        (["--epochs", "0"], "--epochs 0 must be >= 1"),
        (["--data.task", "smoothing"], "invalid choice"),
        (["--bogus", "1"], "unrecognized arguments"),
        (["--data.format", "wide"], "applies to a CSV only"),
        (["--data.task", "forecast"], "needs --data.horizon"),
        (["--baselines", "seasonal"], "needs --data.season"),
        (["--baselines", "locf,drift"], "unknown baseline"),
        (["--data.split_by", "time"], "with --data.task forecast only"),
        (["--tracking_uri", "some_dir"], "directory"),
    ],
)
def test_bad_options_one_line(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    argv = ["benchmark", "--epochs", "1", "--progress", "false"] + args
    if args != [] and "--data.path" not in args:
        argv += ["--dataset", "sine", "--n_series", "6", "--n_points", "8"]
    if args == []:
        fragment = "exactly one of"
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("ts-neuralode")
    assert fragment in err


def test_unknown_dataset_and_missing_file(tmp_path, capsys):
    assert main(["benchmark", "--dataset", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert main(["benchmark", "--data.path", str(tmp_path / "none.csv")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_markdown_table_and_plot_handle_failures(tmp_path):
    df = pd.DataFrame(
        [
            {
                **{c: math.nan for c in benchmark.COLUMNS},
                "model": "a",
                "params": 10,
                "epoch_time_s": 0.5,
                "interp_mse": 0.1,
                "extrap_mse": 0.2,
                "error": "",
            },
            {**{c: math.nan for c in benchmark.COLUMNS}, "model": "b", "params": 20, "error": "SolverError: underflow"},
        ]
    )
    md = benchmark.markdown_table(df)
    assert md.splitlines()[0].endswith("| error |") and "SolverError: underflow" in md
    assert "| b | 20 | — |" in md
    png = benchmark.plot_time_vs_mse(df, tmp_path / "p.png")
    assert png.stat().st_size > 1000

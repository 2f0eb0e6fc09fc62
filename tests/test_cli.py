"""``ts-neuralode`` end to end on a datetime CSV: fit, forecast beyond the history, one-line user errors, progress."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_FIT_ARGS, subprocess_env
from ts_neuralode.cli import main

NAME = "latent_ode_coupling_flow"  # the forecast column of TINY_FIT_ARGS' model (model + flow kind)
PNG = b"\x89PNG\r\n\x1a\n"


def history(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv)
    df["ds"] = pd.to_datetime(df["ds"])
    return df.dropna(subset=["y"])


def last_obs(csv: Path) -> pd.Series:
    return history(csv).groupby("unique_id")["ds"].max()


def forecast(dt_fitted, dt_csv, out: Path, *args: str, capfd=None) -> tuple[int, pd.DataFrame | None, str]:
    rc = main(
        ["forecast", "--model", str(dt_fitted["model_dir"]), "--data.path", str(dt_csv), "--out", str(out), *args]
    )
    err = capfd.readouterr().err if capfd is not None else ""
    return rc, (pd.read_csv(out) if rc == 0 else None), err


def check_forecast(fc: pd.DataFrame, dt_csv: Path, levels=("50", "90")) -> pd.DataFrame:
    """Nixtla columns, +01:00 timestamps strictly after each series' last observation, ordered bands."""
    cols = ["unique_id", "ds", NAME]
    for lv in levels:
        cols += [f"{NAME}-lo-{lv}", f"{NAME}-hi-{lv}"]
    assert list(fc.columns) == cols
    assert fc["ds"].str.endswith("+01:00").all(), fc["ds"].head()
    fc = fc.assign(ds=pd.to_datetime(fc["ds"]))
    assert str(fc["ds"].dt.tz) == "UTC+01:00"
    last = last_obs(dt_csv)
    assert set(fc["unique_id"]) == set(last.index)
    assert (fc["ds"] > fc["unique_id"].map(last)).all(), "a forecast time is not after its series' history"
    vals = fc[[c for c in cols[2:]]].to_numpy()
    assert np.isfinite(vals).all()
    lo90, hi90, mean = fc[f"{NAME}-lo-90"], fc[f"{NAME}-hi-90"], fc[NAME]
    assert (lo90 <= mean + 1e-9).all() and (mean <= hi90 + 1e-9).all()
    if "50" in levels:
        assert (lo90 <= fc[f"{NAME}-lo-50"] + 1e-9).all() and (fc[f"{NAME}-hi-50"] <= hi90 + 1e-9).all()
        assert (fc[f"{NAME}-lo-50"] <= fc[f"{NAME}-hi-50"] + 1e-9).all()
    return fc


@pytest.mark.slow
def test_fit_on_datetime_csv(dt_fitted, dt_csv):
    assert dt_fitted["rc"] == 0, dt_fitted["output"][-2000:]
    cfg = json.loads((dt_fitted["model_dir"] / "config.json").read_text())
    assert cfg["read_options"]["time_unit"] == "h"
    assert cfg["transform"]["codec"]["kind"] == "datetime" and cfg["transform"]["codec"]["tz"] == "fixed:3600"
    assert (dt_fitted["ckpt_dir"] / "last.ckpt").is_file()
    # progress bar on by default (Lightning's TQDM bar, one "Epoch N" per epoch)
    assert "Epoch 0" in dt_fitted["output"] and "Epoch 1" in dt_fitted["output"]


@pytest.mark.slow
def test_forecast_horizon_as_duration_with_plots_and_progress(dt_fitted, dt_csv, tmp_path, capfd):
    out = tmp_path / "fc.csv"
    rc, fc, err = forecast(
        dt_fitted, dt_csv, out, "--horizon", "12h", "--num_points", "4", "--num_samples", "20", capfd=capfd
    )
    assert rc == 0, err
    fc = check_forecast(fc, dt_csv)
    assert (fc.groupby("unique_id").size() == 4).all()
    # the last query time is exactly 12 h after each series' last observation
    end = fc.groupby("unique_id")["ds"].max()
    pd.testing.assert_series_equal(end, last_obs(dt_csv) + pd.Timedelta("12h"), check_names=False)
    pngs = sorted((tmp_path / "fc_plots").glob("*.png"))
    assert [p.name for p in pngs] == [f"forecast_s{k}.png" for k in range(6)]
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 5000 for p in pngs)
    assert "forecast:" in err  # tqdm bar shown by default


def test_forecast_horizon_as_number_regular_grid_no_progress(dt_fitted, dt_csv, tmp_path, capfd):
    out = tmp_path / "fc.csv"
    rc, fc, err = forecast(
        dt_fitted,
        dt_csv,
        out,
        "--horizon",
        "6",
        "--freq",
        "2",
        "--num_samples",
        "20",
        "--plots",
        "false",
        "--progress",
        "false",
        capfd=capfd,
    )
    assert rc == 0, err
    fc = check_forecast(fc, dt_csv)
    # numbers are in the training time unit (hours): a grid at last + 2 h, 4 h, 6 h
    lag = fc["ds"] - fc["unique_id"].map(last_obs(dt_csv))
    assert sorted(set(lag)) == [pd.Timedelta(h, "h") for h in (2, 4, 6)]
    assert (fc.groupby("unique_id").size() == 3).all()
    assert not (tmp_path / "fc_plots").exists()
    assert "forecast:" not in err


def test_forecast_reads_a_history_whose_columns_are_named_otherwise(dt_fitted, dt_csv, tmp_path, capfd):
    """--data.id_col / time_col / value_cols: the same history under other column names gives the same forecast."""
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(dt_csv).rename(columns={"unique_id": "sensor", "ds": "when", "y": "temp"}).to_csv(renamed, index=False)
    args = ("--horizon", "6", "--freq", "2", "--num_samples", "20", "--plots", "false", "--progress", "false")
    rc, ref, err = forecast(dt_fitted, dt_csv, tmp_path / "ref.csv", *args, capfd=capfd)
    assert rc == 0, err
    cols = ("--data.id_col", "sensor", "--data.time_col", "when", "--data.value_cols", "temp")
    rc, got, err = forecast(dt_fitted, renamed, tmp_path / "got.csv", *args, *cols, capfd=capfd)
    assert rc == 0, err
    pd.testing.assert_frame_equal(got, ref)
    # without the flags: one line naming the column the model expects and the flag that fixes it
    rc, _, err = forecast(dt_fitted, renamed, tmp_path / "bad.csv", *args, capfd=capfd)
    assert rc != 0 and "missing time column 'ds'" in err and "--data.time_col" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_forecast_far_beyond_history_daily_grid(dt_fitted, dt_csv, tmp_path, capfd):
    out = tmp_path / "far.csv"
    rc, fc, err = forecast(
        dt_fitted,
        dt_csv,
        out,
        "--horizon",
        "30D",
        "--freq",
        "1D",
        "--num_samples",
        "20",
        "--level",
        "90",
        "--plots",
        "false",
        "--progress",
        "false",
        capfd=capfd,
    )
    assert rc == 0, err
    fc = check_forecast(fc, dt_csv, levels=("90",))
    assert (fc.groupby("unique_id").size() == 30).all()
    span = fc.groupby("unique_id")["ds"].max() - last_obs(dt_csv)
    assert (span == pd.Timedelta("30D")).all()


def test_forecast_explicit_times(dt_fitted, dt_csv, tmp_path, capfd):
    times = ["2024-02-01T00:00:00+01:00", "2024-03-01T12:30:00+01:00"]
    out = tmp_path / "times.csv"
    rc, fc, err = forecast(
        dt_fitted,
        dt_csv,
        out,
        "--times",
        *times,
        "--num_samples",
        "20",
        "--plots",
        "false",
        "--progress",
        "false",
        capfd=capfd,
    )
    assert rc == 0, err
    fc = check_forecast(fc, dt_csv)
    assert len(fc) == 6 * 2
    for _, g in fc.groupby("unique_id"):
        assert list(g["ds"]) == [pd.Timestamp(t) for t in times]


@pytest.mark.slow
def test_forecast_attaches_to_the_fit_run(dt_fitted, dt_csv, tmp_path, capfd):
    from mlflow import MlflowClient

    out = tmp_path / "att.csv"
    rc, _, err = forecast(
        dt_fitted,
        dt_csv,
        out,
        "--horizon",
        "1D",
        "--num_points",
        "3",
        "--num_samples",
        "10",
        "--progress",
        "false",
        "--mlflow_run",
        str(dt_fitted["ckpt_dir"]),
        capfd=capfd,
    )
    assert rc == 0, err
    run_id = json.loads((dt_fitted["ckpt_dir"] / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(dt_fitted["tracking_uri"])
    arts = {a.path for a in client.list_artifacts(run_id, "forecast")}
    plots = {a.path for a in client.list_artifacts(run_id, "forecast/plots")}
    assert "forecast/att.csv" in arts and len(plots) == 6


# -- user errors: exactly one line on stderr, exit status 2, no traceback ----------------------------------------
@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bad") / "no_ds.csv"
    p.write_text("unique_id,time,y\na,2024-01-01T00:00:00+01:00,1\na,2024-01-01T01:00:00+01:00,2\n")
    return p


FIT_ERRORS = [
    (["--data.path", "{bad}"], "missing time column 'ds'"),
    (["--data.path", "{csv}", "--data.time_col", "when"], "missing time column 'when'"),
    (["--data.path", "{csv}", "--ckpt_path", "{tmp}/nonexistent.ckpt"], "checkpoint file not found"),
    (["--data.path", "{csv}", "--trainer.bogus", "1"], "unrecognized arguments"),
    (["--data.path", "{csv}", "--max_epochs", "1"], "did you mean --trainer.max_epochs for --max_epochs?"),
    (["--data.path", "{csv}", "--model.evolution.kind", "spline"], "evolution='spline' is not supported"),
    (["--data.path", "{csv}", "--data.time_unit", "fortnight"], "time_unit='fortnight'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,fragment", FIT_ERRORS, ids=[f[1][:24] for f in FIT_ERRORS])
def test_fit_user_errors_one_line(args, fragment, dt_csv, bad_csv, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(bad=bad_csv, csv=dt_csv, tmp=tmp_path) for a in args]
    rc = main(["fit", "--tracking", "false", *TINY_FIT_ARGS, *argv])  # the case last: it overrides
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("ts-neuralode") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


FORECAST_ERRORS = [
    (["--horizon", "-1D"], "must be positive"),
    (["--horizon", "-3"], "must be positive"),
    (["--times", "2023-12-01T00:00:00+01:00"], "is before its first observation"),
    (["--times", "2024-02-01T00:00:00"], "naive"),
    (["--horizon", "12h", "--freq", "1D"], "longer than horizon"),
    (["--horizon", "12h", "--bogus"], "unrecognized arguments: --bogus"),
    (["--horizon", "12h", "--num_sampl", "3"], "unrecognized arguments"),  # no silent abbreviations
    (["--horizon", "12h", "--samples", "3"], "(did you mean --num_samples for --samples?)"),
    (["--horizon", "12h", "--zzz", "3"], "unrecognized arguments: --zzz 3; see"),  # nothing close: no guess
    ([], "no query times"),
    (["--horizon", "12h", "--series", "nope"], "not found in the history"),
    (["--horizon", "12h", "--quantiles", "1.5"], "strictly between 0 and 1"),
]


@pytest.mark.parametrize("args,fragment", FORECAST_ERRORS, ids=[" ".join(f[0]) or "none" for f in FORECAST_ERRORS])
def test_forecast_user_errors_one_line(args, fragment, dt_fitted, dt_csv, tmp_path, capfd):
    rc = main(
        [
            "forecast",
            "--model",
            str(dt_fitted["model_dir"]),
            "--data.path",
            str(dt_csv),
            "--out",
            str(tmp_path / "x.csv"),
            "--progress",
            "false",
            *args,
        ]
    )
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("ts-neuralode") and fragment in lines[0], lines[0]
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (
            ["forecast", "--model", "{tmp}/no_model", "--data.path", "{csv}", "--horizon", "1D"],
            "no such model directory",
        ),
        (["forecast", "--model", "{tmp}"], "required: --data.path"),
        (["forecast", "--model", "{model}", "--data.path", "{bad}", "--horizon", "1D"], "missing time column"),
        (
            ["validate", "--data.path", "{csv}", "--ckpt_path", "last", "--checkpoint_dir", "{tmp}/empty"],
            "no checkpoint at",
        ),
        (["fitt"], "unknown subcommand 'fitt'"),
        (
            [
                "forecast",
                "--model",
                "{model}",
                "--data.path",
                "{csv}",
                "--horizon",
                "1D",
                "--out",
                "{tmp}/o.csv",
                "--mlflow_run",
                "nosuchrun",
                "--tracking_uri",
                "{uri}",
            ],
            "no run nosuchrun",
        ),
    ],
)
def test_other_user_errors_one_line(argv, fragment, dt_fitted, dt_csv, bad_csv, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    argv = [
        a.format(tmp=tmp_path, csv=dt_csv, bad=bad_csv, model=dt_fitted["model_dir"], uri=dt_fitted["tracking_uri"])
        for a in argv
    ]
    rc = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "o.csv").exists()  # a bad --mlflow_run is caught before anything is written


@pytest.mark.slow
def test_console_errors_in_a_real_process(dt_fitted, dt_csv, bad_csv, tmp_path):
    """The same through ``python -m ts_neuralode.cli`` (what the console script runs): nothing else on stderr —
    no Lightning warning about sys.argv, no traceback — and exit status 2."""
    cases = [
        (["fit", "--data.path", str(bad_csv)], "missing time column 'ds'"),
        (
            ["forecast", "--model", str(dt_fitted["model_dir"]), "--data.path", str(dt_csv), "--horizon", "-2h"],
            "must be positive",
        ),
    ]
    for argv, fragment in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "ts_neuralode.cli", *argv],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and fragment in lines[0], proc.stderr


# -- progress bars: on by default, off on request ---------------------------------------------------------------
@pytest.mark.slow
def test_fit_progress_bar_can_be_turned_off(dt_csv, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "fit",
            "--data.path",
            str(dt_csv),
            "--data.time_unit",
            "h",
            "--tracking",
            "false",
            *TINY_FIT_ARGS,
            "--trainer.max_epochs",
            "1",
        ]
    )  # TINY_FIT_ARGS: --trainer.enable_progress_bar false
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    assert "Epoch 0" not in cap.out + cap.err


@pytest.mark.slow
def test_benchmark_progress_bar_default_and_off(tmp_path, monkeypatch, capfd):
    from ts_neuralode.data.generators import generate

    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "b.csv"
    generate("sine", n_series=10, n_points=10, seed=2).to_csv(csv, index=False)
    base = [
        "benchmark",
        "--data.path",
        str(csv),
        "--models",
        "latent_coupling_flow",
        "--epochs",
        "1",
        "--data.batch_size",
        "8",
        "--latency_reps",
        "1",
        "--tracking",
        "false",
    ]
    assert main([*base, "--out", str(tmp_path / "on.csv")]) == 0
    assert "benchmark:" in capfd.readouterr().err
    assert main([*base, "--out", str(tmp_path / "off.csv"), "--progress", "false"]) == 0
    assert "benchmark:" not in capfd.readouterr().err


def test_generate_bad_name_one_line(tmp_path, capfd):
    code = main(["generate", "lorenz", "--out", str(tmp_path / "x.csv")])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "invalid choice: 'lorenz'" in err and not (tmp_path / "x.csv").exists()

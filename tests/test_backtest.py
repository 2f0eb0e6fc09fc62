"""Rolling-origin backtesting: ``Forecaster.cross_validation``, ``backtest.evaluate`` and ``ts-neuralode backtest``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_FIT_ARGS
from ts_neuralode.api import backtest, windows
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main

NAME = "latent_ode_coupling_flow"
HOUR_NS = 3_600_000_000_000


@pytest.fixture(scope="module")
def fc(dt_fitted):
    assert dt_fitted["rc"] == 0, dt_fitted["output"][-2000:]
    return Forecaster.load(dt_fitted["model_dir"])


@pytest.fixture(scope="module")
def observed(dt_csv) -> pd.DataFrame:
    df = pd.read_csv(dt_csv).dropna(subset=["y"])
    return df.assign(ds=pd.to_datetime(df["ds"]))


@pytest.fixture(scope="module")
def cv(fc, dt_csv):
    return fc.cross_validation(str(dt_csv), "12h", n_windows=3, step="6h", num_samples=16)


@pytest.mark.slow
def test_rows_are_the_observations_after_each_cutoff(cv, observed):
    """Nixtla columns; every row is an observed value within the horizon after its window's cutoff; each series'
    last window ends at its last observation (cutoff = last - 12h, then every 6h before)."""
    assert list(cv.columns[:9]) == [
        "unique_id",
        "ds",
        "cutoff",
        "y",
        NAME,
        f"{NAME}-lo-50",
        f"{NAME}-hi-50",
        f"{NAME}-lo-90",
        f"{NAME}-hi-90",
    ]
    assert {"locf", "mean"} <= set(cv.columns) and any(c.startswith(f"{NAME}-q-") for c in cv.columns)
    assert str(cv["ds"].dt.tz) == "UTC+01:00" and str(cv["cutoff"].dt.tz) == "UTC+01:00"
    lead = cv["ds"] - cv["cutoff"]
    assert (lead > pd.Timedelta(0)).all() and (lead <= pd.Timedelta("12h")).all()
    key = observed.set_index(["unique_id", "ds"])["y"]
    got = cv.set_index(["unique_id", "ds"])["y"]
    assert np.allclose(got.to_numpy(), key.loc[got.index].to_numpy())  # y is the file's value at that time
    # completeness: every observation within (cutoff, cutoff + 12h] of every window is a row
    for (uid, cut), g in cv.groupby(["unique_id", "cutoff"]):
        o = observed[
            (observed["unique_id"] == uid) & (observed["ds"] > cut) & (observed["ds"] <= cut + pd.Timedelta("12h"))
        ]
        assert sorted(o["ds"]) == sorted(g["ds"])
    last = observed.groupby("unique_id")["ds"].max()
    ends = cv.groupby("unique_id")["ds"].max()
    assert (ends == last[ends.index]).all()
    cuts = cv.groupby("unique_id")["cutoff"].unique()
    for uid, c in cuts.items():  # a window without targets is left out: a subset of the three
        assert set(last[uid] - pd.Series(c)) <= {pd.Timedelta(h) for h in ("12h", "18h", "24h")}
    assert cv.groupby("unique_id")["cutoff"].nunique().max() == 3
    assert (cv[f"{NAME}-lo-90"] <= cv[f"{NAME}-lo-50"] + 1e-9).all()


@pytest.mark.slow
def test_a_window_is_a_forecast_from_the_history_up_to_its_cutoff(fc, cv, observed, dt_csv):
    """The rows of a window are exactly what predict gives for the history cut at each series' cutoff (the same
    series in the batch, the same seed: the same latent samples)."""
    raw = pd.read_csv(dt_csv)
    last_cut = cv.groupby("unique_id")["cutoff"].max()
    rows = cv[cv["cutoff"] == cv["unique_id"].map(last_cut)].sort_values(["unique_id", "ds"])
    hist = raw[pd.to_datetime(raw["ds"]) <= raw["unique_id"].map(last_cut)]
    direct = fc.predict(hist, times=rows[["unique_id", "ds"]], num_samples=16)
    assert np.allclose(direct[NAME].to_numpy(), rows[NAME].to_numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(direct[f"{NAME}-hi-90"].to_numpy(), rows[f"{NAME}-hi-90"].to_numpy(), rtol=1e-5, atol=1e-6)
    uid, cut = last_cut.index[0], last_cut.iloc[0]
    rows = rows[rows["unique_id"] == uid]
    # the baselines: the value at the cutoff, and the mean of the history up to it
    h = observed[(observed["unique_id"] == uid) & (observed["ds"] <= cut)]
    assert np.allclose(rows["locf"], h["y"].iloc[-1]) and np.allclose(rows["mean"], h["y"].mean())


@pytest.mark.slow
def test_evaluate_matches_the_definitions(cv):
    m = backtest.evaluate(cv, 12.0, buckets=3, unit_ns=HOUR_NS)
    assert set(m["scope"]) == {"overall", "series", "horizon"}
    overall = m[m["scope"] == "overall"].set_index("model")
    err = (cv[NAME] - cv["y"]).abs()
    assert overall.loc[NAME, "n"] == len(cv)
    assert np.isclose(overall.loc[NAME, "mae"], err.mean())
    assert np.isclose(overall.loc[NAME, "rmse"], np.sqrt(((cv[NAME] - cv["y"]) ** 2).mean()))
    locf_mae = (cv["locf"] - cv["y"]).abs().groupby(cv["unique_id"]).transform("mean")  # MASE-style, per series
    assert np.isclose(overall.loc[NAME, "scaled_mae"], (err / locf_mae).mean())
    inside = (cv["y"] >= cv[f"{NAME}-lo-90"]) & (cv["y"] <= cv[f"{NAME}-hi-90"])
    assert np.isclose(overall.loc[NAME, "coverage-90"], inside.mean())
    assert np.isclose(overall.loc[NAME, "width-90"], (cv[f"{NAME}-hi-90"] - cv[f"{NAME}-lo-90"]).mean())
    assert overall.loc[NAME, "winkler-90"] >= overall.loc[NAME, "width-90"]
    assert 0 < overall.loc[NAME, "crps"] < err.mean() + 1e-9  # a spread forecast's CRPS is below its MAE
    assert np.isnan(overall.loc["locf", "crps"]) and np.isclose(overall.loc["locf", "scaled_mae"], 1)
    hz = m[(m["scope"] == "horizon") & (m["model"] == NAME)].sort_values("bucket")
    assert list(hz["group"]) == ["(0h, 4h]", "(4h, 8h]", "(8h, 12h]"][: len(hz)]
    assert hz["n"].sum() == len(cv)
    series = m[(m["scope"] == "series") & (m["model"] == NAME)]
    assert series["n"].sum() == len(cv) and set(series["group"]) == set(cv["unique_id"])


@pytest.mark.slow
def test_evaluate_takes_the_horizon_forms_of_cross_validation(cv):
    from ts_neuralode.errors import ConfigError

    want = backtest.evaluate(cv, 12.0, buckets=3, unit_ns=HOUR_NS)
    for horizon in ("12h", pd.Timedelta("12h"), "720min"):
        got = backtest.evaluate(cv, horizon, buckets=3)
        pd.testing.assert_frame_equal(got.drop(columns="group"), want.drop(columns="group"))
    assert list(backtest.evaluate(cv, "0.5D", buckets=3).query("scope == 'horizon'")["group"].unique()) == [
        "(0h, 4h]",
        "(4h, 8h]",
        "(8h, 12h]",
    ]  # labels in the duration's own unit
    with pytest.raises(ConfigError, match="is a number but the backtest's times are datetimes"):
        backtest.evaluate(cv, 12.0)  # no silent hours
    numeric = cv.assign(ds=np.arange(len(cv), dtype=float), cutoff=0.0)
    with pytest.raises(ConfigError, match="times are numbers"):
        backtest.evaluate(numeric, "12h")


@pytest.mark.slow
def test_scaled_mae_gives_every_series_its_own_scale():
    """MASE-style: scaling one series' values leaves scaled_mae unchanged; a series with a zero locf MAE is left
    out with a note instead of giving inf or NaN."""
    rng = np.random.default_rng(1)
    parts = []
    for k, scale in enumerate((1.0, 10.0, 100.0)):
        y = scale * rng.normal(size=12)
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": f"s{k}",
                    "ds": np.arange(12.0) % 4 + 1,
                    "cutoff": 0.0,
                    "y": y,
                    "f": y + scale * rng.normal(0, 0.5, 12),
                    "locf": y + scale * rng.normal(0, 1, 12),
                }
            )
        )
    cv = pd.concat(parts, ignore_index=True)
    m = backtest.evaluate(cv, 4.0, buckets=2).set_index(["scope", "group", "model"])
    ratio = (cv["f"] - cv["y"]).abs() / (cv["locf"] - cv["y"]).abs().groupby(cv["unique_id"]).transform("mean")
    assert np.isclose(m.loc[("overall", "all", "f"), "scaled_mae"], ratio.mean())
    assert np.isclose(m.loc[("overall", "all", "locf"), "scaled_mae"], 1.0)
    big = cv.assign(**{c: np.where(cv["unique_id"] == "s2", 1000 * cv[c], cv[c]) for c in ("y", "f", "locf")})
    again = backtest.evaluate(big, 4.0, buckets=2).set_index(["scope", "group", "model"])
    assert np.isclose(again.loc[("overall", "all", "f"), "scaled_mae"], ratio.mean())
    flat = pd.concat(
        [cv, pd.DataFrame({"unique_id": "c", "ds": [1.0, 2.0], "cutoff": 0.0, "y": 3.0, "f": 3.5, "locf": 3.0})],
        ignore_index=True,
    )
    res = backtest.evaluate(flat, 4.0, buckets=2)
    assert np.isclose(
        res.set_index(["scope", "group", "model"]).loc[("overall", "all", "f"), "scaled_mae"], ratio.mean()
    )
    assert np.isfinite(res.query("scope != 'series'")["scaled_mae"]).all()
    assert res.attrs["notes"] and "c" in res.attrs["notes"][0]
    assert "Note: scaled_mae leaves out 1 series" in backtest.markdown_report(flat, res, "t")


@pytest.mark.slow
def test_backtest_command_writes_report_and_mlflow_metrics(dt_fitted, dt_csv, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "bt"
    rc = main(
        [
            "backtest",
            "--model",
            str(dt_fitted["model_dir"]),
            "--data.path",
            str(dt_csv),
            "--horizon",
            "12h",
            "--n_windows",
            "2",
            "--buckets",
            "2",
            "--num_samples",
            "8",
            "--out_dir",
            str(out),
            "--tracking_uri",
            uri,
            "--experiment_name",
            "bt",
            "--progress",
            "false",
        ]
    )
    assert rc == 0
    cv = pd.read_csv(out / "cv.csv")
    assert list(cv.columns[:4]) == ["unique_id", "ds", "cutoff", "y"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["model"]) == {NAME, "locf", "mean"}
    report = (out / "report.md").read_text()
    assert "## Per horizon bucket" in report and "ts-neuralode backtest --model" in report
    assert (out / "error_vs_horizon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bt")
    run = client.search_runs([exp.experiment_id])[0]
    overall = metrics[(metrics["scope"] == "overall") & (metrics["model"] == NAME)].iloc[0]
    assert np.isclose(run.data.metrics[f"backtest/{NAME}/mae"], overall["mae"])
    steps = client.get_metric_history(run.info.run_id, f"backtest/{NAME}/mae_by_horizon")
    assert sorted(s.step for s in steps) == [0, 1]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "backtest")}
    assert {"backtest/cv.csv", "backtest/metrics.csv", "backtest/report.md", "backtest/error_vs_horizon.png"} <= arts


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--n_windows", "0"], "n_windows=0 must be >= 1"),
        (["--n_windows", "2", "--cutoffs", "2024-01-09T00:00+01:00"], "either n_windows"),
        (["--refit", "1"], "refit needs fit_args"),
    ],
)
def test_backtest_user_errors_are_one_line(dt_fitted, dt_csv, tmp_path, capfd, args, needle):
    rc = main(
        [
            "backtest",
            "--model",
            str(dt_fitted["model_dir"]),
            "--data.path",
            str(dt_csv),
            "--horizon",
            "12h",
            "--out_dir",
            str(tmp_path),
            "--tracking",
            "false",
            *args,
        ]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.slow
def test_refit_trains_a_model_per_window_through_fit(fc, dt_csv, tmp_path):
    """refit=True: each window's model is trained by 'ts-neuralode fit' on that window's history only; with the
    same seed and options the last window's model equals a fit on the file cut at that cutoff."""
    args = [a for a in TINY_FIT_ARGS]
    args[args.index("--trainer.max_epochs") + 1] = "1"
    fit_args = ["--data.time_unit", "h", *args]
    cv = fc.cross_validation(
        str(dt_csv), "12h", n_windows=2, step="12h", num_samples=8, refit=True, fit_args=fit_args, workdir=tmp_path
    )
    assert cv.groupby("unique_id")["cutoff"].nunique().max() == 2
    assert np.isfinite(cv[NAME]).all()
    raw = pd.read_csv(dt_csv)
    last_cut = cv.groupby("unique_id")["cutoff"].max()
    keep = pd.to_datetime(raw["ds"]) <= raw["unique_id"].map(last_cut)
    ref = backtest.refit_forecaster(fit_args, raw[keep], tmp_path / "ref")
    rows = cv[cv["cutoff"] == cv["unique_id"].map(last_cut)]
    direct = ref.predict(raw[keep], times=rows[["unique_id", "ds"]], num_samples=8)
    assert np.allclose(
        direct[NAME].to_numpy(), rows.sort_values(["unique_id", "ds"])[NAME].to_numpy(), rtol=1e-4, atol=1e-5
    )


# -- conformal calibration --------------------------------------------------------------------------------------
def test_conformal_factor_and_band_stretch():
    from ts_neuralode.api import calibration

    scores = np.arange(1.0, 101.0)[::-1]
    assert calibration.conformal_factor(scores, 90) == 91.0  # the ceil((n + 1) 0.9) = 91st smallest
    assert calibration.conformal_factor(scores[:5], 90) == np.inf  # too few points for a 90% guarantee
    y, lo, hi = np.array([3.5, -1.0, 1.0]), np.array([-1.0, -1.0, 0.0]), np.array([2.0, 2.0, 2.0])
    assert np.allclose(calibration.band_scores(y, lo, hi, 0.0), [2.0, 1.0, 0.0])  # |y - mid| / half-width
    cal = {"edges": [0.0, 1.0, 2.0], "factors": {"90": [2.0, 0.5]}, "floors": {"90": 0.0}}
    frame = pd.DataFrame({"m": [1.0, 1.0], "m-lo-90": [0.0, 0.0], "m-hi-90": [3.0, 3.0], "m-q-50": [1.0, 1.0]})
    out = calibration.apply(frame, cal, "m", np.array([0.5, 7.0]))  # lead 7 is past the horizon: last bucket
    assert np.allclose(out["m-lo-90"], [-1.5, 0.75]) and np.allclose(out["m-hi-90"], [4.5, 2.25])
    assert list(out.columns) == ["m", "m-lo-90", "m-hi-90"]  # calibrated: no (uncalibrated) quantile columns


def test_calibration_of_skewed_and_zero_width_bands():
    """A sample mean outside its band (skewed samples) and zero-width bands (num_samples=1) calibrate to finite
    factors and bands that cover their level on the calibration points."""
    from ts_neuralode.api import calibration

    rng = np.random.default_rng(0)
    n = 400
    y = rng.normal(0.0, 1.0, n)
    lead = rng.uniform(0, 4, n)
    skew = pd.DataFrame({"y": y, "ds": lead, "cutoff": 0.0, "m": 5.0, "m-lo-90": 0.5, "m-hi-90": 1.5})
    cal = calibration.fit(skew, "m", 4.0, buckets=2)
    assert all(np.isfinite(cal["factors"]["90"])) and max(cal["factors"]["90"]) < 100  # the mean lies above the band
    out = calibration.apply(skew, cal, "m", lead)
    inside = (y >= out["m-lo-90"]) & (y <= out["m-hi-90"])
    assert inside.mean() >= 0.9 and np.allclose(out["m-lo-90"] + out["m-hi-90"], 2.0)  # about the band's midpoint
    flat = skew.assign(**{"m-lo-90": 0.0, "m-hi-90": 0.0})
    cal = calibration.fit(flat, "m", 4.0, buckets=2)
    out = calibration.apply(flat, cal, "m", lead)
    assert cal["floors"]["90"] > 0 and ((y >= out["m-lo-90"]) & (y <= out["m-hi-90"])).mean() >= 0.9


@pytest.mark.slow
def test_calibrate_stores_factors_that_predict_applies(dt_fitted, dt_csv, tmp_path, capfd):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(dt_fitted["model_dir"], model)
    rc = main(
        [
            "forecast",
            "--model",
            str(model),
            "--data.path",
            str(dt_csv),
            "--horizon",
            "6h",
            "--num_points",
            "2",
            "--out",
            str(tmp_path / "f.csv"),
            "--plots",
            "false",
            "--calibrated",
            "--progress",
            "false",
        ]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no band calibration" in err[0]
    common = [
        "backtest",
        "--model",
        str(model),
        "--data.path",
        str(dt_csv),
        "--horizon",
        "12h",
        "--n_windows",
        "4",
        "--step",
        "3h",
        "--buckets",
        "1",
        "--num_samples",
        "16",
        "--tracking",
        "false",
        "--progress",
        "false",
    ]
    # windows the model trained on: refused with one line naming what to pass (the series the fit held out)
    held_out = [str(s) for s in Forecaster.load(model).split_ids("val") + Forecaster.load(model).split_ids("test")]
    assert main([*common, "--out_dir", str(tmp_path / "trained"), "--calibrate"]) == 2
    err = [ln for ln in capfd.readouterr().err.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and "lie in the data the model trained on" in err[0] and "--refit 1" in err[0], err
    assert f"--series {' '.join(sorted(held_out))}" in err[0] or all(s in err[0] for s in held_out), err
    assert not (model / "calibration.json").exists()
    common += ["--series", *held_out]
    assert main([*common, "--out_dir", str(tmp_path / "raw"), "--calibrate"]) == 0
    assert (model / "calibration.json").is_file()
    fc = Forecaster.load(model)
    factors = fc.calibration["factors"]
    assert set(factors) == {"50", "90"} and min(factors["50"] + factors["90"]) > 0
    raw = fc.predict(str(dt_csv), horizon="6h", num_points=2, num_samples=16, calibrated=False)
    cal = fc.predict(str(dt_csv), horizon="6h", num_points=2, num_samples=16, calibrated=True)
    default = fc.predict(str(dt_csv), horizon="6h", num_points=2, num_samples=16)  # a calibrated model: calibrated
    assert np.allclose(default[f"{NAME}-hi-90"], cal[f"{NAME}-hi-90"])
    c, f = factors["90"][0], fc.calibration["floors"]["90"]
    mid, half = (raw[f"{NAME}-hi-90"] + raw[f"{NAME}-lo-90"]) / 2, (raw[f"{NAME}-hi-90"] - raw[f"{NAME}-lo-90"]) / 2
    assert np.allclose(cal[f"{NAME}-hi-90"], mid + c * (half + f))
    assert np.allclose(cal[f"{NAME}-lo-90"], mid - c * (half + f))
    # on the windows it was fitted on, the calibrated bands cover at least their level (split-conformal quantile)
    assert main([*common, "--out_dir", str(tmp_path / "cal"), "--calibrated"]) == 0
    overall = pd.read_csv(tmp_path / "cal" / "metrics.csv").query("scope == 'overall' and model == @NAME").iloc[0]
    assert overall["coverage-50"] >= 0.5 and overall["coverage-90"] >= 0.9


# -- a time-based split for fit: --data.train_end -------------------------------------------------------------
def test_train_end_trains_before_one_time_and_validates_after_it():
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
    from ts_neuralode.errors import ConfigError

    demo = pd.read_csv("data/demo.csv")
    end = "2024-01-18T00:00:00+01:00"
    dm = IrregularTimeSeriesDataModule(
        df=demo,
        time_unit="h",
        task="forecast",
        horizon="2D",
        context="4D",
        train_end=end,
        layout="padded",
        batch_size=4,
    )
    dm.setup()
    cut = float(dm.table.codec.to_float([end])[0])
    assert np.all(dm._specs["train"].end == cut) and np.all(dm._specs["val"].cutoff == cut)
    assert dm.split_ids("test") == [] and len(dm.split_ids("val")) == 12
    before = demo[pd.to_datetime(demo["ds"]) <= pd.Timestamp(end)]["y"].dropna()
    assert np.isclose(dm.transform.center[0], before.mean())  # the scaler saw only the part before train_end
    for batch in dm.val_dataloader():  # validation targets: the horizon after train_end (model time > cutoff)
        tm = batch.times if batch.times.dim() == 2 else batch.times.expand(batch.target_mask.shape[:2])
        scored = batch.target_mask.any(-1)
        assert (tm[scored] > batch.cutoff.view(-1, 1).expand_as(tm)[scored] - 1e-6).all()
    with pytest.raises(ConfigError, match="train_end applies to task='forecast'"):
        IrregularTimeSeriesDataModule(df=demo, time_unit="h", train_end=end)


# -- covariates in backtests (tiny untrained models: the data path, not the accuracy, is under test) -------------
def _pk(n_series: int = 6, seed: int = 5) -> pd.DataFrame:
    from ts_neuralode.data.generators import generate

    df = generate("pk", n_series=n_series, n_points=12, seed=seed)
    ids = sorted(df.unique_id.unique())
    df["site"] = df.unique_id.map({s: ("north" if i % 2 else "south") for i, s in enumerate(ids)})
    rng = np.random.default_rng(0)
    df["temp"] = np.where(rng.random(len(df)) < 0.5, rng.normal(size=len(df)), np.nan)  # its own sparse grid
    return df


def _untrained(df: pd.DataFrame, path, **covariates) -> Forecaster:
    """A saved and reloaded untrained ode_rnn reading ``covariates`` (future_cols, static_cols, past_cols)."""
    import torch

    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
    from ts_neuralode.training import ForecastingModule

    dm = IrregularTimeSeriesDataModule(
        df=df, task="extrapolation", layout="padded", batch_size=8, val_fraction=0, test_fraction=0, **covariates
    )
    dm.setup()
    torch.manual_seed(0)
    module = ForecastingModule(
        model="ode_rnn",
        input_dim=len(dm.channel_names),
        latent_dim=4,
        hidden_dim=8,
        covariates=dm.covariates,
        evolution={"kind": "ode", "method": "euler", "step_size": 0.5},
    )
    Forecaster.from_module(module, dm).save(path)
    return Forecaster.load(path)


def _end_rows(df: pd.DataFrame, at: float = 12.0) -> pd.DataFrame:
    return pd.DataFrame({"unique_id": sorted(df.unique_id.unique()), "ds": at, "rate": 0.0})


@pytest.mark.slow
def test_backtest_reads_known_future_and_static_covariates(tmp_path):
    """A future_cols + static_cols model backtests: the covariates come from the whole history (known-future values
    after the cutoff too) plus ``future``; a window equals predict on the history cut at the cutoff with the
    rest of the schedule passed as ``future``."""
    from ts_neuralode.errors import ConfigError, ForecastError

    df = _pk()[["unique_id", "ds", "y", "rate", "site"]]
    fc = _untrained(df, tmp_path / "m", future_cols=["rate"], static_cols=["site"])
    with pytest.raises(ForecastError, match="known-future covariate 'rate' is missing"):
        fc.cross_validation(df, 2.0, n_windows=2, num_samples=2)  # the schedule ends before some observations
    cv = fc.cross_validation(df, 2.0, n_windows=2, num_samples=2, future=_end_rows(df))
    name = fc.name
    assert cv.groupby("unique_id")["cutoff"].nunique().max() == 2 and np.isfinite(cv[name]).all()
    last_cut = cv.groupby("unique_id")["cutoff"].max()
    rows = cv[cv["cutoff"] == cv["unique_id"].map(last_cut)].sort_values(["unique_id", "ds"])
    before = df["ds"] <= df["unique_id"].map(last_cut)
    plan = pd.concat([df[~before & df.rate.notna()][["unique_id", "ds", "rate"]], _end_rows(df)])
    direct = fc.predict(df[before], times=rows[["unique_id", "ds"]], num_samples=2, future=plan)
    assert np.allclose(direct[name].to_numpy(), rows[name].to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="reads none"):
        _untrained(df[["unique_id", "ds", "y"]], tmp_path / "plain").cross_validation(
            df, 2.0, n_windows=1, future=_end_rows(df)
        )


@pytest.mark.slow
def test_refit_keeps_the_covariate_only_rows(tmp_path):
    """A refit trains on every row up to the cutoff — the pk dose rows hold a rate and no y — and forecasts with
    the schedule after it."""
    df = _pk()[["unique_id", "ds", "y", "rate"]]
    fc = _untrained(df, tmp_path / "m", future_cols=["rate"])
    table = fc.read_history(df)
    cut = table.last_times() - 2.0
    n_hist, _ = windows._window_rows(table, cut, 2.0)
    ok = np.arange(table.n_series)
    kept = windows._row_cutter(df, table)(ok, n_hist, cut)
    expect = df[df["ds"] <= df["unique_id"].map(dict(zip(table.ids, cut, strict=True)))]
    pd.testing.assert_frame_equal(kept, expect)
    assert kept["y"].isna().sum() > 0  # the dose rows survive
    fit_args = [
        "--data.future_cols",
        "[rate]",
        "--model.model",
        "ode_rnn",
        "--model.latent_dim",
        "4",
        "--model.hidden_dim",
        "8",
        "--model.evolution.method",
        "euler",
        "--model.evolution.step_size",
        "0.5",
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    cv = fc.cross_validation(
        df, 2.0, n_windows=1, num_samples=2, refit=True, fit_args=fit_args, workdir=tmp_path, future=_end_rows(df)
    )
    assert len(cv) > 0 and np.isfinite(cv[fc.name]).all()


@pytest.mark.slow
def test_backtest_of_a_past_covariate_model_scores_the_targets_only(tmp_path):
    """past_cols: the past-only channel is an input; the rows, y and the baselines are the target's only."""
    df = _pk()[["unique_id", "ds", "y", "temp"]]
    fc = _untrained(df, tmp_path / "m", past_cols=["temp"])
    cv = fc.cross_validation(df, 2.0, n_windows=2, num_samples=2)
    assert "channel" not in cv.columns and np.isfinite(cv[fc.name]).all()
    obs = df.dropna(subset=["y"]).set_index(["unique_id", "ds"])["y"]
    assert np.allclose(cv["y"].to_numpy(), obs.loc[list(zip(cv["unique_id"], cv["ds"], strict=True))].to_numpy())
    for (uid, cut), g in cv.groupby(["unique_id", "cutoff"]):
        h = obs.loc[uid]
        assert len(g) == int(((h.index > cut) & (h.index <= cut + 2.0)).sum())
        assert np.allclose(g["locf"], h[h.index <= cut].iloc[-1]) and np.allclose(g["mean"], h[h.index <= cut].mean())


@pytest.mark.slow
def test_backtest_command_future_and_no_orphan_run(tmp_path, capfd):
    """``backtest --future FILE``; a failing backtest opens no MLflow run, a working one logs to one finished run."""
    from mlflow import MlflowClient

    df = _pk()[["unique_id", "ds", "y", "rate"]]
    _untrained(df, tmp_path / "m", future_cols=["rate"])
    df.to_csv(tmp_path / "pk.csv", index=False)
    _end_rows(df).to_csv(tmp_path / "future.csv", index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [
        "backtest",
        "--model",
        str(tmp_path / "m"),
        "--data.path",
        str(tmp_path / "pk.csv"),
        "--horizon",
        "2",
        "--n_windows",
        "2",
        "--num_samples",
        "2",
        "--out_dir",
        str(tmp_path / "bt"),
        "--tracking_uri",
        uri,
        "--experiment_name",
        "bt",
        "--progress",
        "false",
    ]
    assert main(base) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "known-future covariate 'rate' is missing" in err[0]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bt")
    assert exp is None or client.search_runs([exp.experiment_id]) == []
    assert main([*base, "--future", str(tmp_path / "future.csv")]) == 0
    runs = client.search_runs([client.get_experiment_by_name("bt").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(pd.read_csv(tmp_path / "bt" / "cv.csv")) > 0


def test_train_end_errors_name_the_option():
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
    from ts_neuralode.errors import ConfigError

    demo = pd.read_csv("data/demo.csv")
    for end, needle in [
        ("2024-01-18", "train_end=2024-01-18 is not a time of the data"),
        (5, "train_end=5 is not a time of the data"),
        ("2030-01-01T00:00:00+01:00", "no series has an observation"),
    ]:
        dm = IrregularTimeSeriesDataModule(df=demo, time_unit="h", task="forecast", horizon="2D", train_end=end)
        with pytest.raises(ConfigError, match=needle) as err:
            dm.setup()
        assert "\n" not in str(err.value) and "train_end" in str(err.value)

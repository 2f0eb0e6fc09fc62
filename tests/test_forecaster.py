"""The Python forecasting API: ``Forecaster.load(path).predict(...)`` — the same forecasts as the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main
from ts_neuralode.errors import ForecastError, TSNeuralODEError

NAME = "latent_ode_coupling_flow"


@pytest.fixture(scope="module")
def fc(dt_fitted) -> Forecaster:
    assert dt_fitted["rc"] == 0
    return Forecaster.load(dt_fitted["model_dir"])


@pytest.fixture(scope="module")
def hist(dt_csv) -> pd.DataFrame:
    return pd.read_csv(dt_csv)


def last_obs(hist: pd.DataFrame) -> pd.Series:
    h = hist.dropna(subset=["y"])
    return pd.to_datetime(h["ds"]).groupby(h["unique_id"]).max()


@pytest.mark.slow
def test_predict_matches_the_cli(fc, dt_fitted, dt_csv, hist, tmp_path):
    out = fc.predict(hist, horizon="12h", num_points=4, num_samples=30, seed=0)
    rc = main(
        [
            "forecast",
            "--model",
            str(dt_fitted["model_dir"]),
            "--data.path",
            str(dt_csv),
            "--horizon",
            "12h",
            "--num_points",
            "4",
            "--num_samples",
            "30",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "cli.csv"),
            "--plots",
            "false",
            "--progress",
            "false",
        ]
    )
    assert rc == 0
    cli = pd.read_csv(tmp_path / "cli.csv")
    assert list(cli.columns) == list(out.columns)
    assert (pd.to_datetime(cli["ds"]) == out["ds"]).all()
    value_cols = [c for c in out.columns if c.startswith(NAME)]
    np.testing.assert_allclose(cli[value_cols].to_numpy(), out[value_cols].to_numpy(), rtol=1e-6, atol=1e-8)
    # the same seed gives the same samples; another seed other ones
    again = fc.predict(hist, horizon="12h", num_points=4, num_samples=30, seed=0)
    other = fc.predict(hist, horizon="12h", num_points=4, num_samples=30, seed=1)
    np.testing.assert_array_equal(again[f"{NAME}-lo-90"], out[f"{NAME}-lo-90"])
    assert not np.allclose(other[f"{NAME}-lo-90"], out[f"{NAME}-lo-90"])


def test_predict_levels_and_quantiles(fc, hist):
    out = fc.predict(hist, horizon=pd.Timedelta("1D"), freq="6h", num_samples=50, level=[80], quantiles=[0.1, 0.5, 0.9])
    assert list(out.columns) == [
        "unique_id",
        "ds",
        NAME,
        f"{NAME}-lo-80",
        f"{NAME}-hi-80",
        f"{NAME}-q-10",
        f"{NAME}-q-50",
        f"{NAME}-q-90",
    ]
    assert out["ds"].dt.tz is not None and out["ds"].iloc[0].utcoffset() == pd.Timedelta("1h")
    assert (out.groupby("unique_id").size() == 4).all()  # +6 h, +12 h, +18 h, +24 h
    q10, q50, q90 = (out[f"{NAME}-q-{p}"] for p in (10, 50, 90))
    assert (q10 <= q50).all() and (q50 <= q90).all() and (q90 > q10).any()
    # the 80% interval is the 10%..90% quantile pair
    np.testing.assert_allclose(out[f"{NAME}-lo-80"], q10, rtol=1e-6)
    np.testing.assert_allclose(out[f"{NAME}-hi-80"], q90, rtol=1e-6)


def test_predict_explicit_and_per_series_times(fc, hist):
    far = [pd.Timestamp("2024-06-01 00:00", tz="UTC"), pd.Timestamp("2024-02-01 12:00+01:00")]
    out = fc.predict(hist, times=far, num_samples=10)
    assert len(out) == 6 * 2
    # returned in the data's own offset (+01:00), sorted, whatever the zone they were given in
    want = sorted(t.tz_convert("UTC") for t in far)
    for _, g in out.groupby("unique_id"):
        assert [t.tz_convert("UTC") for t in g["ds"]] == want
        assert all(t.utcoffset() == pd.Timedelta("1h") for t in g["ds"])

    last = last_obs(hist)
    per = pd.DataFrame(
        {
            "unique_id": ["s0", "s0", "s3"],
            "ds": [
                last["s0"] + pd.Timedelta("1h"),
                last["s0"] + pd.Timedelta("7D"),
                last["s3"] + pd.Timedelta("90min"),
            ],
        }
    )
    out = fc.predict(hist, times=per, series=["s0", "s3"], num_samples=10)
    assert list(out["unique_id"]) == ["s0", "s0", "s3"]
    assert list(out["ds"]) == list(per["ds"])


def test_predict_errors_say_why(fc, hist):
    cases = [
        (dict(horizon=-1.0), "must be positive"),
        (dict(horizon="-2h"), "must be positive"),
        (dict(times=["2023-12-24T00:00:00+01:00"]), "before its first observation"),
        (dict(horizon="1D", times=["2024-02-01T00:00:00+01:00"]), "not both"),
        (dict(horizon="1D", freq="2D"), "longer than horizon"),
        (dict(horizon="1D", series=["s9"]), "not found in the history"),
        (dict(horizon="1D", quantiles=[1.5]), "strictly between 0 and 1"),
        (dict(horizon="1D", level=[100]), "strictly between 0 and 100"),
        (dict(horizon="a week"), "is not a duration"),
        (dict(), "no query times"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ForecastError, match=fragment):
            fc.predict(hist, num_samples=2, **kwargs)
    with pytest.raises(TSNeuralODEError, match="naive"):
        fc.predict(hist, times=["2024-02-01T00:00:00"], num_samples=2)
    with pytest.raises(ForecastError, match="no such model directory"):
        Forecaster.load("/nonexistent/model")


def test_gaussian_models_get_exact_gaussian_bands(dt_csv):
    """ODE-RNN has a predictive std: bands are mean ± z·std (symmetric, median = mean), not noisy sample ones."""
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
    from ts_neuralode.training import ForecastingModule

    torch.manual_seed(0)
    dm = IrregularTimeSeriesDataModule(path=str(dt_csv), time_unit="h", layout="padded")
    module = ForecastingModule(
        model="ode_rnn",
        input_dim=dm.num_channels,
        latent_dim=4,
        hidden_dim=8,
        evolution={"method": "rk4", "step_size": 0.1},
    )
    f = Forecaster.from_module(module, dm)
    out = f.predict(dt_csv, horizon="6h", num_points=3, num_samples=5, level=[90], quantiles=[0.5, 0.975])
    mean, lo, hi = out["ode_rnn"], out["ode_rnn-lo-90"], out["ode_rnn-hi-90"]
    assert (hi - lo > 0).all()
    np.testing.assert_allclose(hi - mean, mean - lo, rtol=1e-5)
    np.testing.assert_allclose(out["ode_rnn-q-50"], mean, rtol=1e-6)
    z90, z975 = 1.6448536, 1.9599640  # standard normal quantiles 0.95 and 0.975
    np.testing.assert_allclose((out["ode_rnn-q-97.5"] - mean) / (hi - mean), z975 / z90, rtol=1e-4)
    assert math.isclose(float(np.median(hi - mean) > 0), 1.0)


@pytest.mark.slow
def test_plot_history_window(fc, hist, tmp_path, monkeypatch):
    from ts_neuralode.api import plotting

    out = fc.predict(hist, horizon="12h", num_points=3, num_samples=5)
    seen = {}
    real = plotting.plot_forecasts

    def spy(history, forecast, model, out_dir, **kw):
        seen["history"] = history
        return real(history, forecast, model, out_dir, **kw)

    monkeypatch.setattr(plotting, "plot_forecasts", spy)
    pngs = fc.plot(hist, out, tmp_path / "p", history_window="1D", max_series=2)
    assert [p.name for p in pngs] == ["forecast_s0.png", "forecast_s1.png"]
    h = seen["history"]
    last = last_obs(hist)
    start = h.groupby("unique_id")["ds"].min()
    assert ((last[start.index] - start) <= pd.Timedelta("1D")).all()
    assert len(h) < len(hist.dropna(subset=["y"]))
    with pytest.raises(ForecastError, match="history_window"):
        fc.plot(hist, out, tmp_path / "q", history_window="-1D")

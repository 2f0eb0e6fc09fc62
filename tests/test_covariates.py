"""Known-future covariates: reading, interpolation, the control in ODEs and flows, the CLI, the forecaster."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.data.covariates import CovariateBatch, CovariateSpec
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.errors import ConfigError, DataError, ForecastError
from ts_neuralode.models.control import controlled_flow
from ts_neuralode.models.evolution import EvolutionConfig, ODEEvolution
from ts_neuralode.models.flows import make_flow

pytestmark = pytest.mark.usefixtures("one_thread")


def _frame() -> pd.DataFrame:
    """Two series; 'rate' on rows of its own (no target) and on one target row; 'temp' on the target rows."""
    rows = [
        ("a", 0.0, 1.0, 0.0, 1.0),
        ("a", 1.0, 2.0, np.nan, 2.0),
        ("a", 2.0, np.nan, 4.0, np.nan),
        ("a", 3.0, 3.0, np.nan, 3.0),
        ("a", 4.0, 4.0, np.nan, 5.0),
        ("b", 0.0, 5.0, 1.0, 0.0),
        ("b", 2.5, 6.0, np.nan, 1.0),
        ("b", 5.0, 7.0, np.nan, 2.0),
    ]
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y", "rate", "temp"])


def test_covariate_batch_interpolates_per_column():
    cov = CovariateBatch(
        knots=torch.tensor([[0.0, 1.0, 3.0]]),
        values=torch.tensor([[[0.0, 0.0], [2.0, 2.0], [6.0, 6.0]]]),
        linear=torch.tensor([False, True]),
        phase=torch.zeros(1, 0),
        freq=torch.zeros(0),
    )
    t = torch.tensor([[-1.0, 0.5, 1.0, 2.0, 3.0, 9.0]])
    u = cov(t)[0]
    assert u[:, 0].tolist() == [0.0, 0.0, 2.0, 2.0, 6.0, 6.0]  # constant: right-continuous steps, held outside
    assert u[:, 1].tolist() == [0.0, 1.0, 2.0, 4.0, 6.0, 6.0]  # linear between the knots, held outside
    assert cov(torch.tensor([2.0]))[0].tolist() == [2.0, 4.0]
    assert cov.repeat(3)(torch.tensor([2.0, 2.0, 2.0])).shape == (3, 2)


def test_datamodule_reads_each_column_on_its_own_grid():
    dm = IrregularTimeSeriesDataModule(
        df=_frame(),
        task="interpolation",
        future_cols=["rate", "temp"],
        future_interp={"temp": "linear"},
        val_fraction=0,
        test_fraction=0,
    )
    assert dm.channel_names == ["y"]  # covariates are never value columns, even without a y default
    spec = CovariateSpec.from_state_dict(dm.covariates)
    assert spec.interp == ["constant", "linear"] and spec.control_dim == 2
    batch = next(iter(dm.predict_dataloader()))
    u = batch.covariates(torch.tensor([1.5, 1.25]))  # model times (time_scale 1, each series starts at 0)
    raw = u * torch.tensor(spec.scale) + torch.tensor(spec.center)
    # a: rate 0 until its next sample at 2 (constant); temp linear between 1 (2.0) and 3 (3.0) -> 2.25
    assert raw[0].tolist() == pytest.approx([0.0, 2.25], abs=1e-5)
    # b: rate 1 from 0 on; temp linear between 0 (0.0) and 2.5 (1.0) -> 0.5
    assert raw[1].tolist() == pytest.approx([1.0, 0.5], abs=1e-5)


@pytest.mark.parametrize("origin", ["zero", "series"])
def test_forecast_windows_keep_the_raw_schedule(origin):
    """Every point of a random training window: u at its model time is the schedule at its raw time (windows keep
    only the knots around their own span, and with time_origin=series their model time 0 is their first point)."""
    df = generate("pk", n_series=6, n_points=30, seed=1)
    dm = IrregularTimeSeriesDataModule(
        df=df,
        task="forecast",
        horizon=2.0,
        context=3.0,
        future_cols=["rate"],
        batch_size=6,
        layout="padded",
        time_origin=origin,
    )
    spec = CovariateSpec.from_state_dict(dm.covariates)
    batch = next(iter(dm.train_dataloader()))
    u = batch.covariates(batch.times)[..., 0] * spec.scale[0] + spec.center[0]  # [B, T]
    for b in range(batch.batch_size):
        sid = dm.series_ids[int(batch.series_idx[b])]
        sched = df[(df.unique_id == sid) & df.rate.notna()]
        obs = df[(df.unique_id == sid) & df.y.notna()].ds.to_numpy()
        tm = batch.times[b][batch.time_mask[b]].double().numpy() * dm.transform.time_scale
        # the window's raw start: the observation from which the model times land on observations
        start = (
            0.0
            if origin == "zero"
            else next(
                r
                for r in obs
                if np.abs(obs[np.searchsorted(obs, r + tm - 1e-6).clip(max=len(obs) - 1)] - (r + tm)).max() < 1e-4
            )
        )
        raw = start + tm
        want = sched.rate.to_numpy()[np.searchsorted(sched.ds.to_numpy(), raw + 1e-7, side="right") - 1]
        assert u[b][batch.time_mask[b]].numpy() == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("case", ["missing column", "no value", "both", "calendar numeric", "interp"])
def test_covariate_errors_are_one_line(case):
    df = _frame()
    kw = {"future_cols": ["rate"]}
    if case == "missing column":
        kw = {"future_cols": ["dose"]}
    elif case == "no value":
        df.loc[df.unique_id == "b", "rate"] = np.nan
    elif case == "both":
        kw["value_cols"] = ["y", "rate"]
    elif case == "calendar numeric":
        kw = {"calendar": ["time_of_day"]}
    elif case == "interp":
        kw["future_interp"] = "cubic"
    with pytest.raises((DataError, ConfigError)) as err:
        IrregularTimeSeriesDataModule(df=df, val_fraction=0, test_fraction=0, **kw).setup()
    msg = str(err.value)
    assert "\n" not in msg
    expect = {
        "missing column": "missing known-future covariate column 'dose'",
        "no value": "no value for series 'b'",
        "both": "both a value column and a covariate",
        "calendar numeric": "needs a datetime time column",
        "interp": "future_interp",
    }[case]
    assert expect in msg


class _PK(torch.nn.Module):
    """dc/dt = u − k c: the controlled field of the pk generator."""

    def forward(self, t, y, u):
        return u - 0.5 * y


def test_ode_control_solves_the_driven_system(margin):
    """A piecewise constant input through the solver: the exact one-compartment solution."""
    change = torch.tensor([[0.0, 1.0, 1.5, 4.0]])
    level = torch.tensor([[[0.0], [2.0], [0.5], [0.0]]])
    cov = CovariateBatch(change, level, torch.tensor([False]), torch.zeros(1, 0), torch.zeros(0))
    evo = ODEEvolution(1, EvolutionConfig(method="dopri5", rtol=1e-7, atol=1e-9), field=_PK(), control_dim=1)
    t = torch.linspace(0, 6, 13, dtype=torch.float64)
    out = evo(torch.zeros(1, 1, dtype=torch.float64), t, control=cov)[0, :, 0]
    c, exact = 0.0, []
    knots, lv = change[0].double().tolist() + [math.inf], level[0, :, 0].double().tolist()
    for ti in t.tolist():
        c, t0 = 0.0, 0.0
        for j in range(len(lv)):
            t1 = min(knots[j + 1], ti)
            if t1 <= t0 and j > 0:
                break
            r = lv[j] / 0.5
            c = r + (c - r) * math.exp(-0.5 * (t1 - max(knots[j], t0)))
            t0 = t1
            if t1 >= ti:
                break
        exact.append(c)
    err = float((out - torch.tensor(exact, dtype=torch.float64)).abs().max())
    margin("controlled ODE vs exact pk solution", err, 1e-5)


@pytest.mark.parametrize("kind", ["resnet_flow", "gru_flow", "coupling_flow"])
def test_controlled_flow_restarts_at_knots(kind):
    torch.manual_seed(0)
    H, C = 3, 1
    flow = make_flow(kind, H + C, hidden_dim=16, flow_layers=2)
    knots = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    vals = torch.tensor([[[1.0], [-1.0]], [[1.0], [3.0]]])  # rows differ only after the knot at 2
    cov = CovariateBatch(knots, vals, torch.tensor([False]), torch.zeros(2, 0), torch.zeros(0))
    h0 = torch.randn(1, H).expand(2, H)
    t = torch.tensor([0.0, 0.5, 1.9, 2.0, 3.0]).expand(2, -1)
    with torch.no_grad():
        out = controlled_flow(flow, h0, t, cov, H)
        assert torch.equal(out[:, 0], h0)  # F(0, x) = x
        assert torch.allclose(out[0, :4], out[1, :4])  # causal: u after the knot does not reach back
        assert not torch.allclose(out[0, 4], out[1, 4])
        # before the knot: one flow on [h, u] with u held; after it: restarted from the state at the knot
        x = torch.cat([h0[:1], torch.ones(1, 1)], -1)
        assert torch.allclose(out[0, 2], flow(torch.tensor([[1.9]]), x)[0, :H], atol=1e-6)
        at_knot = flow(torch.tensor([[2.0]]), x)[:, :H]
        after = flow(torch.tensor([[1.0]]), torch.cat([at_knot, -torch.ones(1, 1)], -1))[0, :H]
        assert torch.allclose(out[0, 4], after, atol=1e-6)
        # backwards in time (an encoder): the same knots, crossed the other way
        back = controlled_flow(flow, out[:, 4], t.flip(-1), cov, H)
        assert back.shape == (2, 5, H)


def test_calendar_features_are_local_wall_clock():
    ds = pd.date_range("2024-01-01 00:00", periods=30, freq="7h", tz="Europe/Paris")
    df = pd.DataFrame({"unique_id": "a", "ds": ds.strftime("%Y-%m-%dT%H:%M:%S%z"), "y": np.arange(30.0)})
    dm = IrregularTimeSeriesDataModule(
        df=df, calendar=["time_of_day", "day_of_week"], val_fraction=0, test_fraction=0, time_unit="h"
    )
    batch = next(iter(dm.predict_dataloader()))
    tm = batch.times[:8].unsqueeze(0)  # union grid: model times of the first points
    u = batch.covariates(tm)[0]
    hours = np.asarray((ds[:8].hour + ds[:8].minute / 60.0), dtype=float)
    assert u[:, 0].numpy() == pytest.approx(np.sin(2 * np.pi * hours / 24), abs=1e-3)
    assert u[:, 1].numpy() == pytest.approx(np.cos(2 * np.pi * hours / 24), abs=1e-3)
    dow = np.asarray(ds[:8].dayofweek + hours / 24, dtype=float)  # Monday 00:00 = 0
    assert u[:, 2].numpy() == pytest.approx(np.sin(2 * np.pi * dow / 7), abs=1e-3)


@pytest.mark.slow
def test_fit_forecast_round_trip_needs_the_future(tmp_path, capsys):
    """``ts-neuralode fit --data.future_cols`` in-process; the model directory remembers the covariates;
    Forecaster.predict reads them from the history and ``future``, and says which one is missing."""
    from ts_neuralode.api.forecaster import Forecaster
    from ts_neuralode.cli import main

    df = generate("pk", n_series=12, n_points=20, seed=0)
    csv = tmp_path / "pk.csv"
    df.to_csv(csv, index=False)
    rc = main(
        [
            "fit",
            "--data.path",
            str(csv),
            "--data.future_cols",
            "[rate]",
            "--model.model",
            "ode_rnn",
            "--model.latent_dim",
            "4",
            "--model.hidden_dim",
            "8",
            "--model.evolution.method",
            "rk4",
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
            "--trainer.default_root_dir",
            str(tmp_path),
            "--tracking",
            "false",
        ]
    )
    assert rc == 0
    model_dir = tmp_path / "checkpoints" / "model"
    assert json.loads((model_dir / "config.json").read_text())["module"]["hparams"]["covariates"]["future_cols"] == [
        "rate"
    ]
    fc = Forecaster.load(model_dir)
    hist = df[df.ds <= 6.0]
    future = df[(df.ds > 6.0) & df.rate.notna()][["unique_id", "ds", "rate"]]
    end = pd.DataFrame({"unique_id": sorted(df.unique_id.unique()), "ds": 12.0, "rate": 0.0})
    out = fc.predict(hist, times=[7.0, 9.0, 11.0], future=pd.concat([future, end]), num_samples=2)
    assert len(out) == 12 * 3 and np.isfinite(out[fc.name]).all()
    # a different future changes the forecast: the model reads it
    loud = pd.concat([future.assign(rate=future.rate + 5.0), end])
    out2 = fc.predict(hist, times=[7.0, 9.0, 11.0], future=loud, num_samples=2)
    assert not np.allclose(out[fc.name], out2[fc.name])
    with pytest.raises(ForecastError) as err:
        fc.predict(hist[["unique_id", "ds", "y", "rate"]], times=[7.0, 11.0], future=future)
    msg = str(err.value)
    assert "known-future covariate 'rate' is missing for query time 11" in msg and "\n" not in msg
    with pytest.raises(DataError, match="missing known-future covariate column 'rate'"):
        fc.predict(hist[["unique_id", "ds", "y"]], times=[7.0])
    # the forecast subcommand: --future CSV, and one line with exit status 2 when it falls short
    hist.to_csv(tmp_path / "hist.csv", index=False)
    pd.concat([future, end]).to_csv(tmp_path / "future.csv", index=False)
    base = [
        "forecast",
        "--model",
        str(model_dir),
        "--data.path",
        str(tmp_path / "hist.csv"),
        "--times",
        "7",
        "11",
        "--plots",
        "false",
        "--num_samples",
        "2",
        "--out",
        str(tmp_path / "fc.csv"),
    ]
    assert main([*base, "--future", str(tmp_path / "future.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "fc.csv")) == 24
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ts-neuralode: error: known-future covariate 'rate' is missing") and "\n" not in err
    assert (
        main(
            [
                "fit",
                "--data.path",
                str(csv),
                "--data.future_cols",
                "[dose]",
                "--tracking",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "missing known-future covariate column 'dose'" in capsys.readouterr().err


@pytest.mark.slow
def test_forecaster_fit_round_trip(tmp_path, mlflow_server):
    """Forecaster.fit runs the CLI's fit (checkpoints, model directory, MLflow run on a real server) and returns a
    forecaster that predicts; the covariates travel through it too."""
    from mlflow import MlflowClient

    from ts_neuralode.api.forecaster import Forecaster

    df = generate("pk", n_series=12, n_points=20, seed=2)
    fc = Forecaster.fit(
        df,
        "ode_rnn",
        data_options={"future_cols": ["rate"], "batch_size": 8, "layout": "padded"},
        model_options={"latent_dim": 4, "hidden_dim": 8, "evolution": {"kind": "gru_flow"}},
        trainer={"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
        output_dir=tmp_path / "run",
        tracking_uri=mlflow_server,
        experiment_name="fit_api",
        run_name="pk",
        log_model=False,
    )
    assert isinstance(fc, Forecaster) and fc.covariate_spec.future_cols == ["rate"]
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert any(p.suffix == ".ckpt" for p in (tmp_path / "run" / "checkpoints").iterdir())
    run = MlflowClient(mlflow_server).get_run(fc.fit_info["run_id"])
    assert run.data.params["model"] == "ode_rnn" and "epoch/train_loss" in run.data.metrics
    out = fc.predict(
        df,
        horizon=1.0,
        num_points=3,
        num_samples=2,
        future=pd.DataFrame({"unique_id": sorted(df.unique_id.unique()), "ds": 12.0, "rate": 0.0}),
    )
    assert len(out) == 36 and np.isfinite(out[fc.name]).all()
    again = Forecaster.load(fc.fit_info["model_dir"])
    pd.testing.assert_frame_equal(
        again.predict(
            df,
            horizon=1.0,
            num_points=3,
            num_samples=2,
            future=pd.DataFrame({"unique_id": sorted(df.unique_id.unique()), "ds": 12.0, "rate": 0.0}),
        ),
        out,
    )
    with pytest.raises(ConfigError, match="config file not found"):
        Forecaster.fit(df, "configs/nope.yaml", output_dir=tmp_path / "bad", tracking=False)


@pytest.mark.slow
def test_readme_fit_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Forecaster.fit example, executed verbatim (in a scratch directory)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- readme-example: fit -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "unique_id" in printed and (tmp_path / "pk_run" / "model" / "config.json").is_file()


def _static_past_frame() -> pd.DataFrame:
    df = generate("pk", n_series=10, n_points=15, seed=3)
    ids = sorted(df.unique_id.unique())
    site = {s: ("north" if i % 3 else "south") for i, s in enumerate(ids)}
    age = {s: 30.0 + 5 * i for i, s in enumerate(ids)}
    df["site"], df["age"] = df.unique_id.map(site), df.unique_id.map(age)
    rng = np.random.default_rng(0)
    df["temp"] = np.where(rng.random(len(df)) < 0.5, rng.normal(size=len(df)), np.nan)  # its own sparse grid
    return df


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ode_rnn", "gru_ode", "latent_ode"])
def test_past_and_static_covariates(model, tmp_path):
    """Past-only covariates are input channels that are never scored; static ones condition the initial state; the
    forecaster reads both from the history and forecasts only the targets."""
    from ts_neuralode.api.forecaster import Forecaster
    from ts_neuralode.training import ForecastingModule

    df = _static_past_frame()
    dm = IrregularTimeSeriesDataModule(
        df=df,
        task="extrapolation",
        past_cols=["temp"],
        static_cols=["site", "age"],
        future_cols=["rate"],
        layout="padded",
        batch_size=10,
        val_fraction=0,
        test_fraction=0,
    )
    assert dm.channel_names == ["y", "temp"]
    spec = CovariateSpec.from_state_dict(dm.covariates)
    assert spec.static_kind == ["categorical", "numeric"] and spec.static_vocab[0] == ["north", "south"]
    assert spec.static_dim == 3
    batch = next(iter(dm.train_dataloader()))
    assert float(batch.target_mask[..., 1].sum()) == 0 and float(batch.obs_mask[..., 1].sum()) > 0
    static = batch.covariates.static
    assert static.shape == (10, 3) and torch.equal(static[:, :2].sum(1), torch.ones(10))
    module = ForecastingModule(
        model=model,
        input_dim=2,
        latent_dim=4,
        hidden_dim=8,
        covariates=dm.covariates,
        evolution={"kind": "ode", "method": "euler", "step_size": 0.5},
    )
    loss, _ = module.model.loss(batch)
    loss.backward()
    head = module.model.decoder.weight if model == "latent_ode" else module.model.head[-1].weight
    if model != "gru_ode":  # (GRU-ODE's jump also reads the predicted mean of every channel: a gradient path)
        assert float(head.grad[1].abs().sum()) == 0.0  # the past channel's prediction is never scored
    assert float(head.grad[0].abs().sum()) > 0.0
    fc = Forecaster.from_module(module, dm)
    fc.save(tmp_path / "m")
    fc = Forecaster.load(tmp_path / "m")
    end = pd.DataFrame({"unique_id": sorted(df.unique_id.unique()), "ds": 12.0, "rate": 0.0})
    out = fc.predict(df, horizon=1.0, num_points=2, num_samples=1, future=end)
    assert "channel" not in out.columns and len(out) == 20  # only y is forecast
    other = df.assign(site=df.site.map({"north": "south", "south": "north"}))
    moved = fc.predict(other, horizon=1.0, num_points=2, num_samples=1, future=end)
    assert not np.array_equal(out[fc.name], moved[fc.name])  # the static category reaches the forecast
    bad = df.copy()
    bad.loc[bad.index[3], "age"] = 99.0
    with pytest.raises(DataError, match="one value per series"):
        fc.predict(bad, horizon=1.0, num_points=2, future=end)


def test_lightning_predict_frames_hold_the_targets_only():
    """The data module maps Lightning's predictions back without the past-only covariate channel."""
    df = _static_past_frame()
    dm = IrregularTimeSeriesDataModule(df=df, past_cols=["temp"], val_fraction=0, test_fraction=0)
    batch = next(iter(dm.predict_dataloader()))
    frame = dm.to_frame(batch.series_idx, batch.times, batch.values, {"lo-90": batch.values})
    assert list(frame.columns) == ["unique_id", "ds", "y", "y-lo-90"]


def test_future_replaces_the_history_schedule_from_its_first_time():
    """Per series and column, ``future``'s samples replace the history's from the first future time on (not
    averaged with them); a future frame without the id column is an error when there are several series."""
    from ts_neuralode.data.covariates import CovariateArrays
    from ts_neuralode.data.io import read_series

    df = _frame()
    table = read_series(df, value_cols=["y"], min_points=1)
    spec = CovariateSpec.configure(["rate"], None, None)
    plan = pd.DataFrame({"unique_id": ["a", "a"], "ds": [1.5, 3.0], "rate": [10.0, 20.0]})
    arrays = CovariateArrays.read([df, plan], table, spec, id_col="unique_id", time_col="ds")
    a = arrays.subset([0])
    assert a.knots.tolist() == [0.0, 1.5, 3.0] and a.values[:, 0].tolist() == [0.0, 10.0, 20.0]  # 4.0 at t=2 gone
    b = arrays.align(["b"])
    assert b.knots.tolist() == [0.0] and b.values[:, 0].tolist() == [1.0]  # no plan for b: the history's stand
    with pytest.raises(DataError, match="no 'unique_id' column, but the history has 2 series") as err:
        CovariateArrays.read([df, plan.drop(columns="unique_id")], table, spec, id_col="unique_id", time_col="ds")
    assert "\n" not in str(err.value)

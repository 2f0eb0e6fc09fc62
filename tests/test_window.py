"""Per-window normalisation and naive-forecast bases (ts_neuralode.models.window): invariance of a normalised model,
exact bases with a zeroed correction, the module options, and a model directory that remembers them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.errors import ConfigError
from ts_neuralode.models import ODERNN
from ts_neuralode.models.baselines import Seasonal
from ts_neuralode.models.window import BASES, DAMPED_INIT, WindowModel
from ts_neuralode.training import ForecastingModule

pytestmark = pytest.mark.usefixtures("one_thread")

P = 1.0  # season (model time units)


def window_batch(y, t, cutoff: float) -> Batch:
    """One series per row of ``y`` [B, T] (1 channel) on shared times ``t`` [T]: context up to ``cutoff``,
    targets after it."""
    t = torch.as_tensor(t, dtype=torch.float64).float()
    v = torch.as_tensor(y, dtype=torch.float32).unsqueeze(-1)
    B, T = v.shape[:2]
    ctx = (t <= cutoff).float().view(1, T, 1).expand(B, T, 1).clone()
    return Batch(
        times=t,
        values=v,
        obs_mask=ctx,
        target_mask=1 - ctx,
        time_mask=torch.ones(B, T, dtype=torch.bool),
        series_idx=torch.arange(B),
        cutoff=torch.full((B,), cutoff),
    )


def shifted(batch: Batch, c: float, a: float = 1.0) -> Batch:
    return Batch(
        batch.times,
        a * batch.values + c,
        batch.obs_mask,
        batch.target_mask,
        batch.time_mask,
        batch.series_idx,
        batch.cutoff,
    )


def ode_rnn(seed: int = 0) -> ODERNN:
    torch.manual_seed(seed)
    return ODERNN(input_dim=1, evolution={"kind": "ode", "method": "rk4", "step_size": 0.1}, latent_dim=4, hidden_dim=8)


def irregular(seed: int = 0, n: int = 40, span: float = 4.0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, span, n))
    y = np.stack([np.sin(2 * np.pi * t / P) + 0.3 * t + rng.normal(0, 0.1, n) for _ in range(3)])
    return t, y


@pytest.mark.slow
@pytest.mark.parametrize("base", ["none", "last", "trend", "damped", "seasonal"])
def test_normalised_model_is_invariant_to_a_constant(base):
    """Adding c to a series (context and targets) adds exactly c to the forecast and leaves the loss unchanged."""
    t, y = irregular()
    batch = window_batch(y, t, cutoff=3.0)
    model = WindowModel(ode_rnn(), "window", base, season_period=P).eval()
    q = torch.linspace(0.5, 4.5, 9)
    with torch.no_grad():
        a = model.forecast(batch, q)
        b = model.forecast(shifted(batch, 1000.0), q)
        la, lb = model.loss(batch)[0], model.loss(shifted(batch, 1000.0))[0]
    torch.testing.assert_close(b.mean - a.mean, torch.full_like(a.mean, 1000.0), atol=2e-3, rtol=0)
    torch.testing.assert_close(a.std, b.std, atol=1e-4, rtol=1e-4)
    assert abs(float(la - lb)) < 1e-3 * max(1.0, abs(float(la)))
    # without normalisation (and no base) the same model is not invariant: the test could fail
    plain = WindowModel(ode_rnn(), "none", "last", season_period=P).eval() if base == "none" else None
    if plain is not None:
        with torch.no_grad():
            c = ode_rnn().eval().forecast(batch, q).mean
            d = ode_rnn().eval().forecast(shifted(batch, 1000.0), q).mean
        assert (d - c - 1000.0).abs().max() > 1.0


def test_normalised_model_scales_with_the_series():
    """Multiplying a series by a > 0 (well above the scale floor) multiplies the forecast about its mean by a."""
    t, y = irregular(1)
    batch = window_batch(y, t, cutoff=3.0)
    model = WindowModel(ode_rnn(), "window", "none").eval()
    q = torch.linspace(3.1, 4.5, 5)
    with torch.no_grad():
        a = model.forecast(batch, q).mean
        b = model.forecast(shifted(batch, 0.0, 10.0), q).mean
    torch.testing.assert_close(b, 10 * a, atol=1e-2, rtol=1e-3)


def zeroed(model: WindowModel) -> WindowModel:
    """The inner ODE-RNN's read-out mean set to 0: a zero correction."""
    last = model.inner.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("normalize", ["none", "window"])
def test_zero_correction_on_seasonal_base_is_seasonal_naive(normalize):
    t, y = irregular(2)
    batch = window_batch(y, t, cutoff=2.6)
    model = zeroed(WindowModel(ode_rnn(), normalize, "seasonal", season_period=P))
    q = torch.linspace(2.7, 4.9, 12)
    with torch.no_grad():
        got = model.forecast(batch, q).mean
        ctx = Batch(
            batch.times,
            batch.values,
            batch.obs_mask,
            torch.zeros_like(batch.obs_mask),
            batch.time_mask,
            batch.series_idx,
            batch.cutoff,
        )
        want = Seasonal(P).forecast(ctx, q).mean
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_zero_correction_bases_are_exact_on_their_own_kind_of_series():
    """``trend`` extends a line exactly; ``seasonal_trend`` a sine on a line (regular samples); ``last`` is LOCF."""
    t = np.arange(0, 5.0, 0.125)
    line = 2.0 + 0.7 * t
    season = np.sin(2 * np.pi * t / P) + 0.7 * t
    q = torch.tensor(t[t > 3.0], dtype=torch.float32)
    for base, y in (("trend", line), ("seasonal_trend", season), ("last", line)):
        batch = window_batch(y[None, :], t, cutoff=3.0)
        model = zeroed(WindowModel(ode_rnn(), "window", base, season_period=P))
        with torch.no_grad():
            got = model.forecast(batch, q).mean[0, :, 0]
        want = torch.tensor(y[t > 3.0], dtype=torch.float32) if base != "last" else torch.full_like(q, line[t <= 3][-1])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the plain seasonal naive misses the trend by 0.7 per period: the test above could fail
    batch = window_batch(season[None, :], t, cutoff=3.0)
    with torch.no_grad():
        sn = zeroed(WindowModel(ode_rnn(), "window", "seasonal", season_period=P)).forecast(batch, q).mean[0, :, 0]
    assert (sn - torch.tensor(season[t > 3.0], dtype=torch.float32)).abs().max() > 0.6


def test_zero_correction_damped_base_levels_off_from_the_last_value():
    """``damped``: the last value plus the context's slope, damped with τ = e^θ × the context's span: on a line it
    starts on the line and falls below it, towards last + slope·τ; a constant stays constant."""
    t = np.arange(0, 3.6, 0.25)  # context 0..3 (span 3, the last value at t = 3), targets at 3.25 and 3.5
    y = np.stack([2.0 + 0.7 * t, np.full_like(t, 5.0)])
    batch = window_batch(y, t, cutoff=3.0)
    model = zeroed(WindowModel(ode_rnn(), "window", "damped"))
    tau = math.exp(float(model.damping[0])) * 3.0
    assert tau == pytest.approx(DAMPED_INIT * 3.0, rel=1e-6)
    q = torch.tensor([3.5, 6.0, 20.0, 1000.0])
    with torch.no_grad():
        got = model.forecast(batch, q).mean[:, :, 0]
    dt = q.double() - 3.0
    want = torch.tensor(2.0 + 0.7 * 3.0) + 0.7 * tau * (1 - torch.exp(-dt / tau))
    torch.testing.assert_close(got[0].double(), want, atol=1e-3, rtol=1e-4)
    line = 2.0 + 0.7 * q
    assert float(got[0, 0]) == pytest.approx(float(line[0]), abs=0.02)  # at first on the line
    assert float(line[2] - got[0, 2]) > 1.0  # then below it
    assert float(got[0, 3]) == pytest.approx(2.0 + 0.7 * 3.0 + 0.7 * tau, abs=1e-2)  # levelled off
    torch.testing.assert_close(got[1], torch.full_like(got[1], 5.0), atol=1e-4, rtol=0)


def test_damped_base_learns_its_time_constant_and_keeps_it():
    """θ (per channel) gets a gradient through the correction's loss, moves with an optimiser step, and a
    state dict round trip keeps it."""
    t = np.arange(0, 5.0, 0.25)
    y = np.stack([10 * (1 - np.exp(-t / 1.5)), 5 * (1 - np.exp(-t / 1.0))])  # growth that levels off
    batch = window_batch(y, t, cutoff=2.0)
    model = WindowModel(ode_rnn(), "window", "damped")
    opt = torch.optim.Adam([model.damping], lr=0.05)
    before = model.damping.detach().clone()
    loss, _ = model.loss(batch)
    loss.backward()
    assert model.damping.grad is not None and float(model.damping.grad.abs().sum()) > 0
    opt.step()
    assert float((model.damping - before).abs().sum()) > 0.01
    again = WindowModel(ode_rnn(1), "window", "damped")
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.damping.detach(), model.damping.detach())
    assert "damping" not in WindowModel(ode_rnn(), "window", "trend").state_dict()


def test_context_points_use_the_window_location_and_the_forecast_maps_back():
    """Before the cutoff the inner model sees (y - mean) / std; its forecast is mapped back with the same numbers."""
    t, y = irregular(3)
    batch = window_batch(y, t, cutoff=3.0)
    model = WindowModel(ode_rnn(), "window", "last")
    z, st = model.transform(batch)
    ctx = batch.obs_mask.bool()
    m = (batch.values * batch.obs_mask).sum(1, keepdim=True) / batch.obs_mask.sum(1, keepdim=True)
    torch.testing.assert_close(
        z.values[ctx], ((batch.values - m) / st.scale).expand_as(z.values)[ctx], atol=1e-5, rtol=1e-5
    )
    zc = z.values[ctx].view(3, -1)
    torch.testing.assert_close(zc.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    assert torch.all((zc.pow(2).mean(1) - 1).abs() < 1e-2)


def test_module_options_and_errors():
    m = ForecastingModule(model="ode_rnn", input_dim=2, normalize="window", base="seasonal_trend", season_period=1.0)
    assert isinstance(m.model, WindowModel) and m.hparams.base == "seasonal_trend"
    plain = ForecastingModule(model="ode_rnn", input_dim=2)
    assert not isinstance(plain.model, WindowModel)  # default: the model's own state_dict keys
    with pytest.raises(ConfigError, match="needs a season"):
        ForecastingModule(model="ode_rnn", base="seasonal")
    with pytest.raises(ConfigError, match="base"):
        ForecastingModule(model="ode_rnn", base="seasonl", season_period=1.0)
    with pytest.raises(ConfigError, match="normalize"):
        ForecastingModule(model="ode_rnn", normalize="revin")
    assert set(BASES) >= {"none", "last", "seasonal", "seasonal_trend", "trend", "damped", "mean"}


def test_latent_ode_and_gru_ode_train_through_the_wrapper():
    t, y = irregular(4)
    batch = window_batch(y, t, cutoff=3.0)
    for name in ("latent_ode", "gru_ode"):
        m = ForecastingModule(
            model=name,
            input_dim=1,
            evolution={"kind": "gru_flow"},
            latent_dim=4,
            hidden_dim=8,
            normalize="window",
            base="seasonal",
            season_period=P,
        )
        loss, _ = m.model.loss(batch)
        loss.backward()
        assert math.isfinite(float(loss))
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.slow
def test_fit_save_load_predict_remembers_the_options(tmp_path):
    """A model fitted with normalize/base: its model directory reloads the same forecaster (same forecasts)."""
    from ts_neuralode.api.forecaster import Forecaster

    rng = np.random.default_rng(0)
    rows = []
    for k in range(4):
        ts = np.sort(rng.uniform(0, 60, 120))
        rows.append(
            pd.DataFrame(
                {
                    "unique_id": f"s{k}",
                    "ds": ts,
                    "y": 100 * k + np.sin(2 * np.pi * ts / 10) + 0.05 * ts + rng.normal(0, 0.1, 120),
                }
            )
        )
    df = pd.concat(rows, ignore_index=True)
    fc = Forecaster.fit(
        df,
        "ode_rnn",
        data_options={
            "task": "forecast",
            "horizon": 10,
            "context": 20,
            "season": 10,
            "layout": "padded",
            "batch_size": 4,
            "windows_per_series": 2,
        },
        model_options={
            "normalize": "window",
            "base": "seasonal_trend",
            "latent_dim": 4,
            "hidden_dim": 8,
            "evolution": {"method": "rk4", "step_size": 0.5},
        },
        trainer={"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        output_dir=tmp_path / "run",
        tracking=False,
    )
    out = fc.predict(df, horizon=10, num_points=5, seed=0)
    loaded = Forecaster.load(fc.save(tmp_path / "model"))
    assert isinstance(loaded.model, WindowModel) and loaded.model.base_kind == "seasonal_trend"
    again = loaded.predict(df, horizon=10, num_points=5, seed=0)
    np.testing.assert_allclose(out[fc.name].to_numpy(), again[loaded.name].to_numpy(), rtol=1e-5, atol=1e-5)
    # in the data's units: each series' forecast sits at its own level (100 k), as the base puts it
    levels = out.groupby("unique_id")[fc.name].mean().to_numpy()
    np.testing.assert_allclose(levels, 100 * np.arange(4) + 2.5, atol=5.0)


def test_auto_base_follows_the_season():
    with_season = ForecastingModule(model="ode_rnn", base="auto", normalize="window", season_period=1.0)
    without = ForecastingModule(model="ode_rnn", base="auto", normalize="window")
    assert with_season.model.base_kind == "harmonic" and without.model.base_kind == "last"
    assert with_season.hparams.base == "auto"  # resolved again from the saved season on reload


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ode_rnn", "gru_ode", "latent_ode"])
def test_an_untrained_correction_starts_at_its_base(name):
    """With a base, the inner model's mean read-out starts at 0: the untrained model forecasts the base exactly."""
    t, y = irregular(5)
    batch = window_batch(y, t, cutoff=3.0)
    m = ForecastingModule(
        model=name,
        input_dim=1,
        evolution={"kind": "gru_flow"},
        latent_dim=4,
        hidden_dim=8,
        normalize="window",
        base="seasonal_trend",
        season_period=P,
    ).model.eval()
    q = torch.linspace(3.1, 4.5, 6)
    with torch.no_grad():
        got = m.forecast(batch, q, num_samples=3).mean
        base = m.stats(batch).base(q.view(1, -1, 1).expand(3, -1, 1))
    torch.testing.assert_close(got, base, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_harmonic_base_learns_how_fast_its_level_reverts():
    """The reversion time (per channel) learned through the correction's loss alone: short where the seasonal
    series' departures are an Ornstein–Uhlenbeck process of time constant 0.1 seasons, long where they are a random
    walk (both start at 1 season); a model directory written before it existed loads as no reversion."""
    rng = np.random.default_rng(0)
    t = np.arange(0, 6.0, 0.05)
    phi = math.exp(-0.05 / 0.1)
    ou = np.zeros((16, t.size))
    for i in range(1, t.size):
        ou[:, i] = phi * ou[:, i - 1] + math.sqrt(1 - phi**2) * rng.normal(0, 1, 16)
    walk = np.cumsum(rng.normal(0, 0.15, (16, t.size)), 1)
    learned = {}
    for name, departure in (("ou", ou), ("walk", walk)):
        batch = window_batch(np.sin(2 * np.pi * t) + departure + rng.normal(0, 0.05, (16, t.size)), t, cutoff=5.0)
        model = WindowModel(ode_rnn(), "window", "harmonic", season_period=P)
        opt = torch.optim.Adam([model.reversion], lr=0.15)
        for _ in range(40):
            opt.zero_grad()
            model.loss(batch)[0].backward()
            opt.step()
        learned[name] = math.exp(model.reversion.item())
    # measured 0.19 and 24 (data drawn with other seeds: 0.03-0.26 and 1.5-29)
    assert learned["ou"] < 0.3 and learned["walk"] > 1.2, learned
    old = {k: v for k, v in model.state_dict().items() if k != "reversion"}
    again = WindowModel(ode_rnn(), "window", "harmonic", season_period=P)
    again.load_state_dict(old)
    assert float(again.reversion.min()) >= 30.0  # e^30 seasons: the level persists, as it did
    assert "reversion" not in WindowModel(ode_rnn(), "window", "damped").state_dict()


@pytest.mark.slow
def test_a_season_that_grows_with_the_level_is_forecast_on_the_log_scale(tmp_path):
    """scaler="log": the harmonic base fits a multiplicative season (additive in the log) that the standard scale
    can only fit with one amplitude; forecasts and bands come back through exp, so they stay positive."""
    from ts_neuralode.api.forecaster import Forecaster

    def truth(k, t):
        return (20 + 10 * k) * np.exp(0.03 * t) * (1 + 0.6 * np.sin(2 * np.pi * t / 10))

    rng = np.random.default_rng(1)
    rows = []
    for k in range(4):
        ts = np.sort(rng.uniform(0, 60, 140))
        rows.append(pd.DataFrame({"unique_id": f"s{k}", "ds": ts, "y": truth(k, ts) * rng.lognormal(0, 0.01, 140)}))
    history = pd.concat(rows, ignore_index=True)
    last = history.groupby("unique_id")["ds"].max().min()
    times = last + np.linspace(0.5, 10, 12)
    mae = {}
    for scaler in ("standard", "log"):
        fc = Forecaster.fit(
            history,
            "ode_rnn",
            data_options={
                "task": "forecast",
                "horizon": 10,
                "context": 30,
                "season": 10,
                "layout": "padded",
                "batch_size": 4,
                "windows_per_series": 2,
                "scaler": scaler,
            },
            model_options={"normalize": "window", "base": "harmonic", "latent_dim": 4, "hidden_dim": 8},
            trainer={"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
            output_dir=tmp_path / scaler,
            tracking=False,
        )
        out = fc.predict(history, times=times, seed=0)
        k = out["unique_id"].str[1:].astype(int).to_numpy()
        mae[scaler] = float(np.abs(out[fc.name].to_numpy() - truth(k, out["ds"].to_numpy())).mean())
        if scaler == "log":
            bands = [c for c in out.columns if c.startswith(f"{fc.name}-")]
            assert bands and (out[[fc.name, *bands]].to_numpy() > 0).all()
    assert mae["log"] < 0.6 * mae["standard"], mae  # measured: 1.6 against 39.6

"""Naive baselines: exact numbers on a hand-made batch (missing channels, both layouts), the Forecast contract,
and their metrics in the LightningModule (the same code path as the model's)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.baselines import BASELINES, Seasonal, baseline_names, build_baseline
from ts_neuralode.training import ForecastingModule
from ts_neuralode.training.metrics import MaskedMSE

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)

NAN = math.nan
# Three series, two channels (NaN = not observed). B observes nothing on channel 1.
SERIES = [
    ([0.0, 1.0, 2.0, 4.0], [[1, 10], [2, NAN], [NAN, 30], [4, NAN]]),  # A
    ([1.0, 3.0], [[5, NAN], [7, NAN]]),  # B
    ([0.0, 1.0, 2.0, 3.0], [[0, NAN], [10, 5], [0, NAN], [10, NAN]]),  # C
]
Q = [0.5, 1.0, 3.0, 5.0]
# Expected [series][channel] at Q, worked out by hand from the rules in the baselines' docstring.
EXPECTED = {
    "locf": [[[1, 2, 2, 4], [10, 10, 30, 30]], [[5, 5, 7, 7], [0, 0, 0, 0]], [[0, 10, 10, 10], [5, 5, 5, 5]]],
    # ties go to the earlier observation (A at 0.5, A channel 1 at 1.0)
    "nearest": [[[1, 2, 4, 4], [10, 10, 30, 30]], [[5, 5, 7, 7], [0, 0, 0, 0]], [[0, 10, 10, 10], [5, 5, 5, 5]]],
    "linear": [
        [[1.5, 2, 2 + 4 / 3, 4], [15, 20, 30, 30]],
        [[5, 5, 7, 7], [0, 0, 0, 0]],
        [[5, 10, 10, 10], [5, 5, 5, 5]],
    ],
    "mean": [[[7 / 3] * 4, [20] * 4], [[6] * 4, [0] * 4], [[5] * 4, [5] * 4]],
}
# Seasonal naive, period 2, default tolerance 0.2, at these times.
QS = [2.5, 4.0, 5.0, 6.0]
EXPECTED_SEASONAL = [[[2, 4, 4, 4], [30, 30, 30, 30]], [[5, 7, 7, 7], [0, 0, 0, 0]], [[0, 0, 10, 0], [5, 5, 5, 5]]]


def make_batch(layout: str, hold_out: tuple[int, int] | None = None) -> Batch:
    """SERIES as a Batch: union grid (``times`` [T]) or padded (``times`` [B, T], padding repeats the last time).
    ``hold_out=(series, position)``: that point becomes a target the baselines do not see."""
    b, d = len(SERIES), 2
    if layout == "union":
        grid = sorted({t for ts, _ in SERIES for t in ts})
        cols = [[grid.index(t) for t in ts] for ts, _ in SERIES]
        times = torch.tensor(grid)
        width = len(grid)
    else:
        width = max(len(ts) for ts, _ in SERIES)
        cols = [list(range(len(ts))) for ts, _ in SERIES]
        times = torch.tensor([ts + [ts[-1]] * (width - len(ts)) for ts, _ in SERIES])
    values = torch.zeros(b, width, d)
    obs = torch.zeros(b, width, d)
    time_mask = torch.zeros(b, width, dtype=torch.bool)
    for i, (_, vals) in enumerate(SERIES):
        for c, row in zip(cols[i], vals, strict=True):
            time_mask[i, c] = True
            for k, v in enumerate(row):
                if not math.isnan(v):
                    values[i, c, k], obs[i, c, k] = v, 1.0
    target = obs.clone()
    if hold_out is not None:
        i, j = hold_out
        obs[i, cols[i][j]] = 0.0
    return Batch(
        times=times,
        values=values,
        obs_mask=obs,
        target_mask=target,
        time_mask=time_mask,
        series_idx=torch.arange(b),
        cutoff=torch.tensor([ts[-1] for ts, _ in SERIES]),
    )


def expected(table) -> torch.Tensor:
    return torch.tensor(table, dtype=torch.float32).permute(0, 2, 1)  # [B, D, Tq] -> [B, Tq, D]


@pytest.mark.parametrize("layout", ["union", "padded"])
@pytest.mark.parametrize("name", ["locf", "nearest", "linear", "mean"])
def test_baselines_exact_numbers_missing_channels_both_layouts(layout, name):
    batch = make_batch(layout)
    model = build_baseline(name)
    shared = model.forecast(batch, torch.tensor(Q))
    per_series = model.forecast(batch, torch.tensor([Q] * 3))  # [B, Tq] query times: the same answer
    torch.testing.assert_close(shared.mean, expected(EXPECTED[name]))
    torch.testing.assert_close(per_series.mean, shared.mean)


@pytest.mark.parametrize("layout", ["union", "padded"])
def test_seasonal_naive_takes_the_observation_k_periods_back_else_locf(layout):
    batch = make_batch(layout)
    torch.testing.assert_close(Seasonal(2.0).forecast(batch, torch.tensor(QS)).mean, expected(EXPECTED_SEASONAL))
    # a wider tolerance accepts A's observation at 1 (value 2) for t = 4 - 2 = 2, where LOCF says 4
    wide = Seasonal(2.0, tolerance=1.0).forecast(batch, torch.tensor(QS)).mean
    assert wide[0, 1, 0] == 2 and Seasonal(2.0).forecast(batch, torch.tensor(QS)).mean[0, 1, 0] == 4


@pytest.mark.parametrize("layout", ["union", "padded"])
def test_predict_never_sees_held_out_points(layout):
    """Interpolation: A's point at t=1 is a target, not observed: LOCF carries t=0 over it, linear interpolates."""
    batch = make_batch(layout, hold_out=(0, 1))
    col = 1  # t = 1 is column 1 in both layouts for series A
    assert build_baseline("locf").predict(batch).mean[0, col, 0] == 1
    assert build_baseline("linear").predict(batch).mean[0, col, 0] == pytest.approx(1 + 3 / 4)  # 1 -> 4 over [0, 4]
    assert build_baseline("mean").predict(batch).mean[0, col, 0] == pytest.approx(2.5)  # (1 + 4) / 2
    # its own value would have been 2: an observed point is reproduced exactly
    assert build_baseline("locf").predict(make_batch(layout)).mean[0, col, 0] == 2


def test_forecast_contract_and_errors():
    batch = make_batch("padded")
    fc = build_baseline("linear").forecast(batch, torch.tensor(Q), num_samples=7)
    assert fc.samples.shape == (1, 3, 4, 2) and fc.std is None  # deterministic: one path
    assert torch.equal(fc.quantile(0.9), fc.mean)
    loss, logs = build_baseline("locf").loss(make_batch("padded", hold_out=(0, 1)))
    assert loss == pytest.approx((2 - 1) ** 2 / 12)  # one error of 1 among the 12 target values
    assert set(BASELINES) == {"locf", "nearest", "linear", "mean", "seasonal"}
    with pytest.raises(ConfigError, match="needs a season"):
        build_baseline("seasonal")
    with pytest.raises(ConfigError, match="unknown baseline"):
        build_baseline("drift")
    with pytest.raises(ConfigError, match="positive"):
        Seasonal(0.0)
    assert baseline_names(None, None) == ["locf", "mean", "linear"]
    assert baseline_names(None, 24.0) == ["locf", "mean", "linear", "seasonal"]
    with pytest.raises(ConfigError, match="twice"):
        baseline_names(["locf", "locf"], None)


# --------------------------------------------------------------------------- in the LightningModule
@pytest.fixture(scope="module")
def sine_dm():
    dm = IrregularTimeSeriesDataModule(
        df=generate("sine", n_series=30, n_points=24, seed=0),
        task="extrapolation",
        layout="padded",
        batch_size=4,
        seed=0,
    )
    dm.setup()
    return dm


def _trainer(tmp_path):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        max_epochs=1,
    )


def test_test_metrics_carry_every_baseline_and_skill(tmp_path, sine_dm):
    torch.manual_seed(0)
    module = ForecastingModule(
        model="ode_rnn",
        input_dim=1,
        evolution="gru_flow",
        latent_dim=4,
        hidden_dim=8,
        eval_samples=2,
        season_period=1.0,
    )
    res = _trainer(tmp_path).test(module, datamodule=sine_dm, verbose=False)[0]
    for b in ("locf", "mean", "linear", "seasonal"):
        for m in ("mse", "mae", "extrap_mse", "extrap_mae"):
            assert math.isfinite(res[f"test_{m}_{b}"]), (m, b)
        assert f"test_crps_{b}" not in res  # a point forecast's CRPS is its MAE
    assert "test_interp_mse_locf" not in res  # extrapolation: no held-out points before the cutoff
    assert res["test_skill"] == pytest.approx(res["test_mse"] / res["test_mse_locf"], rel=1e-5)
    assert res["test_extrap_skill"] == pytest.approx(res["test_extrap_mse"] / res["test_extrap_mse_locf"], rel=1e-5)
    assert res["test_skill_mean"] == pytest.approx(res["test_mse_mean"] / res["test_mse_locf"], rel=1e-5)
    assert "test_skill_locf" not in res
    # the metric is the plain masked MSE of the baseline's forecast over the test batches
    direct = MaskedMSE()
    for batch in sine_dm.test_dataloader():
        after = (batch.times_per_sample() > batch.cutoff[:, None]).unsqueeze(-1).float()
        direct.update(build_baseline("locf").predict(batch).mean, batch.values, batch.target_mask * after)
    assert res["test_extrap_mse_locf"] == pytest.approx(float(direct.compute()), rel=1e-5)
    # weights of a module with baselines load into one without (no baseline state in the state_dict)
    plain = ForecastingModule(
        model="ode_rnn", input_dim=1, evolution="gru_flow", latent_dim=4, hidden_dim=8, baselines=[]
    )
    plain.load_state_dict(module.state_dict())


def test_a_baseline_as_the_model_is_scored_not_fitted(tmp_path, sine_dm):
    module = ForecastingModule(model="mean", input_dim=1)
    res = _trainer(tmp_path).test(module, datamodule=sine_dm, verbose=False)[0]
    assert res["test_mse"] == pytest.approx(res["test_mse_mean"], rel=1e-6)
    assert math.isfinite(res["test_loss"])  # its loss is its target MSE (averaged per batch, not pooled)
    assert sum(p.numel() for p in module.parameters()) == 0
    with pytest.raises(ConfigError, match="nothing to train"):
        _trainer(tmp_path).fit(module, datamodule=sine_dm)
    with pytest.raises(ConfigError, match="needs a season"):
        ForecastingModule(model="ode_rnn", input_dim=1, baselines=["seasonal"])
    assert np.isfinite(res["test_skill"])

"""The forecast task: windows (context before the cutoff, horizon after it, durations respected, both layouts),
the time and series splits, every model family training on it, the CLI, and ``forecast --context``."""

from __future__ import annotations

import math
import os

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.data import IrregularTimeSeriesDataModule, collate
from ts_neuralode.errors import ConfigError, DataError
from ts_neuralode.training import ForecastingModule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)

H, CTX = 5.0, 10.0


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Three series with integer, irregular times (own grids), two channels, some cells missing."""
    rng = np.random.default_rng(0)
    parts = []
    for sid, (lo, hi, keep) in {"a": (0, 60, 0.7), "b": (3, 90, 0.5), "c": (10, 50, 0.9)}.items():
        t = np.arange(lo, hi)
        t = t[rng.random(len(t)) < keep].astype(float)
        y = np.sin(t / 4) + rng.normal(0, 0.1, len(t))
        z = np.cos(t / 6)
        z[rng.random(len(t)) < 0.3] = np.nan  # channel z missing at some times
        parts.append(pd.DataFrame({"unique_id": sid, "ds": t, "y": y, "z": z}))
    return pd.concat(parts, ignore_index=True)


def make_dm(frame, **kw) -> IrregularTimeSeriesDataModule:
    opts = dict(
        task="forecast",
        horizon=H,
        context=CTX,
        time_scale=1.0,
        time_origin="zero",
        batch_size=64,
        seed=0,
        value_cols=["y", "z"],
    )
    opts.update(kw)
    dm = IrregularTimeSeriesDataModule(df=frame, **opts)
    dm.setup()
    return dm


def series_times(dm, s: int) -> np.ndarray:
    t = dm.table
    return t.times[t.offsets[s] : t.offsets[s + 1]]


def items(batch):
    """Per batch item: (series, cutoff, context times, target times, obs mask rows, target mask rows, values)."""
    tps = batch.times_per_sample()
    for i in range(batch.batch_size):
        tm = batch.time_mask[i]
        t = tps[i][tm].double().numpy()
        om, gm = batch.obs_mask[i][tm].numpy(), batch.target_mask[i][tm].numpy()
        yield (
            int(batch.series_idx[i]),
            float(batch.cutoff[i]),
            t[om.any(1)],
            t[gm.any(1)],
            om,
            gm,
            batch.values[i][tm].numpy(),
        )


def check_window(dm, s, c, ctx_t, tgt_t, om, gm, end=math.inf, shift=0.0):
    """Context = every point of series s in [c - CTX, c]; targets = every point in (c, min(c + H, end)]."""
    assert len(ctx_t) and len(tgt_t)
    assert ctx_t.max() <= c < tgt_t.min()  # the context lies before the cutoff, the horizon after it
    assert c - ctx_t.min() <= CTX and tgt_t.max() - c <= H  # durations respected
    assert not (om.any(1) & gm.any(1)).any()  # no point is both context and target
    raw = series_times(dm, s) - shift
    np.testing.assert_array_equal(ctx_t, raw[(raw >= c - CTX) & (raw <= c)])
    np.testing.assert_array_equal(tgt_t, raw[(raw > c) & (raw <= min(c + H, end - shift))])


@pytest.mark.parametrize("layout", ["union", "padded"])
def test_training_windows_are_right(frame, layout):
    dm = make_dm(frame, layout=layout, windows_per_series=30)
    last = dm.table.last_times()
    val_cut = last - 2 * H  # split by time: test = last horizon, validation = the one before
    torch.manual_seed(0)
    seen = 0
    for batch in dm.train_dataloader():
        for s, c, ctx_t, tgt_t, om, gm, v in items(batch):
            check_window(dm, s, c, ctx_t, tgt_t, om, gm, end=val_cut[s])
            assert c in series_times(dm, s)  # training cutoffs are observation times
            assert tgt_t.max() <= val_cut[s]  # no training target in the validation/test horizons
            observed = ~np.isnan(dm.table.values[dm.table.offsets[s] : dm.table.offsets[s + 1]])
            n_obs = observed[np.isin(series_times(dm, s), np.concatenate([ctx_t, tgt_t]))].sum(0)
            assert ((om + gm).sum(0) == n_obs).all()  # per channel: exactly the observed cells, missing ones out
            assert (v[(om + gm) == 0] == 0).all()
            seen += 1
    assert seen == 3 * 30 == dm.train_items_per_epoch


@pytest.mark.parametrize("layout", ["union", "padded"])
def test_validation_and_test_windows_are_the_last_horizons(frame, layout):
    dm = make_dm(frame, layout=layout)
    last = dm.table.last_times()
    for loader, back in ((dm.val_dataloader(), 2 * H), (dm.test_dataloader(), H)):
        got = {}
        for _ in range(2):  # fixed: the same windows every time
            for s, c, ctx_t, tgt_t, om, gm, _v in items(next(iter(loader))):
                assert c == pytest.approx(last[s] - back)
                check_window(dm, s, c, ctx_t, tgt_t, om, gm)
                assert got.setdefault(s, (ctx_t.tolist(), tgt_t.tolist())) == (ctx_t.tolist(), tgt_t.tolist())
        assert sorted(got) == [0, 1, 2]  # split by time: every series in every split


def test_a_holdout_shift_moves_validation_and_test_back_by_whole_horizons(frame):
    """``holdout_shift=k`` (the automatic choice's backtest folds): the split as if each series ended k horizons
    earlier; the later observations are in no window."""
    k = 2
    dm = make_dm(frame, holdout_shift=k, windows_per_series=30)
    last = dm.table.last_times() - k * H
    for loader, back in ((dm.val_dataloader(), 2 * H), (dm.test_dataloader(), H)):
        for s, c, ctx_t, tgt_t, om, gm, _v in items(next(iter(loader))):
            assert c == pytest.approx(last[s] - back)
            check_window(dm, s, c, ctx_t, tgt_t, om, gm)
            assert tgt_t.max() <= last[s]
    torch.manual_seed(0)
    for batch in dm.train_dataloader():
        for s, _c, _ctx_t, tgt_t, *_ in items(batch):
            assert tgt_t.max() <= last[s] - 2 * H  # training targets end at the shifted validation cutoff
    for bad, match in ((-1, "integer >= 0"), (1.5, "integer >= 0"), (True, "integer >= 0")):
        with pytest.raises(ConfigError, match=match):
            make_dm(frame, holdout_shift=bad)
    with pytest.raises(ConfigError, match="without train_end"):
        make_dm(frame, holdout_shift=1, train_end=30.0)
    with pytest.raises(ConfigError, match="split by time"):
        make_dm(frame, holdout_shift=1, split_by="series")


def test_cutoffs_are_redrawn_and_seeded(frame):
    dm = make_dm(frame, windows_per_series=10, layout="padded", shuffle=False)

    def cutoffs(seed):
        torch.manual_seed(seed)
        return torch.cat([b.cutoff for b in dm.train_dataloader()])

    assert torch.equal(cutoffs(1), cutoffs(1))
    a, b = cutoffs(1), cutoffs(2)
    assert not torch.equal(a, b) and len(torch.unique(a)) > 10  # new cutoffs per draw, spread over the history


def test_union_and_padded_layouts_hold_the_same_windows(frame):
    dm = make_dm(frame, layout="padded")
    idx = np.array([0, 1, 2, 0, 1])
    out = []
    for layout in ("union", "padded"):
        b = collate(dm.arrays, idx, layout, dm._specs["train"], np.random.default_rng(5))
        out.append(
            [(s, c, ctx.tolist(), tgt.tolist(), v[om + gm > 0].tolist()) for s, c, ctx, tgt, om, gm, v in items(b)]
        )
    assert out[0] == out[1]


def test_series_origin_starts_each_window_at_zero(frame):
    """time_origin="series": the same windows, each shifted so that its first point is at model time 0 (as a
    forecast from a history cut to its context sees it)."""
    zero, own = make_dm(frame, layout="padded"), make_dm(frame, layout="padded", time_origin="series")
    idx = np.array([0, 1, 2, 2])
    a = collate(zero.arrays, idx, "padded", zero._specs["train"], np.random.default_rng(3))
    b = collate(own.arrays, idx, "padded", own._specs["train"], np.random.default_rng(3))
    first = a.times[:, 0]
    assert (b.times[:, 0] == 0).all()
    torch.testing.assert_close(b.times, a.times - first[:, None])
    torch.testing.assert_close(b.cutoff, a.cutoff - first)
    assert torch.equal(a.obs_mask, b.obs_mask) and torch.equal(a.target_mask, b.target_mask)


def test_split_by_series_and_window_counts(frame):
    dm = make_dm(frame, split_by="series", val_fraction=0.34, test_fraction=0.34, windows_per_series="auto")
    parts = [set(dm.split[k].tolist()) for k in ("train", "val", "test")]
    assert all(len(p) == 1 for p in parts) and len(set.union(*parts)) == 3
    (s,) = parts[0]
    span = dm.table.last_times()[s] - dm.table.first_times()[s]  # no held-out horizon: the whole series trains
    per = math.ceil(span / H)  # one window per horizon of history ...
    per *= math.ceil(10 * 64 / per)  # ... scaled up to 10 batches of 64 (AUTO_MIN_BATCHES)
    assert len(dm.train_dataloader().dataset) == dm.train_items_per_epoch == per
    big = make_dm(
        frame, split_by="series", val_fraction=0.34, test_fraction=0.34, windows_per_series="auto", batch_size=1
    )  # 10 batches of 1 are fewer than one window per horizon: no scaling
    assert big.train_items_per_epoch == math.ceil(span / H)
    (t,) = parts[2]
    ((_, c, *_rest),) = items(next(iter(dm.test_dataloader())))
    assert c == pytest.approx(dm.table.last_times()[t] - H)


def test_forecast_task_errors_are_one_line(frame):
    with pytest.raises(ConfigError, match="needs a horizon"):
        IrregularTimeSeriesDataModule(df=frame, task="forecast")
    with pytest.raises(ConfigError, match="applies to task='forecast' only"):
        IrregularTimeSeriesDataModule(df=frame, split_by="time")
    with pytest.raises(ConfigError, match="windows_per_series"):
        IrregularTimeSeriesDataModule(df=frame, task="forecast", horizon=5, windows_per_series=0)
    with pytest.raises(ConfigError, match="time axis is numeric"):
        make_dm(frame, horizon="2D")
    with pytest.raises(ConfigError, match="must be a positive duration"):
        make_dm(frame, context=-3)
    with pytest.raises(DataError, match="validation/test horizons"):
        make_dm(frame, horizon=1000)
    with pytest.warns(UserWarning, match="too short"):  # series c spans 40: no room for 2 x 25 held out
        make_dm(frame, horizon=25, context=None)


def test_durations_on_datetime_data(dt_csv):
    dm = IrregularTimeSeriesDataModule(
        path=str(dt_csv), time_unit="h", task="forecast", horizon="12h", context="1D", layout="padded", season="1D"
    )
    dm.setup()
    scale = dm.transform.time_scale
    assert dm.season_period == pytest.approx(24 / scale)
    torch.manual_seed(0)
    for batch in [next(iter(dm.train_dataloader())), next(iter(dm.test_dataloader()))]:
        for _s, c, ctx_t, tgt_t, *_ in items(batch):
            # model times are float32: a test target exactly 12 h after its cutoff is 12 h up to ~1e-6 h
            assert (c - ctx_t.min()) * scale <= 24 + 1e-4 and (tgt_t.max() - c) * scale <= 12 + 1e-4
            assert ctx_t.max() <= c < tgt_t.min()


# ------------------------------------------------------------------------------- models and the CLI
FAMILIES = {
    "latent_ode": dict(model="latent_ode", evolution={"kind": "ode", "method": "rk4", "step_size": 0.25}),
    "ode_rnn": dict(model="ode_rnn", evolution={"kind": "ode", "method": "euler", "step_size": 0.25}),
    "gru_ode": dict(model="gru_ode", evolution={"kind": "ode", "method": "euler", "step_size": 0.25}),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["union", "padded"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_model_family_trains_on_forecast_windows(frame, tmp_path, family, layout):
    dm = make_dm(
        frame, layout=layout, windows_per_series=8, batch_size=6, time_scale="auto", time_origin="series", season=12
    )
    torch.manual_seed(0)
    module = ForecastingModule(
        input_dim=2,
        latent_dim=6,
        hidden_dim=16,
        lr=1e-2,
        eval_samples=2,
        season_period=dm.season_period,
        **FAMILIES[family],
    )
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    for key in (
        "train_loss",
        "val_loss",
        "val_extrap_mse",
        "val_extrap_mse_locf",
        "val_extrap_mse_seasonal",
        "val_extrap_skill",
    ):
        assert key in m and math.isfinite(float(m[key])), key
    assert "val_interp_mse" not in m  # every target lies after its window's cutoff
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))  # it learned something


@pytest.mark.slow
def test_cli_fit_on_forecast_windows_then_forecast_with_context(dt_csv, tmp_path):
    from mlflow.tracking import MlflowClient

    from conftest import TINY_FIT_ARGS
    from ts_neuralode.api.forecaster import Forecaster
    from ts_neuralode.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        torch.manual_seed(0)
        rc = main(
            [
                "fit",
                "--data.path",
                str(dt_csv),
                "--data.time_unit",
                "h",
                "--data.task",
                "forecast",
                "--data.horizon",
                "12h",
                "--data.context",
                "1D",
                "--data.season",
                "1D",
                "--tracking_uri",
                uri,
                "--checkpoint_dir",
                str(tmp_path / "ck"),
                *TINY_FIT_ARGS,
            ]
        )
        assert rc == 0
        client = MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("ts_neuralode").experiment_id])[0]
        for key in (
            "epoch/val_extrap_mse",
            "epoch/val_extrap_mse_locf",
            "epoch/val_extrap_skill",
            "epoch/val_extrap_skill_seasonal",
        ):
            assert key in run.data.metrics, key

        fc = Forecaster.load(tmp_path / "ck" / "model")
        assert fc.context == "1D"  # the model directory remembers the training context ...
        assert Forecaster.load(next((tmp_path / "ck").glob("epoch*.ckpt"))).context == "1D"  # ... and the checkpoint
        hist = pd.read_csv(dt_csv)
        ctx = fc.predict(hist, horizon="6h", num_points=3, num_samples=1, context="1D")
        full = fc.predict(hist, horizon="6h", num_points=3, num_samples=1, context="all")
        # by default a forecast conditions on what the model was trained to read
        pd.testing.assert_frame_equal(fc.predict(hist, horizon="6h", num_points=3, num_samples=1), ctx)
        # context="1D" is the same as handing over only the last day of each series
        h = hist.dropna(subset=["y"]).assign(ts=lambda d: pd.to_datetime(d["ds"], utc=True))
        recent = h[h["ts"] >= h.groupby("unique_id")["ts"].transform("max") - pd.Timedelta("1D")]
        cut = fc.predict(recent.drop(columns="ts"), horizon="6h", num_points=3, num_samples=1)
        pd.testing.assert_frame_equal(ctx, cut)
        assert list(ctx["ds"]) == list(full["ds"])
        assert not np.allclose(ctx.iloc[:, 2], full.iloc[:, 2])  # the model conditions on less
        rc = main(
            [
                "forecast",
                "--model",
                str(tmp_path / "ck" / "model"),
                "--data.path",
                str(dt_csv),
                "--horizon",
                "6h",
                "--num_points",
                "3",
                "--num_samples",
                "1",
                "--context",
                "1D",
                "--out",
                str(tmp_path / "fc.csv"),
                "--plots",
                "false",
                "--progress",
                "false",
            ]
        )
        assert rc == 0
        cli = pd.read_csv(tmp_path / "fc.csv")
        np.testing.assert_allclose(cli.iloc[:, 2], ctx.iloc[:, 2], rtol=1e-5)
        assert (
            main(
                [
                    "forecast",
                    "--model",
                    str(tmp_path / "ck" / "model"),
                    "--data.path",
                    str(dt_csv),
                    "--horizon",
                    "6h",
                    "--context",
                    "-1D",
                    "--plots",
                    "false",
                    "--progress",
                    "false",
                ]
            )
            == 2
        )
    finally:
        os.chdir(old)


def test_auto_time_scale_follows_the_window_not_the_history(frame):
    """With a context the models integrate over context + horizon, not whole series: ``time_scale="auto"`` sizes
    that window to at most 10 model units. Here the longest series spans 8700 raw units (scale 1000) and a
    window 500 + 500 = 1000 (scale 100)."""
    long = frame.assign(ds=frame["ds"] * 100.0)
    whole = make_dm(long, time_scale="auto", time_origin="series", context=None, horizon=H * 100)
    window = make_dm(long, time_scale="auto", time_origin="series", context=CTX * 50, horizon=H * 100)
    assert whole.transform.time_scale == 1000.0
    assert window.transform.time_scale == 100.0
    fixed = make_dm(long, time_scale=7.0, time_origin="series", context=CTX * 50, horizon=H * 100)
    assert fixed.transform.time_scale == 7.0  # a given scale is kept

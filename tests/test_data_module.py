"""IrregularTimeSeriesDataModule, SeriesTransform and the collate/forecaster paths."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from ts_neuralode.data import (
    Batch,
    IrregularTimeSeriesDataModule,
    SeriesArrays,
    SeriesTransform,
    collate,
    generate,
    read_series,
)
from ts_neuralode.data.batching import subsample
from ts_neuralode.errors import ConfigError, DataError

torch.manual_seed(0)


@pytest.fixture(scope="module")
def sine():
    return generate("sine", n_series=60, n_points=30, seed=3)


def dm_of(df, **kw):
    dm = IrregularTimeSeriesDataModule(df=df, **kw)
    dm.setup("fit")
    return dm


def check_batch(b: Batch, d: int):
    bsz, t = b.values.shape[:2]
    assert b.values.shape == b.obs_mask.shape == b.target_mask.shape == (bsz, t, d)
    assert b.time_mask.shape == (bsz, t) and b.time_mask.dtype == torch.bool
    assert b.series_idx.dtype == torch.long and b.cutoff.shape == (bsz,)
    tm = b.time_mask.unsqueeze(-1).float()
    assert (b.obs_mask <= tm).all() and (b.target_mask <= tm).all()
    assert (b.values * (1 - b.obs_mask.clamp(max=1)) * (1 - b.target_mask)).abs().max() == 0
    tps = b.times_per_sample()
    assert (tps[:, 1:] >= tps[:, :-1]).all()


def test_split_is_seeded_disjoint_and_complete(sine):
    a, b, c = dm_of(sine, seed=1), dm_of(sine, seed=1), dm_of(sine, seed=2)
    parts = [set(a.split_ids(k)) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == 60 and len(set.union(*parts)) == 60
    assert len(parts[1]) == 12 and len(parts[2]) == 12
    assert a.split_ids("test") == b.split_ids("test") != c.split_ids("test")
    assert a.num_channels == 1 and a.channel_names == ["y"] and len(a.series_ids) == 60


def test_scaler_fitted_on_train_only_ignoring_masked():
    df = pd.DataFrame(
        {
            "unique_id": np.repeat(["a", "b", "c", "d", "e"], 3),
            "ds": np.tile([0.0, 1.0, 2.0], 5),
            "y": [1, 2, 3, 10, 20, 30, 100, 200, 300, 4, 5, 6, 7, 8, 9.0],
            "m": [1, 1, 0] * 5,
        }
    )
    dm = dm_of(df, mask_cols=["m"], val_fraction=0.2, test_fraction=0.2, seed=0)
    train = dm.split["train"]
    tab = dm.table
    obs = np.concatenate([tab.values[tab.offsets[i] : tab.offsets[i + 1], 0] for i in train])
    assert dm.transform.center[0] == pytest.approx(obs.mean())
    assert dm.transform.scale[0] == pytest.approx(obs.std())
    assert 999 not in obs and len(obs) == 2 * len(train)  # masked third points not used


def _multiplicative(n_series=4, n=120, seed=0, past=False):
    """Monthly-like positive series whose season grows with the level (airline passengers' shape)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_series):
        t = np.sort(rng.choice(np.arange(n * 2), n, replace=False)).astype(float)
        level = (50.0 + 20 * k) * np.exp(0.01 * t)
        y = level * (1 + 0.4 * np.sin(2 * np.pi * t / 12)) * np.exp(0.02 * rng.standard_normal(n))
        frame = {"unique_id": f"s{k}", "ds": t, "y": y}
        if past:
            frame["temp"] = rng.standard_normal(n) - 2.0  # a past covariate with negative values
        rows.append(pd.DataFrame(frame))
    return pd.concat(rows, ignore_index=True)


def test_log_scaler_scales_the_log_of_the_forecast_channels_only():
    """scaler="log": centre and scale are the training log values' mean and std, past covariates are standardised
    as they are (negative values allowed), values map back exactly, and the flags survive the state dict (an older
    state dict without them loads as no log)."""
    df = _multiplicative(past=True)
    dm = dm_of(df, past_cols=["temp"], scaler="log", val_fraction=0.25, test_fraction=0.0)
    tf, tab = dm.transform, dm.table
    assert tf.log == [True, False]
    obs = np.concatenate([tab.values[tab.offsets[i] : tab.offsets[i + 1], 0] for i in dm.split["train"]])
    assert tf.center[0] == pytest.approx(np.log(obs).mean()) and tf.scale[0] == pytest.approx(np.log(obs).std())
    z = tf.transform_values(tab.values)
    assert np.allclose(z[:, 0], (np.log(tab.values[:, 0]) - tf.center[0]) / tf.scale[0])
    assert np.allclose(z[:, 1], (tab.values[:, 1] - tf.center[1]) / tf.scale[1])
    assert np.allclose(tf.inverse_values(z), tab.values, rtol=1e-12)
    again = SeriesTransform.from_state_dict(json.loads(json.dumps(tf.state_dict())))
    assert again.log == [True, False] and np.allclose(again.inverse_values(z), tab.values, rtol=1e-12)
    old = {k: v for k, v in tf.state_dict().items() if k != "log"}
    assert SeriesTransform.from_state_dict(old).log == [False, False]


def test_log_scaler_refuses_a_value_that_is_not_positive_in_one_line():
    df = _multiplicative()
    df.loc[7, "y"] = 0.0
    with pytest.raises(DataError, match=r"column 'y'.*value 0: scaler 'log' needs positive values.*--data.scaler"):
        dm_of(df, scaler="log")
    good = dm_of(_multiplicative(), scaler="log")
    history = _multiplicative().iloc[:50].copy()
    history.loc[3, "y"] = -1.0  # a history to forecast from is checked the same way
    with pytest.raises(DataError, match="scaler 'log' needs positive values"):
        good.transform.make_batch(history)


def test_interpolation_masks_and_fixed_eval_subsample(sine):
    dm = dm_of(sine, task="interpolation", obs_fraction=0.4, layout="padded", batch_size=8)
    b1 = next(iter(dm.val_dataloader()))
    b2 = next(iter(dm.val_dataloader()))
    check_batch(b1, 1)
    assert torch.equal(b1.obs_mask, b2.obs_mask)  # fixed per series across epochs
    assert torch.equal(b1.target_mask, b1.time_mask.unsqueeze(-1).float())  # reconstruct all
    last_time = torch.where(b1.time_mask, b1.times, torch.full_like(b1.times, -1.0)).max(1).values
    torch.testing.assert_close(b1.cutoff, last_time)  # interpolation: cutoff = end of each series
    per_series = b1.obs_mask.sum((1, 2))
    assert (per_series == 12).all()  # round(0.4 * 30)
    assert (b1.held_out_mask.sum((1, 2)) == 18).all()
    torch.manual_seed(0)
    t1 = next(iter(dm.train_dataloader()))
    t2 = next(iter(dm.train_dataloader()))
    assert not torch.equal(t1.obs_mask, t2.obs_mask)  # fresh subsample (and order) each time


def test_extrapolation_fraction_cut(sine):
    dm = dm_of(sine, task="extrapolation", cut=0.5, layout="padded", batch_size=16)
    b = next(iter(dm.test_dataloader()))
    check_batch(b, 1)
    t = b.times
    obs_t = torch.where(b.obs_mask[..., 0] > 0, t, torch.full_like(t, -1e9))
    tgt_t = torch.where(b.target_mask[..., 0] > 0, t, torch.full_like(t, 1e9))
    assert (obs_t.max(1).values <= b.cutoff).all() and (tgt_t.min(1).values > b.cutoff).all()
    assert ((b.obs_mask + b.target_mask)[..., 0] == b.time_mask.float()).all()  # every point is one or the other
    # cut = half of each series' own span (series start at model time 0)
    last = t.max(1).values
    torch.testing.assert_close(b.cutoff, last / 2, rtol=1e-5, atol=1e-5)


def test_extrapolation_absolute_cut_time_and_union_layout(sine):
    late = pd.DataFrame({"unique_id": "late", "ds": [6.0, 7.0, 8.0], "y": [0.0, 1.0, 2.0]})
    with pytest.warns(UserWarning, match="1 series have no point before or after"):
        dm = dm_of(
            pd.concat([sine, late]),
            task="extrapolation",
            cut_time=5.0,
            time_origin="zero",
            layout="union",
            batch_size=64,
        )
    late_idx = dm.series_ids.index("late")
    assert all(late_idx not in v for v in dm.split.values())
    assert dm.transform.time_scale == 1.0
    b = next(iter(dm.train_dataloader()))
    check_batch(b, 1)
    assert b.shared_grid and (b.times[1:] > b.times[:-1]).all()
    torch.testing.assert_close(b.cutoff, torch.full_like(b.cutoff, 5.0))
    assert (b.times.unsqueeze(0).expand_as(b.time_mask)[b.obs_mask[..., 0] > 0] <= 5.0).all()
    assert (b.times.unsqueeze(0).expand_as(b.time_mask)[b.target_mask[..., 0] > 0] > 5.0).all()


def test_union_and_padded_hold_the_same_points(sine):
    u = dm_of(sine, layout="union")
    p = dm_of(sine, layout="padded")
    bu = collate(u.arrays, np.arange(10), "union")
    bp = collate(p.arrays, np.arange(10), "padded")
    for i in range(10):
        tu = bu.times[bu.time_mask[i]]
        tp = bp.times[i][bp.time_mask[i]]
        torch.testing.assert_close(tu, tp)
        torch.testing.assert_close(bu.values[i][bu.time_mask[i]], bp.values[i][bp.time_mask[i]])
    # padding repeats the last real time
    short = dm_of(
        pd.concat(
            [sine, generate("sine", n_series=2, n_points=5, seed=9).assign(unique_id=lambda d: "z" + d.unique_id)]
        ),
        layout="padded",
    )
    b = collate(short.arrays, np.array([0, short.table.n_series - 1]), "padded")
    assert b.time_mask[1].sum() == 5 and (b.times[1, 5:] == b.times[1, 4]).all()


def test_auto_layout_pads_series_with_their_own_times_and_unions_a_shared_grid(sine):
    """layout='auto' (the default): padded batches where each series has its own times, one union grid where they
    share their stamps, padded on the forecast task whatever the stamps."""
    own = dm_of(sine)  # generated irregular series: every series has its own random times
    assert own.layout == "auto" and own.batch_layout == "padded"
    assert next(iter(own.train_dataloader())).times.dim() == 2
    grid = np.arange(20.0)
    shared = pd.DataFrame(
        {"unique_id": np.repeat(["a", "b", "c", "d"], 20), "ds": np.tile(grid, 4), "y": np.sin(np.tile(grid, 4))}
    )
    union = dm_of(shared, val_fraction=0.25, test_fraction=0.25)
    assert union.batch_layout == "union"
    assert next(iter(union.train_dataloader())).times.dim() == 1
    forecast = dm_of(shared, task="forecast", horizon=4.0, val_fraction=0.25, test_fraction=0.25)
    assert forecast.batch_layout == "padded"
    assert dm_of(sine, layout="union").batch_layout == "union"  # an explicit layout is kept


def test_transform_round_trip_and_json(sine):
    dm = dm_of(sine)
    sd = dm.transform.state_dict()
    tr = SeriesTransform.from_state_dict(json.loads(json.dumps(sd)))
    v = np.array([[0.3], [-1.2]])
    np.testing.assert_allclose(tr.inverse_values(tr.transform_values(v)), v)
    np.testing.assert_allclose(tr.from_model_time(tr.to_model_time([3.0, 7.5], origin=2.0), origin=2.0), [3.0, 7.5])
    assert tr.state_dict() == sd
    assert dm.state_dict()["transform"] == sd


def test_auto_time_scale_makes_large_times_small():
    df = generate("sine", n_series=5, n_points=20, seed=0)
    df["ds"] = df["ds"] * 3600 + 1e9  # seconds since some epoch
    dm = dm_of(df, val_fraction=0, test_fraction=0)
    assert dm.transform.time_scale == 10_000.0
    b = collate(dm.arrays, np.arange(5), "padded")
    assert b.times.min() == 0 and 1 < b.times.max() <= 10


def test_forecaster_path_datetimes_timezone(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for sid in ("a", "b", "c", "d"):
        ds = pd.Timestamp("2024-05-01", tz="America/New_York") + pd.to_timedelta(np.sort(rng.uniform(0, 300, 25)), "h")
        frames.append(pd.DataFrame({"unique_id": sid, "ds": ds, "y": rng.normal(5, 2, 25)}))
    df = pd.concat(frames, ignore_index=True)
    dm = dm_of(df, time_unit="h", val_fraction=0.25, test_fraction=0.25)
    tr = SeriesTransform.from_state_dict(json.loads(json.dumps(dm.transform.state_dict())))
    prep = tr.make_batch(df[df.unique_id.isin(["b", "c"])], layout="padded")
    assert prep.series_ids == ["b", "c"] and prep.batch.values.shape == (2, 25, 1)
    assert torch.equal(prep.batch.obs_mask, prep.batch.time_mask.unsqueeze(-1).float())
    q = pd.date_range("2024-05-20", periods=4, freq="6h", tz="America/New_York")
    qt = prep.query_times(q)
    assert qt.shape == (2, 4) and (qt[:, 1:] > qt[:, :-1]).all()
    mean = torch.from_numpy(tr.transform_values(np.full((2, 4, 1), 7.0))).float()
    out = prep.to_frame(qt, mean, bands={"lo-90": mean - 0.1}, query=q)
    assert list(out.columns) == ["unique_id", "ds", "y", "y-lo-90"]
    assert str(out.ds.dt.tz) == "America/New_York" and (out.ds.iloc[:4].values == q.values).all()
    np.testing.assert_allclose(out.y, 7.0, rtol=1e-5)
    # without query=: times recovered from float32 model times, within a second
    approx = prep.to_frame(qt, mean)
    assert (approx.ds.iloc[:4].reset_index(drop=True) - pd.Series(q)).abs().max() < pd.Timedelta("1s")
    ft = prep.future_times(3, "1h")
    fr = prep.to_frame(prep.query_times(ft, raw=True), mean[:, :3], query=ft, raw=True)
    last_b = df[df.unique_id == "b"].ds.max()
    assert fr.ds.iloc[0] == last_b + pd.Timedelta("1h")
    with pytest.raises(DataError, match="naive"):
        prep.query_times(pd.date_range("2024-05-20", periods=2, freq="h"))


def test_datamodule_to_frame_maps_batches_back(sine):
    dm = dm_of(sine, layout="padded")
    b = next(iter(dm.predict_dataloader()))
    out = dm.to_frame(b.series_idx, b.times, b.values)
    first = dm.series_ids[int(b.series_idx[0])]
    orig = sine[sine.unique_id == first].sort_values("ds")
    got = out[out.unique_id == first]
    np.testing.assert_allclose(got.ds.to_numpy(), orig.ds.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(got.y.to_numpy(), orig.y.to_numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_num_workers_2_and_distributed_sampler(sine):
    dm = dm_of(sine, num_workers=2, batch_size=10, layout="padded")
    seen = []
    for b in dm.train_dataloader():
        check_batch(b, 1)
        seen += b.series_idx.tolist()
    assert sorted(seen) == sorted(dm.split["train"].tolist())
    # what Lightning does under DDP: replace the sampler by a DistributedSampler per rank
    loader = dm.val_dataloader()
    ranks = []
    for r in range(2):
        ds = loader.dataset
        dl = torch.utils.data.DataLoader(
            ds, batch_size=4, sampler=DistributedSampler(ds, 2, r, shuffle=False), collate_fn=loader.collate_fn
        )
        ranks.append([i for b in dl for i in b.series_idx.tolist()])
    assert set(ranks[0]) | set(ranks[1]) == set(dm.split["val"].tolist())
    assert not set(ranks[0]) & set(ranks[1])


def test_subsample_exact_counts():
    rng = np.random.default_rng(0)
    counts = np.array([10, 3, 1, 7])
    seg = np.repeat(np.arange(4), counts)
    cand = np.ones(len(seg), dtype=bool)
    cand[:4] = False  # first series: 6 candidates
    sel = subsample(seg, cand, counts, 0.5, rng)
    assert np.bincount(seg, weights=sel, minlength=4).tolist() == [3, 2, 1, 4]
    assert not sel[:4].any()


def test_multichannel_union_masks(tmp_path):
    df = generate("double_ou", n_series=30, seed=0)
    dm = dm_of(df, task="interpolation", obs_fraction=0.5)
    assert dm.num_channels == 2
    b = next(iter(dm.val_dataloader()))
    check_batch(b, 2)
    # a point observed in one channel only keeps the other channel unobserved
    only_one = b.target_mask.sum(-1) == 1
    assert only_one.any()


def test_config_errors(sine):
    with pytest.raises(ConfigError):
        IrregularTimeSeriesDataModule()
    with pytest.raises(ConfigError):
        IrregularTimeSeriesDataModule(df=sine, task="smoothing")
    with pytest.raises(ConfigError):
        IrregularTimeSeriesDataModule(df=sine, layout="ragged")
    with pytest.raises(ConfigError):
        IrregularTimeSeriesDataModule(df=sine, cut=1.5, task="extrapolation")
    with pytest.raises(ConfigError):
        IrregularTimeSeriesDataModule(df=sine, obs_fraction=0)
    with pytest.raises(ConfigError):
        dm_of(sine.head(60), val_fraction=0.4, test_fraction=0.4)  # 2 series, none left for training
    with pytest.raises(DataError, match="cut"):
        dm_of(sine, task="extrapolation", cut_time=1e6, time_origin="zero")


def test_path_input_and_lazy_properties(tmp_path, sine):
    p = tmp_path / "s.csv"
    sine.to_csv(p, index=False)
    dm = IrregularTimeSeriesDataModule(path=str(p))
    assert dm.num_channels == 1  # before setup: lazily prepared
    assert isinstance(read_series(p).ids, np.ndarray)
    assert isinstance(SeriesArrays.from_table(dm.table, dm.transform, dm.origins).times, np.ndarray)


def test_lightning_trainer_runs_all_loaders(sine):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, d):
            super().__init__()
            self.lin = torch.nn.Linear(d, d)
            self.seen = {"train": 0, "val": 0, "test": 0, "pred": 0}

        def step(self, batch, name):
            assert isinstance(batch, Batch)
            self.seen[name] += batch.batch_size
            pred = self.lin(batch.values * batch.obs_mask)
            return ((pred - batch.values) ** 2 * batch.target_mask).sum() / batch.target_mask.sum().clamp(min=1)

        def training_step(self, batch, i):
            return self.step(batch, "train")

        def validation_step(self, batch, i):
            self.step(batch, "val")

        def test_step(self, batch, i):
            self.step(batch, "test")

        def predict_step(self, batch, i):
            self.step(batch, "pred")
            return batch.series_idx

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = IrregularTimeSeriesDataModule(df=sine, batch_size=16, layout="padded")
    model = Tiny(dm.num_channels)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    preds = trainer.predict(model, dm)
    assert model.seen["train"] == 36 and model.seen["test"] == 12 and model.seen["pred"] == 60
    assert sorted(torch.cat(preds).tolist()) == list(range(60))


def test_demo_csv_end_to_end_and_single_point_history():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "data" / "demo.csv"
    dm = IrregularTimeSeriesDataModule(path=str(demo), time_unit="h", task="extrapolation", layout="padded")
    b = next(iter(dm.test_dataloader()))
    check_batch(b, 1)
    out = dm.to_frame(b.series_idx, b.times, b.values)
    assert str(out.ds.dt.tz) == "UTC+01:00" and out.ds.min() >= pd.Timestamp("2024-01-08", tz="UTC+01:00")
    hist = pd.read_csv(demo).groupby("unique_id").head(1)  # one observation per series
    prep = dm.transform.make_batch(hist)
    assert prep.batch.values.shape == (12, 1, 1) and (prep.batch.cutoff == 0).all()


@pytest.mark.parametrize("kw", [dict(task="interpolation"), dict(task="forecast", horizon=1.0, split_by="series")])
def test_calibration_windows_sample_at_most_fit_max_series(sine, kw, monkeypatch):
    """Many validation series: the calibration and the correction gate forecast a seeded sample of them (the same
    every time), with each sampled series' own windows; few: every one."""
    from ts_neuralode.api import held_out as calibration

    dm = dm_of(sine, val_fraction=0.5, **kw)
    val_ids = [dm.table.ids[i] for i in dm.split["val"]]
    ids_all, cuts_all, _, _ = calibration.held_out_windows(dm)
    assert ids_all == val_ids and cuts_all.shape[1] == len(val_ids) > 7
    monkeypatch.setattr(calibration, "FIT_MAX_SERIES", 7)
    ids, cuts, limit, _ = calibration.held_out_windows(dm)
    assert len(ids) == 7 and len(set(ids)) == 7 and set(ids) <= set(val_ids)
    assert ids == [u for u in val_ids if u in set(ids)]  # in the split's order
    assert calibration.held_out_windows(dm)[0] == ids  # seeded: the same sample every time
    pos = [val_ids.index(u) for u in ids]
    assert np.array_equal(cuts, cuts_all[:, pos]) and cuts.shape == (calibration.FIT_WINDOWS, 7)


@pytest.mark.parametrize(
    "times, fix",
    [
        ([0.0, 1.0, 2.0, 3.0], "shorten --data.horizon"),  # the held-out horizon leaves one observation before it
        ([0.0, 10.0, 20.0, 30.0, 40.0], "lengthen --data.horizon"),  # history enough, but gaps wider than it
    ],
)
def test_a_forecast_task_without_training_windows_says_which_way_to_move_the_horizon(times, fix):
    df = pd.DataFrame(
        {"unique_id": np.repeat(["a", "b"], len(times)), "ds": times * 2, "y": np.arange(2 * len(times), dtype=float)}
    )
    with pytest.raises(DataError, match="two observations within horizon=3") as err:
        dm_of(df, task="forecast", horizon=3, val_fraction=0.2, test_fraction=0.0)
    assert fix in str(err.value) and "\n" not in str(err.value)

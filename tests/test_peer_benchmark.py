"""The peer benchmark's parts that run without its own environment: windows, regular grids, read-back, naive
forecasts and scoring (scripts/_peer_windows.py, scripts/peer_benchmark.py, scripts/make_bxlator.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import _peer_windows as pw  # noqa: E402
import make_bxlator  # noqa: E402
import peer_benchmark as pb  # noqa: E402

from ts_neuralode.api.backtest import evaluate, window_cuts  # noqa: E402
from ts_neuralode.api.windows import _window_rows  # noqa: E402
from ts_neuralode.data.io import read_series  # noqa: E402


def _irregular(n_series=3, seed=0, fn=lambda t: np.sin(t)):
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n_series):
        t = np.sort(rng.uniform(0, 20 + 3 * i, size=40 + 5 * i)).round(3)
        t = np.unique(t)
        parts.append(pd.DataFrame({"unique_id": f"s{i}", "ds": t, "y": fn(t) + i}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("shared", [False, True])
def test_windows_match_the_backtest(shared):
    """Cutoffs and scored rows per series are the ones Forecaster.cross_validation makes (same code's rules)."""
    raw = _irregular()
    long, _ = pw.to_long(raw, ["y"], None)
    h, step, n = 3.0, 2.0, 3
    cuts = pw.make_cuts(long, h, n, step, shared)
    rows = pw.window_rows(long, cuts, h)
    table = read_series(raw)
    if shared:
        ours = sorted(cuts["cutoff"].unique())
        bt_cuts, _ = window_cuts(table, h, None, ours, None)
    else:
        bt_cuts, _ = window_cuts(table, h, n, None, step)
    for w in range(n):
        per = cuts[cuts["window"] == w].set_index("unique_id")["cutoff"]
        np.testing.assert_allclose(per.reindex(table.ids).to_numpy(), bt_cuts[w])
        n_hist, n_end = _window_rows(table, bt_cuts[w], h)
        got = rows[rows["window"] == w].groupby("unique_id").size().reindex(table.ids, fill_value=0).to_numpy()
        np.testing.assert_array_equal(got, np.where(n_hist >= 1, n_end - n_hist, 0))
    # locf / mean are the channel's last value and mean up to the cutoff
    r = rows.iloc[len(rows) // 2]
    hist = long[(long["unique_id"] == r["unique_id"]) & (long["t"] <= r["cutoff"])]
    assert r["locf"] == hist["y"].iloc[-1] and np.isclose(r["mean"], hist["y"].mean())
    assert ((rows["ds"] > rows["cutoff"]) & (rows["ds"] <= rows["cutoff"] + h + 1e-6)).all()


def test_channel_without_history_sits_out():
    raw = pd.DataFrame(
        {
            "unique_id": "a",
            "ds": [0.0, 1.0, 2.0, 3.0, 4.0],
            "x1": [1.0, 2.0, 3.0, 4.0, 5.0],
            "x2": [np.nan, np.nan, np.nan, 7.0, 8.0],
        }
    )
    long, _ = pw.to_long(raw, ["x1", "x2"], None)
    rows = pw.window_rows(long, pd.DataFrame({"unique_id": ["a"], "window": [0], "cutoff": [2.0]}), 5.0)
    assert set(rows["channel"]) == {"x1"} and list(rows["ds"]) == [3.0, 4.0] and (rows["locf"] == 3.0).all()


def test_grid_forecast_reads_back_at_irregular_times():
    """A line observed at irregular times: its grid (anchored at the cutoff) and a grid forecast that continues it
    read back exactly at the real observation times (linear in time), bands too."""
    a, b = 2.0, 0.5
    raw = _irregular(n_series=2, fn=lambda t: a + b * t)
    long, _ = pw.to_long(raw, ["y"], None)
    last = long.groupby("unique_id")["t"].max()
    cuts = pd.DataFrame(
        {"unique_id": last.index, "window": 0, "cutoff": long.groupby("unique_id")["t"].nth(-8).to_numpy()}
    )  # each cutoff on an observation: the grid's step 0 is exact
    dt, h = 0.7, 4.0
    rows = pw.window_rows(long, cuts, h)
    grid = pw.regular_grid(long, cuts, dt)
    g0 = grid[grid["step"] == 0].set_index("uid")["y"]
    for uid, c in cuts.set_index("unique_id")["cutoff"].items():
        off = float(uid[1:])
        assert np.isclose(g0[f"{uid}{pw.SEP}y"], a + b * c + off)
        g = grid[grid["uid"] == f"{uid}{pw.SEP}y"]
        np.testing.assert_allclose(g["y"], a + b * (c + g["step"] * dt) + off, atol=1e-9)
    steps = np.arange(1, int(np.ceil(h / dt)) + 1)
    fc = []
    for uid, c in cuts.set_index("unique_id")["cutoff"].items():
        line = a + b * (c + steps * dt) + float(uid[1:])
        fc.append(
            pd.DataFrame(
                {
                    "uid": f"{uid}{pw.SEP}y",
                    "window": 0,
                    "step": steps,
                    "point": line,
                    "lo-90": line - 1.0,
                    "hi-90": line + 1.0,
                }
            )
        )
    out = pw.read_back(pd.concat(fc), grid, rows, dt, "peer")
    np.testing.assert_allclose(out["peer"], rows["y"], atol=1e-9)
    inside = (out["peer-lo-90"] <= rows["y"]) & (rows["y"] <= out["peer-hi-90"])
    assert inside.all()
    assert set(out.columns) == {"peer", "peer-lo-90", "peer-hi-90"}


def test_grid_is_flat_past_the_last_observation():
    long = pd.DataFrame({"unique_id": "a", "channel": "y", "t": [0.0, 1.0, 2.5], "y": [1.0, 3.0, 4.0]})
    grid = pw.regular_grid(long, pd.DataFrame({"unique_id": ["a"], "window": [0], "cutoff": [3.0]}), 1.0)
    # grid t = 0, 1, 2, 3: observed, observed, interpolated between 1.0 and 2.5, flat past 2.5 (the last value)
    np.testing.assert_allclose(grid.sort_values("step")["y"], [1.0, 3.0, 3.0 + 1.0 / 1.5, 4.0])


def test_seasonal_naive_takes_the_value_one_period_back():
    period = 5.0
    t = np.array([0.0, 1.0, 2.0, 3.2, 4.1, 5.0, 6.0, 7.0, 8.1, 9.0, 10.0, 11.0, 12.0])
    long = pd.DataFrame({"unique_id": "a", "channel": "y", "t": t, "y": np.sin(2 * np.pi * t / period)})
    rows = pw.window_rows(long, pd.DataFrame({"unique_id": ["a"], "window": [0], "cutoff": [9.0]}), 3.0)
    got = pw.seasonal_naive(long, rows, period)
    # t = 10 -> 5.0 (k = 1), 11 -> 6.0, 12 -> 7.0: observed exactly one period back
    np.testing.assert_allclose(got, np.sin(2 * np.pi * np.array([5.0, 6.0, 7.0]) / period))
    far = pw.window_rows(long, pd.DataFrame({"unique_id": ["a"], "window": [0], "cutoff": [2.0]}), 10.0)
    got = pw.seasonal_naive(long, far, period)
    at = dict(zip(far["ds"], got, strict=True))
    sin = lambda x: np.sin(2 * np.pi * x / period)  # noqa: E731
    # history up to 2.0: 6.0 -> 1.0 and 7.0 -> 2.0 (k = 1), 12.0 -> 2.0 (k = 2); 3.2 -> -1.8 has no observation
    # within P/10: the last value
    assert np.isclose(at[6.0], sin(1.0)) and np.isclose(at[7.0], sin(2.0)) and np.isclose(at[12.0], sin(2.0))
    assert np.isclose(at[3.2], sin(2.0)) and not np.isclose(at[5.0], sin(2.0))


@pytest.mark.slow
def test_naive_contenders_score_identically_to_the_backtest_locf():
    """The benchmark's scoring (backtest.evaluate on one frame) gives a contender equal to locf its exact MAE and
    scaled MAE 1; a contender with missing rows is scored on the rows every contender has."""
    raw = _irregular()
    long, _ = pw.to_long(raw, ["y"], None)
    cuts = pw.make_cuts(long, 3.0, 3, 2.0, False)
    rows = pw.window_rows(long, cuts, 3.0)
    copy = pd.DataFrame({"copy": rows["locf"].to_numpy()}, index=rows.index)
    better = pd.DataFrame({"better": (0.5 * rows["locf"] + 0.5 * rows["y"]).to_numpy()}, index=rows.index)
    overall, _, dropped = pb.score(rows, {"copy": {"cols": copy}, "better": {"cols": better}}, 3.0)
    s = overall.set_index("model")
    assert dropped == 0
    assert np.isclose(s.loc["copy", "mae"], s.loc["locf", "mae"]) and np.isclose(s.loc["copy", "scaled_mae"], 1.0)
    assert np.isclose(s.loc["better", "scaled_mae"], 0.5)
    ref = evaluate(rows.drop(columns="window"), 3.0)
    assert np.isclose(ref[(ref["scope"] == "overall") & (ref["model"] == "mean")]["mae"].iloc[0], s.loc["mean", "mae"])
    gap = copy.copy()
    gap.iloc[:5] = np.nan
    overall, _, dropped = pb.score(rows, {"copy": {"cols": gap}}, 3.0)
    assert dropped == 5 and int(overall["n"].iloc[0]) == len(rows) - 5


def test_co2_last_window_is_the_last_52_weeks():
    ds = pb.DATASETS["co2"]
    raw, long, origin, aware = pb.load(ds)
    cuts = pb.pw.make_cuts(long, ds.horizon, 3, ds.step, ds.shared)
    last = cuts[cuts["window"] == 2]["cutoff"].iloc[0]
    assert not aware
    assert pb.to_stamp(last, ds, origin, aware) == pd.Timestamp("2001-12-29") - pd.Timedelta(weeks=52)
    rows = pw.window_rows(long, cuts, ds.horizon)
    assert 45 <= (rows["window"] == 2).sum() <= 52  # the observed weeks of the last year


def test_make_bxlator_masks_and_sorts():
    raw = pd.DataFrame(
        {
            "ID": [1.0, 0.0, 0.0, 0.0],
            "Time": [0.5, 2.0, 1.0, 3.0],
            "Value_1": [1.0, 2.0, 3.0, 4.0],
            "Value_2": [5.0, 6.0, 7.0, 8.0],
            "Mask_1": [1.0, 0.0, 1.0, 0.0],
            "Mask_2": [1.0, 1.0, 0.0, 0.0],
            "Cov": 0.0,
        }
    )
    out = make_bxlator.convert(raw)
    assert list(out["unique_id"]) == ["bxl_0000", "bxl_0000", "bxl_0001"]
    assert list(out["ds"]) == [1.0, 2.0, 0.5]
    assert np.isnan(out["x2"].iloc[0]) and np.isnan(out["x1"].iloc[1]) and out["x2"].iloc[1] == 6.0
    with pytest.raises(ValueError, match="lacks the columns"):
        make_bxlator.convert(raw.drop(columns="Mask_2"))

"""``--data.season auto`` (ts_neuralode.data.season): the calendar period the harmonic fit finds in datetime series,
none in noise or numeric times; the data module's season in model units and its line; the automatic model choice
choosing it once for every trial where the user gave no season."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ts_neuralode.api.model_choice_study import resolve_season
from ts_neuralode.data import IrregularTimeSeriesDataModule, read_series
from ts_neuralode.data.season import detect_season

pytestmark = pytest.mark.usefixtures("one_thread")


def frame(kind: str, n_series: int = 6, days: float = 28.0, per_day: float = 8.0, seed: int = 0) -> pd.DataFrame:
    """Irregular datetime series: a daily or weekly cycle (amplitude 1) plus noise (sd 0.3), or noise alone."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_series):
        t = np.sort(rng.uniform(0, days, int(days * per_day)))  # days since the start, irregular
        phase = rng.uniform(0, 2 * np.pi)
        cycle = {"daily": np.sin(2 * np.pi * t + phase), "weekly": np.sin(2 * np.pi * t / 7 + phase)}.get(kind, 0 * t)
        y = 10 + 0.05 * t + cycle + rng.normal(0, 0.3, t.size)
        ds = pd.Timestamp("2026-01-05") + pd.to_timedelta(t, unit="D")
        rows.append(pd.DataFrame({"unique_id": f"s{i}", "ds": ds, "y": y}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize(("kind", "want"), [("daily", "1D"), ("weekly", "7D"), ("noise", None)])
def test_the_calendar_period_in_the_series_is_found(kind, want):
    season, line = detect_season(read_series(frame(kind)))
    assert season == want, line
    assert line.startswith(f"season auto: {want or 'none'} ")
    assert "365.25D: too few seasons or points" in line  # four weeks of history cannot show a year


@pytest.mark.parametrize("kind", ["random_walk", "ar1"])
def test_series_that_wander_without_a_season_get_none(kind):
    """Daily random walks and AR(1) series over 4 years: their drift projects onto a seasonal profile in sample (the
    BIC preferred a year for them), but the profile does not forecast the held-out last season."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        ds = pd.date_range("2020-01-01", periods=4 * 365, freq="D")
        e = rng.normal(size=len(ds))
        if kind == "random_walk":
            y = np.cumsum(e)
        else:
            y = np.zeros(len(ds))
            for t in range(1, len(ds)):
                y[t] = 0.9 * y[t - 1] + e[t]
        keep = rng.random(len(ds)) < 0.7
        rows.append(pd.DataFrame({"unique_id": f"s{i}", "ds": ds[keep], "y": y[keep]}))
    season, line = detect_season(read_series(pd.concat(rows, ignore_index=True)))
    assert season is None, line


def test_numeric_times_have_no_calendar_period():
    df = frame("daily")
    df["ds"] = (df["ds"] - df["ds"].min()) / pd.Timedelta(1, "D")
    season, line = detect_season(read_series(df))
    assert season is None and "numbers, not datetimes" in line


def test_the_data_module_takes_the_detected_season_in_model_units():
    df = frame("daily")
    dm = IrregularTimeSeriesDataModule(df=df, task="forecast", horizon="2D", season="auto", time_unit="h")
    dm.setup("fit")
    one_day = IrregularTimeSeriesDataModule(df=df, task="forecast", horizon="2D", season="1D", time_unit="h")
    one_day.setup("fit")
    assert dm.resolved_season == "1D"
    assert dm.season_period == pytest.approx(one_day.season_period)
    assert "season auto: 1D" in dm.column_summary
    noise = IrregularTimeSeriesDataModule(df=frame("noise"), task="forecast", horizon="2D", season="auto")
    assert noise.season_period is None


def test_the_model_choice_chooses_the_season_once_where_none_is_given(tmp_path):
    path = tmp_path / "daily.csv"
    frame("daily").to_csv(path, index=False)
    base = {"data.horizon": "2D", "data.task": "forecast"}
    fixed, line = resolve_season(base, path, seed=0)
    assert fixed["data.season"] == "1D" and line.startswith("season auto: 1D")
    assert resolve_season({**base, "data.season": "auto"}, path, seed=0)[0]["data.season"] == "1D"
    # a season the user gave, or none (None), is theirs
    assert resolve_season({**base, "data.season": "12h"}, path, seed=0) == ({**base, "data.season": "12h"}, None)
    assert resolve_season({**base, "data.season": None}, path, seed=0) == ({**base, "data.season": None}, None)


def test_a_parquet_folder_read_in_shards_asks_for_the_season(tmp_path):
    """The choice reads an in-memory table; a folder streamed in shards says so in one line."""
    from ts_neuralode.errors import ConfigError

    folder = tmp_path / "parts"
    folder.mkdir()
    df = frame("daily")
    for k, (_, part) in enumerate(df.groupby("unique_id")):
        part.to_parquet(folder / f"part-{k}.parquet", index=False)
    dm = IrregularTimeSeriesDataModule(path=str(folder), task="forecast", horizon="2D", season="auto")
    with pytest.raises(ConfigError, match="season auto.*Parquet folder.*--data.season 24h"):
        dm.season_period  # noqa: B018
    # the model choice does not choose one there (and says so)
    fixed, line = resolve_season({"data.horizon": "2D"}, folder, seed=0)
    assert fixed["data.season"] is None and "Parquet folder" in line

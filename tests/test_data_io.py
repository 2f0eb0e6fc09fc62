"""Reading CSV/DataFrames and every validation error of the data layer."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ts_neuralode.data import read_series
from ts_neuralode.errors import ConfigError, DataError


def write(tmp_path, text: str, name: str = "d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- formats ------------------------------------------------------------------------------------


def test_long_any_order_extra_columns_and_missing(tmp_path):
    p = write(tmp_path, "unique_id,ds,y,colour\nb,2,5,red\na,3,,blue\na,1,1.5,blue\nb,1,4,red\na,2,2.5,x\nb,3,6,y\n")
    tab = read_series(p)
    assert list(tab.ids) == ["a", "b"]
    assert tab.offsets.tolist() == [0, 2, 5]  # a's t=3 row has no value -> dropped
    np.testing.assert_allclose(tab.times, [1, 2, 1, 2, 3])
    np.testing.assert_allclose(tab.values[:, 0], [1.5, 2.5, 4, 5, 6])
    assert tab.channel_names == ["y"] and tab.mask.all()


def test_renamed_columns_multichannel_partial_observation(tmp_path):
    p = write(tmp_path, "sid,time,a,b\n1,0.5,1,\n1,0.1,2,3\n2,0,,7\n2,1,8,9\n")
    tab = read_series(p, id_col="sid", time_col="time", value_cols=["a", "b"])
    assert tab.num_channels == 2 and tab.n_series == 2
    np.testing.assert_array_equal(tab.mask, [[True, True], [True, False], [False, True], [True, True]])
    np.testing.assert_allclose(tab.times, [0.1, 0.5, 0.0, 1.0])


def test_no_id_column_is_one_series_and_wide_default_channels(tmp_path):
    p = write(tmp_path, "ds,temp,hum,label\n3,1,2,x\n1,3,4,y\n2,5,6,z\n")
    tab = read_series(p, format="wide")
    assert tab.n_series == 1 and tab.channel_names == ["temp", "hum"]
    np.testing.assert_allclose(tab.values, [[3, 4], [5, 6], [1, 2]])


def test_mask_columns_ignore_values_under_zero(tmp_path):
    p = write(tmp_path, "unique_id,ds,y,m\na,0,1,1\na,1,999,0\na,2,3,1\na,3,,0\n")
    tab = read_series(p, mask_cols=["m"])
    np.testing.assert_allclose(tab.times, [0, 2])
    np.testing.assert_allclose(tab.values[:, 0], [1, 3])
    tab2 = read_series(p, mask_cols={"y": "m"})
    np.testing.assert_allclose(tab2.values[:, 0], [1, 3])


def test_datetimes_with_timezone_and_unit(tmp_path):
    p = write(
        tmp_path,
        "unique_id,ds,y\na,2024-01-01T00:00:00+01:00,1\na,2024-01-02T12:00:00+01:00,2\n"
        "b,2024-01-01T06:00:00+01:00,3\nb,2024-01-01T00:00:00+01:00,4\n",
    )
    tab = read_series(p, time_unit="D")
    assert tab.codec.is_datetime and tab.codec.unit == "D" and tab.codec.tz == "fixed:3600"
    np.testing.assert_allclose(tab.times, [0, 1.5, 0, 0.25])
    back = tab.codec.from_float(tab.times)
    assert str(back[1]) == "2024-01-02 12:00:00+01:00"


def test_dataframe_with_named_timezone_round_trip():
    ds = pd.date_range("2024-03-30", periods=6, freq="12h", tz="Europe/Paris")  # crosses a DST change
    df = pd.DataFrame({"unique_id": ["x"] * 6, "ds": ds, "y": np.arange(6.0)})
    tab = read_series(df.sample(frac=1, random_state=0))
    assert tab.codec.tz == "Europe/Paris"
    back = tab.codec.from_float(tab.times)
    assert (back == ds).all() and str(back.tz) == "Europe/Paris"


def test_numeric_time_given_as_strings(tmp_path):
    p = write(tmp_path, 'unique_id,ds,y\na,"1.5",1\na,"2.5",2\n')
    tab = read_series(p)
    assert not tab.codec.is_datetime
    np.testing.assert_allclose(tab.times, [1.5, 2.5])


def test_duplicates_mean_option(tmp_path):
    p = write(tmp_path, "unique_id,ds,y,z\na,1,1,\na,1,3,5\na,2,4,6\n")
    tab = read_series(p, value_cols=["y", "z"], duplicates="mean")
    np.testing.assert_allclose(tab.values, [[2, 5], [4, 6]])


# --- validation errors: one line naming file, column and first offending row ---------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_series(tmp_path / "nope.csv")
    assert "nope.csv" in one_line(e) and "not found" in str(e.value)


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_series(write(tmp_path, ""))
    with pytest.raises(DataError, match="no data rows"):
        read_series(write(tmp_path, "unique_id,ds,y\n", "h.csv"))


def test_missing_columns_lists_existing(tmp_path):
    p = write(tmp_path, "id,time,value\na,1,2\n")
    with pytest.raises(DataError) as e:
        read_series(p)
    msg = one_line(e)
    assert "'ds'" in msg and "id, time, value" in msg and "d.csv" in msg
    with pytest.raises(DataError, match="missing value column 'y2'"):
        read_series(p, time_col="time", value_cols=["y2"])
    with pytest.raises(DataError, match="missing id column 'sid'"):
        read_series(p, time_col="time", id_col="sid", value_cols=["value"])


# (csv text, read_series options, substrings the single-line message must contain)
ERROR_CASES = {
    "non-numeric value": ("unique_id,ds,y\na,1,1\na,2,abc\na,3,2\n", {}, ["column 'y'", "line 3", "'abc'"]),
    "unparseable timestamp": (
        "unique_id,ds,y\na,2024-01-01,1\na,2024-01-02,1\na,not-a-date,2\n",
        {},
        ["column 'ds'", "line 4", "not-a-date"],
    ),
    "duplicate (id, time)": (
        "unique_id,ds,y\na,1,1\nb,1,1\na,2,1\na,1,5\n",
        {},
        ["duplicate", "line 5", "line 2", "duplicates='mean'"],
    ),
    "inf value": ("unique_id,ds,y\na,1,1\na,2,inf\n", {}, ["column 'y'", "line 3", "infinite"]),
    "channel never observed": (
        "unique_id,ds,y,z\na,1,1,\na,2,1,\n",
        {"value_cols": ["y", "z"]},
        ["column 'z'", "never observed"],
    ),
    "mask not 0/1": ("unique_id,ds,y,m\na,1,1,1\na,2,1,2\n", {"mask_cols": ["m"]}, ["column 'm'", "line 3", "0 or 1"]),
    "mask 1 over empty value": ("unique_id,ds,y,m\na,1,1,1\na,2,,1\n", {"mask_cols": ["m"]}, ["column 'y'", "line 3"]),
    "mixed naive/aware": (
        "unique_id,ds,y\na,2024-01-01 00:00,1\na,2024-01-01 01:00+02:00,2\n",
        {},
        ["column 'ds'", "line 3", "naive", "timezone-aware"],
    ),
    "missing timestamp": ("unique_id,ds,y\na,1,1\na,,2\n", {}, ["column 'ds'", "line 3", "timestamp is missing"]),
    "missing id": ("unique_id,ds,y\n,1,1\na,2,2\n", {}, ["column 'unique_id'", "line 2", "id is missing"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_validation_error_names_file_column_and_row(tmp_path, case):
    text, kwargs, parts = ERROR_CASES[case]
    with pytest.raises(DataError) as e:
        read_series(write(tmp_path, text), **kwargs)
    msg = one_line(e)
    assert msg.startswith(str(tmp_path / "d.csv"))
    for part in parts:
        assert part in msg, (case, msg)


def test_short_series_dropped_with_warning_and_error_if_none_left(tmp_path):
    p = write(tmp_path, "unique_id,ds,y\na,1,1\na,2,1\nb,1,1\nc,5,\nc,6,2\n")
    with pytest.warns(UserWarning, match="dropped 2 series"):
        tab = read_series(p)
    assert list(tab.ids) == ["a"]
    with pytest.raises(DataError, match="fewer than 2"):
        read_series(write(tmp_path, "unique_id,ds,y\na,1,1\nb,1,1\n", "s.csv"))


def test_dataframe_errors_name_rows():
    df = pd.DataFrame({"unique_id": ["a", "a"], "ds": [0.0, 1.0], "y": [1.0, "x"]})
    with pytest.raises(DataError, match=r"<DataFrame>, column 'y', row 1"):
        read_series(df)


def test_bad_options():
    df = pd.DataFrame({"unique_id": ["a", "a"], "ds": [0.0, 1.0], "y": [1.0, 2.0]})
    with pytest.raises(ConfigError):
        read_series(df, format="tall")
    with pytest.raises(ConfigError):
        read_series(df, duplicates="first")
    with pytest.raises(ConfigError):
        read_series(df, mask_cols=["m1", "m2"])
    with pytest.raises(ConfigError, match="time_unit"):
        read_series(pd.DataFrame({"ds": ["2024-01-01", "2024-01-02"], "y": [1, 2]}), time_unit="fortnight")


def test_no_warning_for_clean_data(tmp_path):
    p = write(tmp_path, "unique_id,ds,y\na,1,1\na,2,1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_series(p)


@pytest.mark.parametrize("n_ids", [50, 100_000])
def test_sort_order_matches_lexsort(n_ids):
    from ts_neuralode.data.io import _sort_order

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 50, 5000)
    times = rng.random(5000).round(3)
    order = _sort_order(codes, times, n_ids)
    assert np.array_equal(codes[order], codes[np.lexsort((times, codes))])
    assert np.array_equal(times[order], times[np.lexsort((times, codes))])
    assert np.array_equal(_sort_order(codes[order], times[order], n_ids), np.arange(5000))


def test_several_utc_offsets_kept_as_utc_and_non_iso_dates(tmp_path):
    p = write(tmp_path, "unique_id,ds,y\na,2024-03-30T12:00:00+01:00,1\na,2024-03-31T12:00:00+02:00,2\n")
    tab = read_series(p, time_unit="h")
    assert tab.codec.tz == "UTC"
    np.testing.assert_allclose(tab.times, [0.0, 23.0])
    q = write(tmp_path, "unique_id,ds,y\na,03/30/2024 12:00,1\na,03/31/2024 06:00,2\n", "us.csv")
    np.testing.assert_allclose(read_series(q, time_unit="h").times, [0.0, 18.0])

"""Whatever a user feeds — a CSV, a DataFrame, forecast query times — the only outcomes are a result or a project
error (one line); never a traceback, never a NaN deep in a solver. Times leave the package exactly as they came in.

* property-based (hypothesis, deterministic: the ``ci`` profile in conftest): random headers, encodings,
  separators, NaN/inf/huge/tiny values, duplicate and unsorted times, mixed types and ids of every type through
  ``read_series`` and on into the transform, a batch and a real (untrained) model's loss; random query times,
  horizons, steps and counts through ``Forecaster.predict``;
* a corpus of bad files through ``ts-neuralode fit`` (exit 2 and one line, or a fit that works), one of them in a
  real process to see that no traceback reaches the console;
* exact round trips: numeric query times come back as passed, history times as read (numbers and datetimes).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import TINY_FIT_ARGS, subprocess_env
from ts_neuralode.api.forecast_frame import table_to_long
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main
from ts_neuralode.data.io import read_series
from ts_neuralode.data.transform import SeriesTransform
from ts_neuralode.errors import TSNeuralODEError
from ts_neuralode.training import ForecastingModule

SLOW_OK = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- strategies -----------------------------------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 1e-310, 4049.0, 0.1, 1e15, 2**53 + 1.0]),
)
WORDS = st.sampled_from(
    [
        "",
        " ",
        "abc",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "1e309",
        "-1e309",
        "1,5",
        "None",
        "NULL",
        "true",
        "2024-01-01",
        "2024-01-01T00:00:00+01:00",
        "2024-03-31T02:30:00+02:00",
        "2024-13-45",
        "3000-01-01",
        "1677-09-21",
        "0x10",
        "١٢",
        "€",
        '"',
        "a,b",
        "\x00",
    ]
)
CELLS = st.one_of(NUMBERS, WORDS, st.text(max_size=6), st.booleans())
DATETIMES = st.datetimes(
    min_value=pd.Timestamp("1970-01-01").to_pydatetime(), max_value=pd.Timestamp("2100-01-01").to_pydatetime()
)
HEADERS = st.one_of(
    st.sampled_from(["unique_id", "ds", "y", "z", "", " y ", "Unnamed: 0", "ds", "ÿ", "1"]), st.text(max_size=5)
)


def _often(draw, usual, unusual, one_in: int = 8):
    """Mostly ``usual``, one draw in ``one_in`` from ``unusual``: files are close to valid, so that every stage
    after the reader is reached too, and broken in one or more places often enough."""
    return draw(unusual if draw(st.integers(0, one_in - 1)) == 0 else usual)


@st.composite
def csv_files(draw):
    """(bytes of a CSV, read_series options): usually close to valid, often broken in one or more ways."""
    n_rows = draw(st.integers(0, 14))
    headers = _often(
        draw,
        st.sampled_from([["unique_id", "ds", "y"], ["unique_id", "ds", "y", "z"], ["ds", "y"]]),
        st.lists(HEADERS, min_size=1, max_size=5),
    )
    time_kind = draw(st.sampled_from(["numeric", "numeric", "datetime", "offsets", "mixed"]))
    ids = ["a", "b", 1, 2, 1.5]
    rows = []
    for _ in range(n_rows):
        row = []
        for h in headers:
            if h == "unique_id":
                cell = _often(draw, st.sampled_from(ids), st.one_of(st.sampled_from([True, ""]), CELLS))
            elif h == "ds":
                if time_kind == "numeric":
                    cell = _often(draw, st.one_of(st.integers(0, 20), st.floats(-1e4, 1e4)), NUMBERS)
                elif time_kind == "datetime":
                    cell = draw(DATETIMES).isoformat()
                elif time_kind == "offsets":
                    cell = draw(DATETIMES).isoformat() + draw(st.sampled_from(["+01:00", "+02:00", "Z", ""]))
                else:
                    cell = draw(CELLS)
            else:
                cell = _often(draw, st.floats(-5, 5), st.one_of(CELLS, st.none()))
            row.append(cell)
        rows.append(row)
    sep = _often(draw, st.just(","), st.sampled_from([";", "\t", "|"]))
    encoding = _often(draw, st.sampled_from(["utf-8", "utf-8-sig"]), st.sampled_from(["latin-1", "utf-16", "cp1252"]))
    fmt = lambda c: "" if c is None else (repr(c) if isinstance(c, float) else str(c))  # noqa: E731
    text = sep.join(headers) + "\n" + "".join(sep.join(fmt(c) for c in r) + "\n" for r in rows)
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 20)) == 0:
        data = draw(st.binary(max_size=40)) + data
    opts = _often(
        draw,
        st.just({}),
        st.fixed_dictionaries(
            {},
            optional={
                "id_col": st.sampled_from([None, "unique_id", "y", "nope"]),
                "time_col": st.sampled_from(["ds", "y", "nope"]),
                "value_cols": st.sampled_from([None, ["y"], ["y", "z"], ["ds"], []]),
                "duplicates": st.sampled_from(["error", "mean"]),
                "format": st.sampled_from(["long", "wide"]),
                "time_unit": st.sampled_from([None, "h", "s", "D", "fortnight"]),
            },
        ),
        one_in=3,
    )
    return data, opts


def _model_loss_is_finite(table, transform) -> None:
    """A real, untrained model's loss on the whole table: the data layer's promise (finite, in float32 range)."""
    prepared = transform.make_batch(table)
    module = ForecastingModule(
        model="ode_rnn", input_dim=table.num_channels, evolution="gru_flow", latent_dim=4, hidden_dim=8
    )
    with torch.no_grad():
        loss, _ = module.model.loss(prepared.batch)
    assert torch.isfinite(loss), (loss, table.values, table.times)


@pytest.mark.slow
@SLOW_OK
@given(csv_files(), st.sampled_from(["standard", "minmax", "robust", "none"]))
def test_csv_reader_gives_a_table_or_one_line_error(tmp_path_factory, case, scaler):
    data, opts = case
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    path.write_bytes(data)
    try:
        table = read_series(path, **opts)
    except TSNeuralODEError as err:
        assert "\n" not in str(err).strip() and str(path) in str(err) or "=" in str(err), str(err)
        event(f"read: {type(err).__name__}")
        return
    # a table keeps its promises: finite times increasing within each series, observed values finite
    assert np.isfinite(table.times).all()
    for s in range(table.n_series):
        t = table.times[table.offsets[s] : table.offsets[s + 1]]
        assert (np.diff(t) > 0).all()
    assert np.isfinite(table.values[table.mask]).all() and table.mask.any(axis=1).all()
    try:
        transform = SeriesTransform.fit(table, scaler=scaler)
    except TSNeuralODEError as err:
        assert "\n" not in str(err).strip()
        event(f"transform: {type(err).__name__}")
        return
    _model_loss_is_finite(table, transform)
    event("table, transform and a finite loss")


@pytest.mark.slow
@SLOW_OK
@given(st.data())
def test_dataframe_ids_and_values_of_every_type(data):
    """DataFrames hold what CSVs cannot: ids of several Python types in one column, Timestamps, None, objects."""
    n = data.draw(st.integers(1, 8))
    ids = data.draw(
        st.lists(
            st.one_of(
                st.integers(-3, 3),
                st.sampled_from(["a", "b", "1"]),
                st.floats(-2, 2),
                st.booleans(),
                st.none(),
                st.just(pd.Timestamp("2024-01-01")),
            ),
            min_size=n,
            max_size=n,
        )
    )
    ds = data.draw(st.lists(st.one_of(st.integers(0, 5), NUMBERS, WORDS, DATETIMES), min_size=n, max_size=n))
    y = data.draw(st.lists(st.one_of(NUMBERS, WORDS, st.none()), min_size=n, max_size=n))
    df = pd.DataFrame(
        {"unique_id": pd.Series(ids, dtype=object), "ds": pd.Series(ds, dtype=object), "y": pd.Series(y, dtype=object)}
    )
    try:
        table = read_series(df)
        transform = SeriesTransform.fit(table)
    except TSNeuralODEError as err:
        assert "\n" not in str(err).strip()
        return
    _model_loss_is_finite(table, transform)


# -- forecast queries -------------------------------------------------------------------------------------------------
def _forecaster(history: pd.DataFrame) -> Forecaster:
    """A real, untrained tiny model with a transform fitted on ``history`` (queries are what is tested here)."""
    table = read_series(history)
    torch.manual_seed(0)
    module = ForecastingModule(
        model="latent_ode", evolution="coupling_flow", latent_dim=4, hidden_dim=8, eval_samples=2
    )
    return Forecaster(module, SeriesTransform.fit(table), {})


NUMERIC_HISTORY = pd.DataFrame(
    {
        "unique_id": ["a"] * 4 + ["b"] * 3,
        "ds": [4000.0, 4010.5, 4020.25, 4040.0, 3990.0, 4001.0, 4045.0],
        "y": [0.1, 0.3, -0.2, 0.5, 1.0, 0.7, 0.9],
    }
)
DATETIME_HISTORY = pd.DataFrame(
    {
        "unique_id": ["a"] * 4 + ["b"] * 3,
        "ds": [
            "2024-01-08T00:15:00+01:00",
            "2024-01-08T03:02:00+01:00",
            "2024-01-09T11:00:00+01:00",
            "2024-01-10T00:00:01.123456789+01:00",
            "2024-01-07T22:00:00+01:00",
            "2024-01-08T06:30:00+01:00",
            "2024-01-10T12:00:00+01:00",
        ],
        "y": [18.2, 18.9, 17.5, 19.0, 21.0, 20.4, 20.9],
    }
)


@pytest.fixture(scope="module")
def forecasters():
    return {
        "numeric": (_forecaster(NUMERIC_HISTORY), NUMERIC_HISTORY),
        "datetime": (_forecaster(DATETIME_HISTORY), DATETIME_HISTORY),
    }


DURATIONS = st.one_of(
    NUMBERS,
    st.sampled_from(["12h", "2D", "-1D", "0h", "abc", "", "1e400", "nan", "30min", "1000000D", "P1D", "3", "-3"]),
    st.just(pd.Timedelta("6h")),
    st.booleans(),
    st.none(),
)
QUERY_TIMES = st.one_of(
    NUMBERS,
    WORDS,
    DATETIMES,
    st.just(pd.NaT),
    st.none(),
    st.sampled_from(
        [4049.0, 4040.0, 4000.0, 5000.5, "2024-01-11T00:00:00+01:00", pd.Timestamp("2024-02-01 12:00", tz="UTC")]
    ),
)


@st.composite
def queries(draw, kind: str):
    """Keyword arguments of one ``Forecaster.predict`` query: mostly well-formed for the data's time axis, with
    wrong types, extremes and contradictions mixed in."""
    good_step = st.floats(0.01, 50) if kind == "numeric" else st.sampled_from(["1h", "6h", "30min", "1D", 3.5])
    good_time = (
        st.floats(3990, 4200)
        if kind == "numeric"
        else st.builds(lambda h: pd.Timestamp("2024-01-10T12:00:00+01:00") + pd.Timedelta(hours=h), st.floats(0, 500))
    )
    mode = draw(st.sampled_from(["horizon+freq", "horizon+num_points", "times", "times per series", "anything"]))
    q: dict = {}
    if mode == "anything":
        q = dict(
            horizon=draw(DURATIONS),
            freq=draw(DURATIONS),
            num_points=draw(st.one_of(st.none(), NUM_POINTS)),
            times=draw(st.one_of(st.none(), st.lists(QUERY_TIMES, max_size=5), QUERY_TIMES)),
        )
    elif mode.startswith("horizon"):
        q["horizon"] = _often(draw, good_step.map(lambda x: x * 4 if isinstance(x, float) else x), DURATIONS, 5)
        if mode == "horizon+freq":
            q["freq"] = _often(draw, good_step, DURATIONS, 5)
        else:
            q["num_points"] = _often(draw, st.integers(1, 12), NUM_POINTS, 5)
    else:
        times = draw(
            st.lists(
                st.one_of(good_time, good_time, QUERY_TIMES) if draw(st.integers(0, 3)) == 0 else good_time,
                min_size=0 if draw(st.integers(0, 9)) == 0 else 1,
                max_size=6,
            )
        )
        if mode == "times per series" and times:
            ids = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=len(times), max_size=len(times)))
            times = pd.DataFrame({"unique_id": ids, "ds": times})
        q["times"] = times
    q["series"] = _often(draw, st.just(None), st.sampled_from([["a"], ["b", "a"], ["zz"], [1], []]), 4)
    return q


NUM_POINTS = st.one_of(st.integers(-2, 12), st.sampled_from([10**9, 2.5, "4", "x", True]))


@pytest.mark.slow
@SLOW_OK
@given(st.data(), st.sampled_from(["numeric", "datetime"]))
def test_forecast_queries_give_a_forecast_or_one_line_error(forecasters, data, kind):
    fc, hist = forecasters[kind]
    q = data.draw(queries(kind))
    try:
        out = fc.predict(hist, num_samples=3, level=[80], **q)
    except TSNeuralODEError as err:
        assert "\n" not in str(err).strip(), str(err)
        event(f"{kind}: {type(err).__name__}")
        return
    event(f"{kind}: a forecast")
    assert len(out) and np.isfinite(out[[c for c in out.columns if c.startswith(fc.name)]].to_numpy()).all()
    times = q.get("times")
    if kind == "numeric" and isinstance(times, (list, pd.DataFrame)) and len(times):
        asked = times["ds"] if isinstance(times, pd.DataFrame) else times
        assert set(out["ds"].tolist()) <= {float(t) for t in asked}  # exactly the numbers passed


@pytest.fixture(scope="module")
def saved_models(forecasters, tmp_path_factory):
    """{kind: (model directory, history CSV)} for the command line."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind, (fc, hist) in forecasters.items():
        hist.to_csv(root / f"{kind}.csv", index=False)
        out[kind] = (fc.save(root / f"{kind}_model"), root / f"{kind}.csv")
    return out


CLI_WORDS = st.sampled_from(
    [
        "12",
        "2.5",
        "-1",
        "0",
        "1e400",
        "nan",
        "inf",
        "12h",
        "-1D",
        "2D",
        "abc",
        "",
        "--",
        "-x",
        "4049.0",
        "2024-01-11T00:00:00+01:00",
        "2024-13-45",
        "3000-01-01",
        "1e-300",
        "٣",
    ]
)


@pytest.mark.slow
@settings(SLOW_OK, max_examples=25)  # each example loads the model and reads the CSV
@given(
    kind=st.sampled_from(["numeric", "datetime"]),
    base=st.booleans(),
    opts=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "--horizon",
                    "--freq",
                    "--num_points",
                    "--times",
                    "--level",
                    "--quantiles",
                    "--series",
                    "--num_samples",
                    "--batch_size",
                    "--seed",
                    "--plot_history",
                    "--bogus",
                ]
            ),
            st.lists(CLI_WORDS, min_size=0, max_size=3),
        ),
        max_size=3,
    ),
)
def test_forecast_command_line_gives_a_file_or_one_line(saved_models, tmp_path_factory, capfd, kind, base, opts):
    model, csv = saved_models[kind]
    out = tmp_path_factory.mktemp("fc") / "f.csv"
    argv = [
        "forecast",
        "--model",
        str(model),
        "--data.path",
        str(csv),
        "--out",
        str(out),
        "--plots",
        "false",
        "--progress",
        "false",
        "--num_samples",
        "2",
    ]
    if base:  # a valid query, which the random options below may override or contradict
        argv += ["--horizon", "12" if kind == "numeric" else "12h", "--num_points", "3"]
    for flag, values in opts:
        argv += [flag, *values]
    rc = main(argv)
    err = capfd.readouterr().err
    event(f"{kind}: exit {rc}")
    assert rc in (0, 2), err
    if rc == 0:
        assert out.is_file()
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("ts-neuralode"), err


# -- exact round trips -----------------------------------------------------------------------------------------------
def test_numeric_query_times_come_back_exactly_as_passed(forecasters, tmp_path):
    fc, hist = forecasters["numeric"]
    asked = [4049.0, 4041.1, 4045.000000000001, 4100.3]
    out = fc.predict(hist, times=asked, num_samples=2)
    for _, g in out.groupby("unique_id"):
        assert g["ds"].tolist() == sorted(asked)  # == on floats: no 4049.0000000000005
    # per-series times (a DataFrame) too, and through a CSV written by 'forecast' and read back
    per = pd.DataFrame({"unique_id": ["a", "b", "b"], "ds": [4049.0, 4045.1, 4046.7]})
    joined = per.merge(fc.predict(hist, times=per, num_samples=2), on=["unique_id", "ds"], how="inner")
    assert len(joined) == len(per)
    hist.to_csv(tmp_path / "h.csv", index=False)
    model_dir = fc.save(tmp_path / "model")
    assert (
        main(
            [
                "forecast",
                "--model",
                str(model_dir),
                "--data.path",
                str(tmp_path / "h.csv"),
                "--times",
                "4049.0",
                "4041.1",
                "--out",
                str(tmp_path / "f.csv"),
                "--plots",
                "false",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    back = pd.read_csv(tmp_path / "f.csv")
    assert sorted(set(back["ds"])) == [4041.1, 4049.0]


@pytest.mark.slow
@SLOW_OK
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=2, max_size=12, unique=True))
def test_history_and_query_times_round_trip_exactly(times):
    hist = pd.DataFrame({"unique_id": "s", "ds": times, "y": np.arange(len(times), dtype=float)})
    table = read_series(hist)
    assert sorted(table_to_long(table)["ds"].tolist()) == sorted(times)
    fc = _forecaster(hist)
    try:
        out = fc.predict(hist, times=times, num_samples=1, level=None)
    except TSNeuralODEError:  # e.g. a query too many model time units away: a one-line refusal is fine
        return
    assert out["ds"].tolist() == sorted(times)


def test_history_datetimes_come_back_exactly_even_decades_apart(tmp_path):
    stamps = [
        "1990-01-01T00:00:00.000000001+01:00",
        "2024-06-30T23:59:59.999999999+01:00",
        "2060-02-29T12:34:56.789012345+01:00",
    ]
    p = tmp_path / "d.csv"
    pd.DataFrame({"unique_id": "s", "ds": stamps, "y": [1.0, 2.0, 3.0]}).to_csv(p, index=False)
    table = read_series(p, time_unit="D")
    got = [t.isoformat() for t in table_to_long(table)["ds"]]
    assert got == [pd.Timestamp(s).isoformat() for s in stamps]  # to the nanosecond, offset kept


@pytest.mark.parametrize("layout", ["padded", "union"])
@pytest.mark.parametrize("kind", ["numeric", "datetime"])
def test_predict_loop_times_come_back_as_read(kind, layout, tmp_path):
    """Lightning's predict loop forecasts at each series' own times; mapped back (``DataModule.to_frame``) they are
    the times of the file, although the model saw them as float32."""
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

    if kind == "numeric":
        ds = [4000.0, 4010.1, 4020.000000000001, 4049.0, 3990.3, 4001.7, 4045.123456789]
    else:
        ds = [
            "2024-01-08T00:15:00.000000001+01:00",
            "2024-03-08T03:02:00+01:00",
            "2025-01-09T11:00:00.5+01:00",
            "2031-01-10T00:00:01.123456789+01:00",
            "2024-01-07T22:00:00+01:00",
            "2026-01-08T06:30:00+01:00",
            "2030-12-10T12:00:00.000000007+01:00",
        ]
    p = tmp_path / "h.csv"
    pd.DataFrame({"unique_id": ["a"] * 4 + ["b"] * 3, "ds": ds, "y": np.arange(7.0)}).to_csv(p, index=False)
    dm = IrregularTimeSeriesDataModule(path=str(p), layout=layout, val_fraction=0, test_fraction=0, time_unit="D")
    module = ForecastingModule(model="ode_rnn", evolution="gru_flow", input_dim=1, latent_dim=4, hidden_dim=8)
    frames = []
    for batch in dm.predict_dataloader():
        with torch.no_grad():
            fc = module.predict_step(batch, 0)
        frames.append(dm.to_frame(batch.series_idx, batch.times, fc.mean))
    out = pd.concat(frames)
    read = pd.read_csv(p)
    if kind == "datetime":
        read["ds"] = [pd.Timestamp(v) for v in read["ds"]]
    for sid, g in read.groupby("unique_id"):
        got = set(out.loc[out["unique_id"] == sid, "ds"].tolist())
        assert set(g["ds"].tolist()) <= got, (sid, sorted(set(g["ds"]) - got))


# -- a corpus of bad files through the CLI ---------------------------------------------------------------------------
def _sine(n_series=6, n_points=8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(n_series):
        for t in np.sort(rng.choice(100, n_points, replace=False)):
            rows.append((f"s{s}", float(t), math.sin(t / 10) + s))
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y"])


def _with(value, row=3, col="y") -> pd.DataFrame:
    df = _sine().astype({col: object})
    df.loc[row, col] = value
    return df


SPLIT = ["--data.val_fraction", "0.34", "--data.test_fraction", "0.34"]  # 6 series: 2 train, 2 val, 2 test


def _in_held_out_series(value) -> pd.DataFrame:
    """``value`` in one row of a test series (the split of --data.seed 0 with SPLIT's fractions): training series
    alone set the scale, so the value is judged against it."""
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

    df = _sine()
    dm = IrregularTimeSeriesDataModule(df=df, val_fraction=0.34, test_fraction=0.34)
    held_out = dm.split_ids("test")[0]
    df.loc[df.index[df["unique_id"] == held_out][2], "y"] = value
    return df


def _extremes(a: float, b: float, col: str = "y") -> pd.DataFrame:
    """``a`` and ``b`` in the first two rows of ``col`` (one series)."""
    df = _sine()
    df.loc[0, col], df.loc[1, col] = a, b
    return df


# name -> (file content (DataFrame, str or bytes), expected: "error" or "fit", substrings of the error line[, options])
# "fit": the value is handled (e.g. one huge value in a training series sets the scale) and the fit works.
CORPUS = {
    "1e308 in a held-out series": (_in_held_out_series(1e308), "error", ["column 'y'", "line", "float32"]),
    "1e308 in a training series": (_with(1e308, 3), "fit", []),
    "huge values everywhere (one scale)": (_sine().assign(y=lambda d: d.y * 1e306), "fit", []),
    "tiny values everywhere (subnormal)": (_sine().assign(y=lambda d: d.y * 1e-310), "fit", []),
    "-1.7e308 and 1.7e308, standard scaler": (_extremes(-1.7e308, 1.7e308), "fit", []),
    "-1.7e308 and 1.7e308, minmax scaler (range overflows)": (
        _extremes(-1.7e308, 1.7e308),
        "error",
        ["column 'y'", "float64", "rescale"],
        ["--data.scaler", "minmax"],
    ),
    "inf value": (_with(float("inf")), "error", ["column 'y'", "line 5", "infinite"]),
    "1e309 written as text": ("unique_id,ds,y\na,1,1\na,2,1e309\nb,1,1\nb,2,2\n", "error", ["line 3", "infinite"]),
    "NaN time": (_with(float("nan"), 2, "ds"), "error", ["column 'ds'", "line 4", "missing"]),
    "time 1e308 in one series (its own scale)": (_with(1e308, 2, "ds"), "fit", []),
    "times -1e308 and 1e308 (span overflows)": (_extremes(-1e308, 1e308, "ds"), "error", ["column 'ds'", "time"]),
    "empty file": ("", "error", ["empty"]),
    "header only": ("unique_id,ds,y\n", "error", ["no data rows"]),
    "semicolon separated": ("unique_id;ds;y\na;1;1\na;2;2\n", "error", ["';'", "comma-separated"]),
    "latin-1 bytes": ("unique_id,ds,y\na,1,1\na,2,2\nb,1,\xe9\n".encode("latin-1"), "error", ["UTF-8"]),
    "utf-16": ("unique_id,ds,y\na,1,1\na,2,2\n".encode("utf-16"), "error", []),
    "binary garbage": (bytes(range(256)) * 4, "error", []),
    "duplicate (id, time)": ("unique_id,ds,y\na,1,1\na,1,2\na,2,2\n", "error", ["duplicate", "line 3"]),
    "non-numeric value": (_with("12,5"), "error", ["column 'y'", "line 5", "not a number"]),
    "mixed naive and aware times": (
        "unique_id,ds,y\na,2024-01-01 00:00,1\na,2024-01-01 01:00+02:00,2\n",
        "error",
        ["naive"],
    ),
    "times past 2262": ("unique_id,ds,y\na,2024-01-01,1\na,3000-01-01,2\n", "error", ["column 'ds'"]),
    "one point per series": ("unique_id,ds,y\na,1,1\nb,1,2\n", "error", ["fewer than 2"]),
    "value column all empty": ("unique_id,ds,y\na,1,\na,2,\n", "error", ["no observed values"]),
    "unsorted times, ids of several types": (
        "unique_id,ds,y\n2,5,1\nb,1,2\n2,1,3\nb,3,1\n1.5,2,1\n1.5,9,2\na,3,1\na,1,2\n",
        "fit",
        [],
    ),
}


def _write(tmp_path: Path, content) -> Path:
    p = tmp_path / "bad.csv"
    if isinstance(content, pd.DataFrame):
        content.to_csv(p, index=False)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_corpus_through_fit(name, tmp_path, capfd):
    content, expect, parts, *options = CORPUS[name]
    p = _write(tmp_path, content)
    rc = main(
        [
            "fit",
            "--data.path",
            str(p),
            *TINY_FIT_ARGS,
            "--trainer.max_epochs",
            "1",
            "--tracking",
            "false",
            *SPLIT,
            "--checkpoint_dir",
            str(tmp_path / "ck"),
            *(options[0] if options else []),
        ]
    )
    err = capfd.readouterr().err
    if expect == "fit":
        assert rc == 0, err[-2000:]
        assert (tmp_path / "ck" / "model" / "config.json").is_file()
        return
    lines = [ln for ln in err.splitlines() if ln.startswith("ts-neuralode: error:")]
    assert rc == 2 and len(lines) == 1, err[-2000:]
    for part in parts:
        assert part in lines[0], (name, lines[0])


@pytest.mark.slow
def test_bad_input_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    p = _write(tmp_path, _in_held_out_series(1e308))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ts_neuralode.cli",
            "fit",
            "--data.path",
            str(p),
            *TINY_FIT_ARGS,
            *SPLIT,
            "--tracking",
            "false",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("ts-neuralode: error: ") and "bad.csv" in lines[0], proc.stderr

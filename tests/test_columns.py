"""Inputs that used to pass silently: mask / id columns picked as targets, float ids, polars and pyarrow frames,
extreme values, and the one-line column summary at the start of a fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ts_neuralode.data.io import read_series
from ts_neuralode.errors import DataError


def _bxlator_like(n_series: int = 4, n: int = 12, seed: int = 0) -> pd.DataFrame:
    """The column layout of GRU-ODE-Bayes' BXLator CSV: float ids, value/mask pairs and a covariate."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        t = np.sort(rng.choice(500, n, replace=False)) / 10.0
        m1, m2 = rng.integers(0, 2, n).astype(float), np.ones(n)
        m1[0] = 1.0
        rows.append(
            pd.DataFrame(
                {
                    "ID": float(s),
                    "Time": t,
                    "Value_1": np.where(m1 == 1, rng.normal(1, 0.1, n), 0.0),
                    "Value_2": rng.normal(5, 0.5, n),
                    "Mask_1": m1,
                    "Mask_2": m2,
                    "Cov": 0.0,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_masks_given_no_role_stop_the_read_with_one_line_naming_them(tmp_path):
    df = _bxlator_like()
    df.to_csv(tmp_path / "bx.csv", index=False)
    with pytest.raises(DataError) as err:
        read_series(tmp_path / "bx.csv", id_col="ID", time_col="Time")
    msg = str(err.value)
    assert "Mask_1, Mask_2 look like 0/1 observation masks" in msg and "mask_cols=[Mask_1, Mask_2]" in msg
    assert "value_cols=[Value_1, Value_2]" in msg and "\n" not in msg
    # the fix the line names reads the data, with the masks as masks and the covariate left out
    t = read_series(
        tmp_path / "bx.csv",
        id_col="ID",
        time_col="Time",
        value_cols=["Value_1", "Value_2"],
        mask_cols=["Mask_1", "Mask_2"],
    )
    assert t.channel_names == ["Value_1", "Value_2"] and t.extra["columns"]["ignored"] == ["Cov"]
    assert int(t.mask[:, 0].sum()) == int(df["Mask_1"].sum())
    # an id-like integer column among the default targets stops the read too
    d2 = pd.DataFrame({"unique_id": ["a"] * 4, "ds": range(4), "v": [1.0, 2, 3, 4], "patient_id": [7] * 4})
    with pytest.raises(DataError, match="patient_id look like series ids"):
        read_series(d2)
    # named explicitly, the user decides: no error
    assert read_series(d2, value_cols=["v", "patient_id"]).num_channels == 2


def test_a_fit_on_bxlator_with_only_id_and_time_stops_naming_the_masks(tmp_path, capfd):
    from ts_neuralode.cli import main

    _bxlator_like().to_csv(tmp_path / "bx.csv", index=False)
    rc = main(
        [
            "fit",
            "--data.path",
            str(tmp_path / "bx.csv"),
            "--data.id_col",
            "ID",
            "--data.time_col",
            "Time",
            "--tracking",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    err = [ln for ln in capfd.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "Mask_1, Mask_2" in err[0], err


def test_whole_number_float_ids_come_back_as_integers():
    df = _bxlator_like()
    t = read_series(df, id_col="ID", time_col="Time", value_cols=["Value_2"])
    assert [str(i) for i in t.ids] == ["0", "1", "2", "3"]
    frac = df.assign(ID=df["ID"] + 0.5)  # real fractions stay floats
    assert [str(i) for i in read_series(frac, id_col="ID", time_col="Time", value_cols=["Value_2"]).ids][0] == "0.5"


def test_an_extreme_value_is_a_warning_naming_file_column_and_line(tmp_path):
    df = pd.DataFrame(
        {
            "unique_id": ["a"] * 30 + ["b"] * 30,
            "ds": list(range(30)) * 2,
            "y": np.r_[np.sin(np.arange(30)), 100 + np.cos(np.arange(30))],
        }
    )
    df.loc[40, "y"] = 1e308
    df.to_csv(tmp_path / "x.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_series(tmp_path / "x.csv")
    msgs = [str(w.message) for w in caught if "far beyond" in str(w.message)]
    assert len(msgs) == 1 and "x.csv" in msgs[0] and "column 'y'" in msgs[0] and "line 42" in msgs[0], msgs
    with warnings.catch_warnings(record=True) as caught:  # an ordinary series: no warning
        warnings.simplefilter("always")
        read_series(df.drop(index=40))
    assert not [w for w in caught if "far beyond" in str(w.message)]


def test_polars_and_pyarrow_frames_are_read_like_pandas(dt_fitted, dt_csv):
    pa = pytest.importorskip("pyarrow")
    from ts_neuralode.api.forecaster import Forecaster

    fc = Forecaster.load(dt_fitted["model_dir"])
    hist = pd.read_csv(dt_csv)
    want = fc.predict(hist, horizon="6h", num_points=2, num_samples=4)
    got = fc.predict(pa.Table.from_pandas(hist), horizon="6h", num_points=2, num_samples=4)
    pd.testing.assert_frame_equal(got, want)
    pl = pytest.importorskip("polars")
    got = fc.predict(pl.from_pandas(hist), horizon="6h", num_points=2, num_samples=4)
    pd.testing.assert_frame_equal(got, want)
    assert read_series(pl.from_pandas(hist)).n_series == hist["unique_id"].nunique()


def test_every_fit_starts_with_one_line_saying_what_each_column_is(dt_fitted):
    lines = [ln for ln in dt_fitted["output"].splitlines() if ln.startswith("data ")]
    assert len(lines) == 1, dt_fitted["output"][-2000:]
    assert "targets y" in lines[0] and "masks none" in lines[0] and "covariates none" in lines[0]
    assert "ignored site" in lines[0]


def test_forecast_validation_that_cannot_be_built_is_an_error_naming_the_series():
    """Split by series, every validation series shorter than the horizon: no silent fit without validation."""
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

    df = pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{k}" for k in range(10)], 8),
            "ds": np.tile(np.arange(8.0), 10),
            "y": np.sin(np.arange(80.0)),
        }
    )
    dm = IrregularTimeSeriesDataModule(
        df=df, task="forecast", split_by="series", horizon=10.0, val_fraction=0.2, test_fraction=0.0
    )
    with pytest.raises(DataError) as err:
        dm.setup()
    msg = str(err.value)
    assert "none of the 2 validation series" in msg and "--data.val_fraction 0" in msg and "\n" not in msg
    val = [f"s{k}" for k in range(10) if f"s{k}" in msg]
    assert len(val) == 2


def test_the_covariate_scaler_sees_nothing_after_train_end():
    from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

    t = np.arange(0.0, 40.0)
    df = pd.concat(
        [
            pd.DataFrame({"unique_id": f"s{k}", "ds": t, "y": np.sin(t + k), "u": np.where(t <= 20.0, 1.0, 100.0)})
            for k in range(3)
        ],
        ignore_index=True,
    )
    dm = IrregularTimeSeriesDataModule(df=df, task="forecast", horizon=5.0, train_end=20.0, future_cols=["u"])
    dm.setup()
    assert dm.covariates["center"] == [1.0]  # the 100s after train_end are not in the scaler

"""Parquet wherever CSV is accepted, chosen by the file's extension: data files in, forecasts and data sets out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ts_neuralode.cli import main
from ts_neuralode.data.io import read_series


@pytest.fixture(scope="module")
def parquet_files(dt_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet")
    df = pd.read_csv(dt_csv)
    df.to_parquet(out / "text_times.parquet", index=False)  # ISO strings, as in the CSV
    df.assign(ds=pd.to_datetime(df["ds"])).to_parquet(out / "typed_times.parquet", index=False)  # datetime64[ns, tz]
    return out


def test_a_parquet_file_reads_as_its_csv(dt_csv, parquet_files):
    ref = read_series(str(dt_csv), time_unit="h")
    for name in ("text_times.parquet", "typed_times.parquet"):
        got = read_series(str(parquet_files / name), time_unit="h")
        assert list(got.ids) == list(ref.ids) and np.array_equal(got.offsets, ref.offsets)
        assert np.array_equal(got.time_ns, ref.time_ns) and np.allclose(got.values, ref.values, equal_nan=True)


def test_forecast_reads_and_writes_parquet(dt_fitted, dt_csv, parquet_files, tmp_path):
    q = ["--horizon", "6h", "--num_points", "3", "--plots", "false", "--progress", "false"]
    assert (
        main(
            [
                "forecast",
                "--model",
                str(dt_fitted["model_dir"]),
                "--data.path",
                str(dt_csv),
                "--out",
                str(tmp_path / "f.csv"),
                *q,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "forecast",
                "--model",
                str(dt_fitted["model_dir"]),
                "--data.path",
                str(parquet_files / "typed_times.parquet"),
                "--out",
                str(tmp_path / "f.parquet"),
                *q,
            ]
        )
        == 0
    )
    csv, pq = pd.read_csv(tmp_path / "f.csv"), pd.read_parquet(tmp_path / "f.parquet")
    assert list(pq.columns) == list(csv.columns) and str(pq["ds"].dt.tz) == "UTC+01:00"
    assert (pq["ds"] == pd.to_datetime(csv["ds"])).all()
    assert np.allclose(pq.iloc[:, 2:].to_numpy(), csv.iloc[:, 2:].to_numpy())


@pytest.mark.slow
def test_generate_writes_parquet_and_a_bad_parquet_is_one_line(tmp_path, capfd):
    from ts_neuralode.cli.main import generate_main as cli_main

    assert cli_main(["sine", "--out", str(tmp_path / "s.parquet"), "--n_series", "3", "--n_points", "10"]) == 0
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert list(df.columns) == ["unique_id", "ds", "y"] and len(df) == 30
    (tmp_path / "bad.parquet").write_text("unique_id,ds,y\na,1,2\n")
    rc = main(["test", "--model.model", "locf", "--data.path", str(tmp_path / "bad.parquet")])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and "not a readable Parquet file" in err[-1], err

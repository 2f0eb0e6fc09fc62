"""A partitioned Parquet folder as ``--data.path``: streamed in shards of whole series
(ts_neuralode.data.parquet_stream).

The folder and the equivalent single CSV give the same fitted transform, the same split and the same batches; two
ranks read disjoint series that cover the split; bad folders are one line; a fit from a folder works from the CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("pyarrow")

from ts_neuralode.cli import main  # noqa: E402
from ts_neuralode.data import parquet_stream  # noqa: E402
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule  # noqa: E402
from ts_neuralode.data.generators import generate  # noqa: E402
from ts_neuralode.data.parquet_stream import ParquetFolderDataModule  # noqa: E402
from ts_neuralode.data.scalers import merge_scaler  # noqa: E402
from ts_neuralode.errors import ConfigError, DataError  # noqa: E402

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "gru_flow.yaml")

FIELDS = ("times", "values", "obs_mask", "target_mask", "time_mask", "cutoff")


def write_parts(df: pd.DataFrame, folder, n_files: int = 4, split_series: bool = False) -> list[str]:
    """``df`` as ``n_files`` shuffled part files under hive folders; ``split_series``: each series' rows spread
    over two files (a series may span files)."""
    ids = pd.Index(sorted(df["unique_id"].unique()))
    code = ids.get_indexer(df["unique_id"])
    if split_series:
        code = code + (df.groupby("unique_id").cumcount().to_numpy() % 2)
    paths = []
    for k in range(n_files):
        part = df[code % n_files == k].sample(frac=1.0, random_state=k)
        (folder / f"bucket={k % 2}").mkdir(parents=True, exist_ok=True)
        path = folder / f"bucket={k % 2}" / f"part-{k}.parquet"
        part.to_parquet(path, index=False)
        paths.append(str(path))
    return paths


@pytest.fixture()
def small_shards(monkeypatch):
    monkeypatch.setattr(ParquetFolderDataModule, "shard_rows", 150)  # several shards out of ~1,200 rows


@pytest.fixture(scope="module")
def ou(tmp_path_factory):
    """60 double_ou series (2 channels, partly observed) as one CSV and as a folder of 4 part files."""
    root = tmp_path_factory.mktemp("ou")
    df = generate("double_ou", n_series=60, seed=1)
    df.to_csv(root / "one.csv", index=False)
    write_parts(df, root / "folder", split_series=True)
    return root


def by_series(loader) -> dict:
    out = {}
    for b in loader:
        assert b.batch_size == 1
        out[int(b.series_idx[0])] = b
    return out


def assert_same_batches(a, b, names=("train", "val", "test")):
    for name in names:
        x, y = by_series(getattr(a, f"{name}_dataloader")()), by_series(getattr(b, f"{name}_dataloader")())
        assert x.keys() == y.keys() and len(x) > 0, (name, len(x), len(y))
        for k in x:
            for f in FIELDS:
                assert torch.allclose(getattr(x[k], f), getattr(y[k], f), rtol=1e-6, atol=1e-7), (name, k, f)


def assert_same_transform(a, b):
    sa, sb = a.transform.state_dict(), b.transform.state_dict()
    for key in ("center", "scale"):
        np.testing.assert_allclose(sb[key], sa[key], rtol=1e-10)
    assert {k: v for k, v in sa.items() if k not in ("center", "scale")} == {
        k: v for k, v in sb.items() if k not in ("center", "scale")
    }


@pytest.mark.parametrize("scaler", ["standard", "minmax"])
def test_folder_gives_the_csv_transform_split_and_batches(ou, small_shards, scaler):
    opts = dict(task="extrapolation", cut=0.5, layout="padded", batch_size=1, shuffle=False, scaler=scaler)
    csv = IrregularTimeSeriesDataModule(path=str(ou / "one.csv"), **opts)
    folder = IrregularTimeSeriesDataModule(path=str(ou / "folder"), **opts)
    assert isinstance(folder, ParquetFolderDataModule)
    folder.setup("fit")
    assert len(folder.shards) >= 4  # several shards, and series spanning two files each
    assert_same_transform(csv, folder)
    assert folder.series_ids == csv.series_ids
    for name in ("train", "val", "test"):
        assert folder.split_ids(name) == csv.split_ids(name)
    assert folder.num_channels == csv.num_channels == 2
    assert_same_batches(csv, folder)


def test_forecast_split_by_time_with_datetimes(tmp_path, dt_csv, monkeypatch):
    """Datetimes with an offset: the folder's time codec (the earliest timestamp of all files) and the scaler fitted
    on the training part of each series' time axis are the CSV's; validation windows are the same."""
    df = pd.read_csv(dt_csv)
    write_parts(df, tmp_path / "f", n_files=3)
    opts = dict(task="forecast", horizon="6h", layout="padded", batch_size=1, shuffle=False, time_unit="h")
    csv = IrregularTimeSeriesDataModule(path=str(dt_csv), **opts)
    monkeypatch.setattr(ParquetFolderDataModule, "shard_rows", 20)
    folder = IrregularTimeSeriesDataModule(path=str(tmp_path / "f"), **opts)
    folder.setup("fit")
    assert len(folder.shards) >= 3
    assert_same_transform(csv, folder)
    assert folder.transform.codec.is_datetime
    assert folder.split_ids("val") == csv.split_ids("val")
    assert_same_batches(csv, folder, names=("val", "test"))
    assert folder.train_items_per_epoch == csv.train_items_per_epoch


def test_merge_scaler_equals_scikit_learn_on_all_values():
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 1000) * rng.uniform(0.5, 5.0)
    cuts = np.sort(rng.choice(np.arange(1, 1000), 30, replace=False))
    parts = np.split(x, cuts)
    n = np.array([[len(p)] for p in parts], float)
    mean = np.array([[p.mean()] for p in parts])
    m2 = np.array([[((p - p.mean()) ** 2).sum()] for p in parts])
    lo, hi = np.array([[p.min()] for p in parts]), np.array([[p.max()] for p in parts])
    c, s = merge_scaler("standard", n, mean, m2, lo, hi)
    ref = StandardScaler().fit(x[:, None])
    np.testing.assert_allclose([c[0], s[0]], [ref.mean_[0], ref.scale_[0]], rtol=1e-12)
    c, s = merge_scaler("minmax", n, mean, m2, lo, hi)
    ref = MinMaxScaler().fit(x[:, None])
    np.testing.assert_allclose([c[0], s[0]], [ref.data_min_[0], ref.data_range_[0]], rtol=1e-12)
    const = np.full((2, 1), 5.0)
    assert merge_scaler("standard", np.full((2, 1), 3.0), const, np.zeros((2, 1)), const, const)[1] == [1.0]


def test_two_ranks_read_disjoint_series_that_cover_the_split(ou, small_shards, monkeypatch):
    dm = IrregularTimeSeriesDataModule(path=str(ou / "folder"), task="extrapolation", layout="padded", batch_size=4)
    reads: list[set] = []
    real = parquet_stream.ParquetFolder.read

    def spy(self, shard, ids=None):
        df = real(self, shard, ids)
        reads.append(set(df["unique_id"]))
        return df

    monkeypatch.setattr(parquet_stream.ParquetFolder, "read", spy)
    for name in ("train", "val"):
        split = set(dm.split_ids(name))
        seen, lengths = [], []
        for rank in (0, 1):
            reads.clear()
            stream = dm.stream(name, rank=rank, world=2)
            got = [dm.series_ids[i] for b in stream for i in b.series_idx.tolist()]
            read = set().union(*reads)
            assert set(got) <= read <= split  # the rank read only series of its split, and batched what it read
            seen.append(read)
            lengths.append(len(stream))
            assert len(list(stream)) == len(stream)  # every epoch yields len() batches
        assert not seen[0] & seen[1], name  # disjoint
        assert seen[0] | seen[1] == split, name  # covering
        assert lengths[0] == lengths[1] > 0  # DDP: the same number of batches on every rank
    one = dm.stream("train", rank=0, world=1)
    assert {dm.series_ids[i] for b in one for i in b.series_idx.tolist()} == set(dm.split_ids("train"))


def test_training_order_changes_every_epoch_and_is_seeded(ou, small_shards):
    dm = IrregularTimeSeriesDataModule(path=str(ou / "folder"), task="extrapolation", layout="padded", batch_size=4)
    stream = dm.stream("train", 0, 1)
    first = [b.series_idx.tolist() for b in stream]
    second = [b.series_idx.tolist() for b in stream]
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))
    again = dm.stream("train", 0, 1)
    assert [b.series_idx.tolist() for b in again] == first


def test_bad_folders_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not data")
    with pytest.raises(DataError, match="holds no Parquet files"):
        IrregularTimeSeriesDataModule(path=str(empty)).setup()

    df = generate("sine", n_series=6, n_points=10, seed=0)
    no_id = tmp_path / "no_id"
    paths = write_parts(df, no_id, n_files=2)
    pd.read_parquet(paths[1]).drop(columns=["unique_id"]).to_parquet(paths[1], index=False)
    with pytest.raises(DataError, match=r"part-1\.parquet: missing id column 'unique_id'"):
        IrregularTimeSeriesDataModule(path=str(no_id)).setup()

    mixed = tmp_path / "mixed"
    paths = write_parts(df, mixed, n_files=2)
    pd.read_parquet(paths[1]).astype({"y": str}).to_parquet(paths[1], index=False)
    with pytest.raises(DataError, match=r"part-1\.parquet: its columns differ from .*part-0\.parquet \(column 'y'"):
        IrregularTimeSeriesDataModule(path=str(mixed)).setup()

    with pytest.raises(ConfigError, match="robust scaler is not supported"):
        IrregularTimeSeriesDataModule(path=str(mixed), scaler="robust")
    with pytest.raises(ConfigError, match=r"log scaler is not supported for a Parquet folder.*--data.scaler standard"):
        IrregularTimeSeriesDataModule(path=str(mixed), scaler="log")

    bad_time = tmp_path / "bad_time"
    paths = write_parts(df, bad_time, n_files=2)
    part = pd.read_parquet(paths[0])
    part["ds"] = part["ds"].astype(str)
    part.loc[part.index[3], "ds"] = "soon"
    part.to_parquet(paths[0], index=False)
    with pytest.raises(DataError, match=r"differ"):  # a string time column in one file only: mixed schemas
        IrregularTimeSeriesDataModule(path=str(bad_time)).setup()


def test_a_bad_value_names_the_part_file(tmp_path):
    df = generate("sine", n_series=6, n_points=10, seed=0).astype({"y": object})
    paths = write_parts(df.astype({"y": str}), tmp_path / "f", n_files=2)
    part = pd.read_parquet(paths[1])
    part.loc[part.index[2], "y"] = "n/a"
    part.to_parquet(paths[1], index=False)
    bad_cell = r"a shard of .*part-\d\.parquet.*, column 'y', row \d+: value 'n/a' is not a number"
    with pytest.raises(DataError, match=bad_cell):
        IrregularTimeSeriesDataModule(path=str(tmp_path / "f")).setup()


def test_cli_fit_from_a_folder_and_its_errors(ou, tmp_path, capfd):
    rc = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.path",
            str(ou / "folder"),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--model.hidden_dim",
            "16",
            "--tracking",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--checkpoint_dir",
            str(tmp_path / "ck"),
        ]
    )
    err = capfd.readouterr().err
    assert rc == 0, err[-3000:]
    assert "60 series, 1200 rows in 4 Parquet files" in err
    assert (tmp_path / "ck" / "model" / "weights.pt").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.path",
            str(empty),
            "--tracking",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "run2"),
        ]
    )
    lines = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and "holds no Parquet files" in lines[-1] and "Traceback" not in "\n".join(lines), lines[-5:]


def test_forecaster_fit_from_a_folder(ou, tmp_path):
    from ts_neuralode.api.forecaster import Forecaster

    opts = {"layout": "padded", "batch_size": 4, "task": "extrapolation"}
    fc = Forecaster.fit(
        str(ou / "folder"),
        "ode_rnn",
        data_options=opts,
        model_options={
            "latent_dim": 4,
            "hidden_dim": 8,
            "eval_samples": 2,
            "evolution": {"kind": "ode", "method": "rk4", "step_size": 0.25},
        },
        trainer={
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        output_dir=tmp_path,
        tracking=False,
    )
    csv = IrregularTimeSeriesDataModule(path=str(ou / "one.csv"), **opts)
    np.testing.assert_allclose(fc.transform.center, csv.transform.center, rtol=1e-10)
    assert fc.transform.channel_names == ["x1", "x2"]


@pytest.mark.slow
def test_ddp_two_processes_fit_from_a_folder(ou, tmp_path):
    """Two real DDP processes (gloo on CPU) stream their own series from the folder and finish the epoch together
    (a rank with one batch more or less than the other would hang the all-reduce)."""
    import subprocess
    import sys

    from conftest import subprocess_env

    cmd = [
        sys.executable,
        "-m",
        "ts_neuralode.cli",
        "fit",
        "--config",
        CONFIG,
        "--data.path",
        str(ou / "folder"),
        "--data.batch_size",
        "7",
        "--model.hidden_dim",
        "16",
        "--trainer.max_epochs",
        "2",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--tracking",
        "false",
        "--checkpoint_dir",
        str(tmp_path / "ck"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("best checkpoint:") == 1 and (tmp_path / "ck" / "model" / "weights.pt").is_file()

"""Data beyond memory: a partitioned Parquet folder streamed in shards of whole series.

``--data.path FOLDER`` (``ts-neuralode fit``, ``Forecaster.fit(FOLDER)``,
``IrregularTimeSeriesDataModule(path=FOLDER)``)
where FOLDER holds Parquet part files (``*.parquet`` / ``*.pq`` at any depth, hive ``key=value`` folders included;
names starting with ``.`` or ``_`` are skipped) gives a :class:`ParquetFolderDataModule`. It never holds the whole
frame. Three passes over the folder, all through :mod:`pyarrow.dataset` scanners that read only the needed columns,
batch by batch:

1. **ids**: each part file's series ids and row counts (the id column only). Series are grouped into *shards* of
   whole series of at most :attr:`ParquetFolderDataModule.shard_rows` rows, in the order of the file they first
   occur in, so a shard reads only the files that hold its series (a series may span files).
2. **scan** (one streaming pass): every shard goes through the reading and validation of a CSV
   (:func:`~ts_neuralode.data.io.read_series`) and the task preparation of the in-memory data module (an
   :class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule` on the shard's rows), which records per
   series what the split, the scaler and the time scale need: its training windows, whether it has a validation /
   test window, and the scaler's sufficient statistics (count, mean, squared deviations, min, max per channel) over
   exactly the rows the in-memory module fits on. The split (by series, seeded as in memory, or by time), the
   scaler (merged: the same mean and standard deviation as from the whole frame, up to float rounding) and the time
   scale and time codec are computed from those records.
3. **every epoch**: a :class:`ShardStream` (an ``IterableDataset``) reads one shard at a time again, only the
   series of its split that belong to this process, and yields the batches the in-memory module builds from those
   rows (with the folder's transform; a batch never mixes shards). Under DDP, rank ``r`` of ``N`` (from the
   trainer, else ``torch.distributed``) takes the ``r``-th of every ``N`` series of the split in id order, so the
   ranks read disjoint series that cover the split; every rank yields the same number of batches (the smallest,
   known from the scan, as DDP needs), so a rank may leave its last batch or two out of an epoch.

Memory: one shard's rows and the per-series records (a few numbers per series), not the frame. Every rank makes the
scan itself (it is deterministic, so all ranks agree on the split and the transform); only the epochs are divided.
A message about a bad cell names the shard's files and the row among the rows read for that shard. Not supported for a
folder (ConfigError, one line): covariates, the robust scaler (its quantiles need every value at once), the log
scaler, and Lightning's predict loop (forecast the files with ``ts-neuralode forecast``). ``num_workers`` is not used:
the shards are read in the training process.
"""

from __future__ import annotations

import inspect
import math
import warnings
from types import SimpleNamespace
from typing import NoReturn

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule, _FolderDispatch
from ts_neuralode.data.parquet_folder import SHARD_ROWS, ParquetFolder, ShardStream, _as_is
from ts_neuralode.data.parquet_scan import ShardModule, ShardRecords, shard_records
from ts_neuralode.data.scalers import merge_scaler, resolve_time_scale
from ts_neuralode.data.tasks import AUTO_MIN_BATCHES, positive_duration
from ts_neuralode.data.timecodec import TimeCodec
from ts_neuralode.data.transform import SeriesTransform
from ts_neuralode.errors import ConfigError, DataError

#: messages of the in-memory module about series left out of a split: the scan sums them up over the shards
_PER_SHARD_WARNINGS = r".*(too short for a .* forecast window|left out of the task).*"


class ParquetFolderDataModule(IrregularTimeSeriesDataModule):
    """:class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule` for a folder of Parquet part files,
    streamed in shards of whole series (the module docstring). Same options; ``path`` is the folder.
    ``IrregularTimeSeriesDataModule(path=FOLDER, ...)`` returns one of these."""

    #: rows per shard at most (memory: about one shard at a time)
    shard_rows: int = SHARD_ROWS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bound = inspect.signature(IrregularTimeSeriesDataModule.__init__).bind(self, *args, **kwargs)
        bound.apply_defaults()
        self._options = {k: v for k, v in bound.arguments.items() if k not in ("self", "path", "df")}
        where = f"--data.path {self.path}"
        if self._cov_spec is not None:
            raise ConfigError(
                f"{where}: covariates (future_cols, past_cols, static_cols, calendar) are not supported "
                "for a Parquet folder yet; drop them or pass one CSV / Parquet file"
            )
        if self.scaler in ("robust", "log"):
            why = "its quantiles need every value at once" if self.scaler == "robust" else "it is not streamed yet"
            raise ConfigError(
                f"{where}: the {self.scaler} scaler is not supported for a Parquet folder ({why}); pass "
                "--data.scaler standard or minmax"
            )
        if self.read_kwargs.get("id_col") is None:
            raise ConfigError(f"{where}: a Parquet folder needs a series id column; pass --data.id_col")
        self.streams_shards = True  # backtest.fit_calibration: no in-memory table to calibrate on

    # --- the scan ---------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self._ready:
            return
        rk = self.read_kwargs
        self.folder = ParquetFolder(self.path, rk["id_col"], rk["time_col"], None)
        names = self.folder.dataset.schema.names
        vals, masks = rk.get("value_cols"), rk.get("mask_cols") or []
        masks = list(masks.values()) if isinstance(masks, dict) else [masks] if isinstance(masks, str) else list(masks)
        if vals is None and rk.get("format", "long") == "long" and "y" in names:
            vals = ["y"]  # what read_series takes by default: read only that
        if vals is not None:  # a column missing here is reported by read_series, naming the shard's files
            vals = [vals] if isinstance(vals, str) else list(vals)
            self.folder.columns = [
                c for c in dict.fromkeys([rk["id_col"], rk["time_col"], *vals, *masks]) if c in names
            ]
        self.shards = self.folder.shards(self.shard_rows)
        recs, codecs, channels = [], [], None
        for k, shard in enumerate(self.shards):
            m = ShardModule(self.folder.read(shard), self._options, self.folder.name(shard))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_PER_SHARD_WARNINGS)
                m._prepare()
            m.df = None  # the frame is read into m.table: hold one copy of the shard
            if channels is None:
                channels = list(m.table.channel_names)
            elif list(m.table.channel_names) != channels:
                raise DataError(
                    f"{self.folder.name(shard)}: value columns {m.table.channel_names} differ from "
                    f"{channels} in the first shard; write every part file with the same columns"
                )
            codecs.append((m.table.codec, self.folder.name(shard)))
            recs.append(shard_records(m, k))
            del m
        self._finish_scan(recs, codecs, channels)
        self._ready = True

    def _finish_scan(self, recs: list[ShardRecords], codecs, channels: list[str]) -> None:
        r = ShardRecords(*[np.concatenate([getattr(x, f) for x in recs]) for f in ShardRecords.__dataclass_fields__])
        order = np.argsort(r.ids, kind="stable")
        r = ShardRecords(*[getattr(r, f)[order] for f in ShardRecords.__dataclass_fields__])
        if len(r.ids) > 1 and bool((r.ids[1:] == r.ids[:-1]).any()):
            dup = r.ids[1:][r.ids[1:] == r.ids[:-1]][0]
            raise DataError(
                f"{self.path}: series id {dup!r} is read in two shards (ids such as 1 and 1.0 that become "
                "the same); write the id column with one type"
            )
        self.codec = self._folder_codec(codecs)
        s = len(r.ids)
        every = np.arange(s)
        if self.split_by == "series":
            base = IrregularTimeSeriesDataModule._series_split(self, SimpleNamespace(n_series=s, source=self.path))
            fit_series = base["train"]
        else:
            base = {"train": every, "val": every, "test": every}
            fit_series = every[r.fitted]
        ok = {"train": r.train_items > 0, "val": r.val_ok, "test": r.test_ok}
        split = {k: v[ok[k][v]] for k, v in base.items()}
        self._warn_left_out(base, split)
        fix = "--data.horizon" if self.task == "forecast" else "--data.cut"
        if not len(split["train"]):
            raise DataError(
                f"{self.path}: none of the {len(base['train'])} training series has a training window "
                f"(points before and after a cutoff, within the horizon); adjust {fix}"
            )
        if self.task == "forecast" and (self.val_fraction > 0 or self.train_end is not None) and not len(split["val"]):
            raise DataError(
                f"{self.path}: no validation series has an observation before its validation cutoff and "
                f"one within horizon={self.horizon!r} after it, so there would be no validation; pass a "
                "shorter --data.horizon, an earlier --data.train_end, or --data.val_fraction 0"
            )
        first, last = r.first, r.last
        if self.codec.is_datetime:
            first, last = self.codec.ns_to_float(first), self.codec.ns_to_float(last)
        self._transform = self._merge_transform(
            r, fit_series, np.asarray(first, np.float64), np.asarray(last, np.float64), channels
        )
        factor = 1
        if self.task == "forecast" and self.windows_per_series == "auto":
            total = int(r.train_items[split["train"]].sum())
            if 0 < total < AUTO_MIN_BATCHES * self.batch_size:
                factor = math.ceil(AUTO_MIN_BATCHES * self.batch_size / total)
        self.ids, self.series_shard, self.folder_split = r.ids, r.shard, split
        self.items = {"train": r.train_items * factor, "val": np.ones(s, np.int64), "test": np.ones(s, np.int64)}
        self._factor, self._channels = factor, channels
        self._id_index = pd.Index(self.ids)

    def _folder_codec(self, codecs) -> TimeCodec:
        """The time codec of the whole folder: the shards' own (same kind, unit, timezone), its reference the
        earliest of theirs (the earliest timestamp of the data, as for one file)."""
        c0, where0 = codecs[0]
        for c, where in codecs[1:]:
            if (c.kind, c.unit, c.tz) != (c0.kind, c0.unit, c0.tz):
                what = lambda x: x.kind if not x.is_datetime else f"datetimes (tz {x.tz})"  # noqa: E731
                raise DataError(
                    f"{where}: times are {what(c)} but {what(c0)} in {where0}; write every part file's "
                    "time column the same way"
                )
        if not c0.is_datetime:
            return c0
        return TimeCodec(c0.kind, c0.unit, c0.tz, min(int(c.ref_ns) for c, _ in codecs))

    def _merge_transform(
        self, r: ShardRecords, sel: np.ndarray, first: np.ndarray, last: np.ndarray, channels: list[str]
    ) -> SeriesTransform:
        center, scale = merge_scaler(self.scaler, r.n[sel], r.mean[sel], r.m2[sel], r.lo[sel], r.hi[sel])
        for c, (ce, sc) in enumerate(zip(center, scale, strict=True)):
            if not (math.isfinite(ce) and math.isfinite(sc)):
                raise DataError(
                    f"{self.path}, column '{channels[c]}': the column's values span more than float64 can "
                    f"scale ({self.scaler} scaler); rescale the column or fix the values"
                )

        def span() -> float:  # what the auto time scale reads
            if self.time_origin != "series":
                return float(np.max(np.maximum(np.abs(first[sel]), np.abs(last[sel]))))
            longest, window = float(np.max(last[sel] - first[sel])), self._window()
            return longest if window is None else min(longest, window)

        ts = resolve_time_scale(self.time_scale, span)
        rk = self.read_kwargs
        return SeriesTransform(
            channel_names=list(channels),
            codec=self.codec,
            time_origin=self.time_origin,
            time_scale=ts,
            scaler=self.scaler,
            center=center,
            scale=scale,
            id_col=rk["id_col"] or "unique_id",
            time_col=rk["time_col"],
        )

    def _window(self) -> float | None:
        """The forecast task's context + horizon in raw time (what sets an automatic time scale), or None."""
        if self.task != "forecast" or self.context is None:
            return None
        return positive_duration(self.codec, self.context, "context") + positive_duration(
            self.codec, self.horizon, "horizon"
        )

    def _warn_left_out(self, base: dict, split: dict) -> None:
        for name in ("train", "val", "test"):
            n = len(base[name]) - len(split[name])
            if n:
                what = "forecast window" if self.task == "forecast" else "window of the task"
                warnings.warn(
                    f"{self.path}: {n} {name} series are too short for a {what} (no point before its cutoff "
                    "or none after it) and are left out of it",
                    stacklevel=3,
                )

    # --- what the rest of the package reads -------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        self._prepare()
        return len(self._channels)

    @property
    def channel_names(self) -> list[str]:
        self._prepare()
        return list(self._channels)

    @property
    def series_ids(self) -> list:
        self._prepare()
        return list(self.ids)

    @property
    def train_items_per_epoch(self) -> int:
        self._prepare()
        return int(self.items["train"][self.folder_split["train"]].sum())

    @property
    def season_period(self) -> float | None:
        if self.season is None:
            return None
        if self.season == "auto":
            raise ConfigError(
                f"--data.season auto: {self.path} is a Parquet folder read in shards, and the season is chosen on an "
                "in-memory table; pass the season (e.g. --data.season 24h)"
            )
        self._prepare()
        return positive_duration(self.codec, self.season, "season") / self._transform.time_scale

    @property
    def column_summary(self) -> str:
        self._prepare()
        rows = sum(s.rows for s in self.shards)
        return (
            f"data {self.path}: {len(self.ids)} series, {rows} rows in {len(self.folder.fragments)} Parquet files, "
            f"streamed in {len(self.shards)} shards of at most {self.shard_rows} rows; targets "
            f"{', '.join(self._channels)}; columns read {', '.join(self.folder.columns)}"
        )

    def split_ids(self, name: str) -> list:
        self._prepare()
        return [self.ids[i] for i in self.folder_split[name]]

    def to_frame(self, *args, **kwargs) -> NoReturn:
        raise ConfigError(
            f"--data.path {self.path}: a Parquet folder streams in shards, so predictions are not "
            "mapped back here; forecast its files with 'ts-neuralode forecast'"
        )

    # --- loaders ------------------------------------------------------------------------------------------------
    def rank_world(self) -> tuple[int, int]:
        """(rank, world size): the trainer's, else torch.distributed's, else (0, 1)."""
        trainer = getattr(self, "_trainer", None) or getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size or 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def stream(self, name: str, rank: int | None = None, world: int | None = None) -> ShardStream:
        """The batches of split ``name`` for process ``rank`` of ``world`` (default: this process's)."""
        self._prepare()
        if rank is None or world is None:
            rank, world = self.rank_world()
        train = name == "train"
        return ShardStream(
            self,
            name,
            rank,
            world,
            shuffle=train and self.shuffle,
            batch_size=self.batch_size if train else self.eval_batch_size,
        )

    def _stream_loader(self, name: str) -> DataLoader:
        # Lightning warns that a sized IterableDataset may repeat data across loader workers: there are none here
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return DataLoader(self.stream(name), batch_size=None, collate_fn=_as_is, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._stream_loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._stream_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._stream_loader("test")

    def predict_dataloader(self) -> NoReturn:
        self.to_frame()

    def shard_module(self, k: int, name: str, ids: list | None) -> ShardModule:
        """Shard ``k``'s rows of series ``ids``, prepared with the folder's transform for split ``name``."""
        m = ShardModule(
            self.folder.read(self.shards[k], ids),
            self._options,
            self.folder.name(self.shards[k]),
            self.codec,
            self._transform,
            name,
        )
        with warnings.catch_warnings():  # the scan said it once
            warnings.simplefilter("ignore")
            m._prepare()
        m.df = None  # the frame is read into m.table and m.arrays: hold no third copy
        return m


_FolderDispatch.folder_module = ParquetFolderDataModule  # IrregularTimeSeriesDataModule(path=FOLDER) gives one

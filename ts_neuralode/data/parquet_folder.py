"""The part files of a Parquet folder, read in shards of whole series, and the stream of one split's batches.

:class:`ParquetFolder` checks the folder (at least one part file, the same columns and types in every file, the id
and time columns present), groups its series into :class:`Shard` s of whole series from the id column alone, and
reads one shard's rows at a time through :mod:`pyarrow.dataset` scanners (only the needed columns, batch by batch).
:class:`ShardStream` is the ``IterableDataset`` of one split for one process: shard by shard, only its series. The
data module that plans the shards and fits the split and the transform over them is
:class:`~ts_neuralode.data.parquet_stream.ParquetFolderDataModule` (the module docstring there says how).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from ts_neuralode.data.batching import collate
from ts_neuralode.data.io import PARQUET_SUFFIXES
from ts_neuralode.errors import ConfigError, DataError

#: rows a shard holds at most (a series longer than that is a shard of its own)
SHARD_ROWS = 500_000
#: rows per record batch a scanner reads at a time
SCAN_BATCH = 131_072


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.dataset as pads
    except ImportError as exc:
        raise DataError("reading a Parquet folder needs pyarrow (pip install pyarrow); or pass one CSV file") from exc
    return pa, pads


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:200]


@dataclass
class Shard:
    """Whole series read together: ``ids`` (as the id column holds them) from the part files ``files``
    (positions in :attr:`ParquetFolder.fragments`); ``rows``: their rows; ``exclusive``: those files hold no other
    series (no id filter needed)."""

    ids: list
    files: list[int]
    rows: int
    exclusive: bool


class ParquetFolder:
    """The part files of a folder as one :mod:`pyarrow.dataset`, checked: at least one file, every file readable
    with the same columns and types, the id and time columns present."""

    def __init__(self, path: str, id_col: str, time_col: str, columns: list[str] | None):
        pa, pads = _pyarrow()
        self.path = os.fspath(path)
        files = []
        for root, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            files += [
                os.path.join(root, n)
                for n in sorted(names)
                if n.lower().endswith(PARQUET_SUFFIXES) and not n.startswith((".", "_"))
            ]
        if not files:
            raise DataError(
                f"{self.path}: folder holds no Parquet files (*.parquet, *.pq); write the data there as "
                "part files, or pass a CSV or Parquet file"
            )
        try:
            self.dataset = pads.dataset(files, format="parquet", partitioning="hive", partition_base_dir=self.path)
        except Exception as exc:  # pyarrow's ArrowInvalid / OSError
            raise DataError(f"{self.path}: not a readable Parquet folder ({_one_line(exc)}); check its files") from exc
        self.fragments = list(self.dataset.get_fragments())
        self.id_col, self.time_col = id_col, time_col
        first, first_schema = None, None
        for frag in self.fragments:
            try:
                schema = frag.physical_schema
            except Exception as exc:
                raise DataError(
                    f"{frag.path}: not a readable Parquet file ({_one_line(exc)}); rewrite or remove it"
                ) from exc
            have = set(schema.names) | set(self._partition_fields(frag))
            for col, what in ((id_col, "id"), (time_col, "time")):
                if col not in have:
                    raise DataError(
                        f"{frag.path}: missing {what} column '{col}' (columns: {', '.join(schema.names)}); "
                        f"every part file needs the series id and time columns (or pass {what}_col=...)"
                    )
            if first is None:
                first, first_schema = frag.path, schema
                continue
            diff = _schema_difference(first_schema, schema)
            if diff:
                raise DataError(
                    f"{frag.path}: its columns differ from {first} ({diff}); write every part file with "
                    "the same columns and types"
                )
        # the files' own columns; a hive partition key (``bucket=3/``) only when it is the id or time column
        names = [n for n in self.dataset.schema.names if n in first_schema.names or n in (id_col, time_col)]
        self.columns = (
            names
            if columns is None
            else [c for c in dict.fromkeys([id_col, time_col, *columns]) if c in self.dataset.schema.names]
        )
        self.pa, self.pads = pa, pads

    @staticmethod
    def _partition_fields(frag) -> list[str]:
        import pyarrow.dataset as pads

        try:
            return list(pads.get_partition_keys(frag.partition_expression))
        except Exception:
            return []

    def shards(self, max_rows: int) -> list[Shard]:
        """Pass 1: groups of whole series of at most ``max_rows`` rows (see the module docstring)."""
        pc = __import__("pyarrow.compute", fromlist=["value_counts"])
        parts = []
        for k, frag in enumerate(self.fragments):
            for batch in frag.to_batches(schema=self.dataset.schema, columns=[self.id_col], batch_size=SCAN_BATCH):
                col = batch.column(0)
                if col.null_count:
                    raise DataError(
                        f"{frag.path}, column '{self.id_col}': {col.null_count} rows have no series id; "
                        "fill them in or delete the rows"
                    )
                vc = pc.value_counts(col)
                parts.append(
                    pd.DataFrame({"id": vc.field("values").to_pandas(), "n": vc.field("counts").to_numpy(), "file": k})
                )
        if not parts:
            raise DataError(f"{self.path}: the Parquet files have no rows; add observations")
        per_file = pd.concat(parts, ignore_index=True).groupby(["id", "file"], sort=False, as_index=False)["n"].sum()
        series = per_file.groupby("id", sort=True).agg(n=("n", "sum"), file=("file", "min"))
        series = series.sort_values("file", kind="stable")  # by first file, then id
        n = series["n"].to_numpy(np.int64)
        shard = ((np.cumsum(n) - n) // max(int(max_rows), 1)).astype(np.int64)
        _, shard = np.unique(shard, return_inverse=True)
        series["shard"] = shard
        per_file["shard"] = series["shard"].reindex(per_file["id"]).to_numpy()
        exclusive_file = per_file.groupby("file")["shard"].nunique() == 1
        out = []
        for s, grp in series.groupby("shard", sort=True):
            files = sorted(per_file.loc[per_file["shard"] == s, "file"].unique().tolist())
            out.append(
                Shard(
                    ids=grp.index.tolist(),
                    files=files,
                    rows=int(grp["n"].sum()),
                    exclusive=bool(exclusive_file[files].all()),
                )
            )
        return out

    def read(self, shard: Shard, ids: list | None = None) -> pd.DataFrame:
        """The rows of series ``ids`` (default: all of the shard's), read batch by batch with the projected columns."""
        pads = self.pads
        want = shard.ids if ids is None else ids
        sub = pads.FileSystemDataset(
            [self.fragments[k] for k in shard.files],
            schema=self.dataset.schema,
            format=self.dataset.format,
            filesystem=self.dataset.filesystem,
        )
        filt = None
        if ids is not None or not shard.exclusive:
            typ = self.dataset.schema.field(self.id_col).type
            filt = pads.field(self.id_col).isin(self.pa.array(np.asarray(want)).cast(typ))
        try:
            scanner = sub.scanner(columns=self.columns, filter=filt, batch_size=SCAN_BATCH)
            table = self.pa.Table.from_batches(list(scanner.to_batches()), schema=scanner.projected_schema)
        except Exception as exc:
            raise DataError(f"{self.name(shard)}: cannot read it ({_one_line(exc)}); check the part files") from exc
        return table.to_pandas()

    def name(self, shard: Shard) -> str:
        """How messages name a shard: its files."""
        paths = [self.fragments[k].path for k in shard.files]
        return "a shard of " + paths[0] + (f" (+{len(paths) - 1} more files)" if len(paths) > 1 else "")


def _schema_difference(a, b) -> str:
    """'' when schemas ``a`` and ``b`` have the same columns and types, else the first difference in words."""
    for f in a:
        if f.name not in b.names:
            return f"column '{f.name}' is missing here"
        if b.field(f.name).type != f.type:
            return f"column '{f.name}' is {b.field(f.name).type} here, {f.type} there"
    extra = [n for n in b.names if n not in a.names]
    return f"column '{extra[0]}' is only here" if extra else ""


def _as_is(batch):
    return batch


class ShardStream(IterableDataset):
    """The batches of one split for one process, shard by shard (see the module docstring). ``len()`` is the
    number of batches an epoch yields; every epoch draws a new shard and series order when ``shuffle``."""

    def __init__(self, dm: Any, name: str, rank: int, world: int, shuffle: bool, batch_size: int):
        if not (0 <= rank < world):
            raise ConfigError(f"rank {rank} is not in 0..{world - 1}")
        self.dm, self.name, self.rank, self.world = dm, name, rank, world
        self.shuffle, self.batch_size, self.epoch = shuffle, int(batch_size), 0
        self.plan = self.assignment(rank)
        plans = [self.assignment(r) for r in range(world)] if world > 1 else [self.plan]
        counts = [self.n_batches(p) for p in plans]
        self.length = min(counts)

    def assignment(self, rank: int) -> dict[int, np.ndarray]:
        """{shard: global positions of the series of this split that process ``rank`` reads from it}."""
        mine = self.dm.folder_split[self.name][rank :: self.world]
        shard = self.dm.series_shard[mine]
        return {int(k): mine[shard == k] for k in np.unique(shard)}

    def n_batches(self, plan: dict[int, np.ndarray]) -> int:
        items = self.dm.items[self.name]
        return int(sum(math.ceil(int(items[idx].sum()) / self.batch_size) for idx in plan.values()))

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        dm = self.dm
        rng = np.random.default_rng([dm.seed, self.epoch, self.rank])
        self.epoch += 1
        order = np.array(sorted(self.plan), dtype=np.int64)
        if self.shuffle:
            order = rng.permutation(order)
        done = 0
        for k in order:
            m = dm.shard_module(int(k), self.name, [dm.ids[i] for i in self.plan[int(k)]])
            items = m._train_items if self.name == "train" else m.split[self.name]
            items = np.repeat(np.asarray(items, dtype=np.int64), dm._factor if self.name == "train" else 1)
            if self.shuffle:
                items = rng.permutation(items)
            gpos = dm._id_index.get_indexer(m.table.ids)
            for j in range(0, len(items), self.batch_size):
                if done >= self.length:
                    return
                batch = collate(m.arrays, items[j : j + self.batch_size], dm.batch_layout, m._specs[self.name])
                batch.series_idx = torch.from_numpy(gpos[batch.series_idx.numpy()])
                yield batch
                done += 1
            del m

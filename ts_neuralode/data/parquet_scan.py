"""The scan of a Parquet folder (:mod:`ts_neuralode.data.parquet_stream`, pass 2), shard by shard: the in-memory
data module on one shard's rows (:class:`ShardModule`) and what it records per series (:class:`ShardRecords`: its
training windows, whether it has validation / test windows, the scaler's sufficient statistics and its time span)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.timecodec import TimeCodec
from ts_neuralode.data.transform import SeriesTransform


class ShardModule(IrregularTimeSeriesDataModule):
    """The in-memory data module on one shard's rows. In the scan (``transform=None``) every series is in every
    split and the transform is fitted on the shard, recording what it was fitted on (``fits``); in an epoch it uses
    the folder's transform and codec, and ``split`` (only the split being streamed)."""

    def __init__(
        self,
        df: pd.DataFrame,
        options: dict,
        name: str,
        codec: TimeCodec | None = None,
        transform: SeriesTransform | None = None,
        split: str | None = None,
    ):
        super().__init__(df=df, **options)
        self.read_kwargs.update(name=name, codec=codec)
        self.batch_size = 0  # no AUTO_MIN_BATCHES scale-up per shard: the folder module scales over all of them
        self.folder_transform, self.folder_split = transform, split
        self.fits: list = []

    def _series_split(self, table) -> dict[str, np.ndarray]:
        every, none = np.arange(table.n_series), np.zeros(0, dtype=np.int64)
        if self.folder_split is None:
            return {"train": every, "val": every, "test": every}
        # the streamed split; a validation / test shard also trains (unused) so the forecast task finds anchors
        return {k: every if k in ("train", self.folder_split) else none for k in ("train", "val", "test")}

    whole_data = False

    def _fit_transform(self, table, series, window=None) -> SeriesTransform:
        if self.folder_transform is None:  # the scan: record the rows; what it records needs only raw times
            self.fits.append((table, series, window))
            return SeriesTransform(
                channel_names=list(table.channel_names), codec=table.codec, time_origin=self.time_origin
            )
        self.folder_transform.check_table(table)
        return self.folder_transform


@dataclass
class ShardRecords:
    """Per-series records of the scan (rows aligned with ``ids``)."""

    ids: np.ndarray
    shard: np.ndarray
    train_items: np.ndarray
    val_ok: np.ndarray
    test_ok: np.ndarray
    fitted: np.ndarray  # the series has rows the transform is fitted on
    n: np.ndarray  # [S, D] observed values in those rows
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    first: np.ndarray  # first / last time of those rows (ns for datetimes, else raw floats)
    last: np.ndarray


def shard_records(m: ShardModule, k: int) -> ShardRecords:
    """What shard ``k``'s scan module ``m`` found, per series of its table."""
    t = m.table
    s, d = t.n_series, t.num_channels
    ft, series, _ = m.fits[0]
    series = np.arange(ft.n_series) if series is None else np.asarray(series, dtype=np.int64)
    pos = pd.Index(t.ids).get_indexer(ft.ids)  # fit-table series -> shard-table series
    seg = ft.series_of_rows()
    in_fit = np.zeros(ft.n_series, dtype=bool)
    in_fit[series] = True
    rows = in_fit[seg]
    stats = {key: np.zeros((s, d)) for key in ("n", "mean", "m2")}
    lo, hi = np.full((s, d), np.inf), np.full((s, d), -np.inf)
    for c in range(d):
        o = rows & ft.mask[:, c]
        g, v = seg[o], ft.values[o, c]
        n = np.bincount(g, minlength=ft.n_series).astype(np.float64)
        mean = np.bincount(g, weights=v, minlength=ft.n_series) / np.maximum(n, 1)
        m2 = np.bincount(g, weights=(v - mean[g]) ** 2, minlength=ft.n_series)
        mn, mx = np.full(ft.n_series, np.inf), np.full(ft.n_series, -np.inf)
        np.minimum.at(mn, g, v)
        np.maximum.at(mx, g, v)
        stats["n"][pos, c], stats["mean"][pos, c], stats["m2"][pos, c] = n, mean, m2
        lo[pos, c], hi[pos, c] = mn, mx
    fitted = np.zeros(s, dtype=bool)
    fitted[pos[series]] = True
    exact = ft.time_ns if ft.codec.is_datetime and ft.time_ns is not None else ft.times
    first, last = np.zeros(s, dtype=exact.dtype), np.zeros(s, dtype=exact.dtype)
    first[pos], last[pos] = exact[ft.offsets[:-1]], exact[ft.offsets[1:] - 1]
    split = m.split
    return ShardRecords(
        ids=np.asarray(t.ids),
        shard=np.full(s, k, dtype=np.int64),
        train_items=np.bincount(np.asarray(m._train_items, dtype=np.int64), minlength=s),
        val_ok=np.isin(np.arange(s), split["val"]),
        test_ok=np.isin(np.arange(s), split["test"]),
        fitted=fitted,
        n=stats["n"],
        mean=stats["mean"],
        m2=stats["m2"],
        lo=lo,
        hi=hi,
        first=first,
        last=last,
    )

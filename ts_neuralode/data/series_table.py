"""The validated series of a data set in one flat layout: :class:`SeriesTable` (what
:func:`ts_neuralode.data.io.read_series` returns and everything downstream reads)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ts_neuralode.data.timecodec import TimeCodec


class _Where:
    """Formats 'file: column 'c', line N' locations for messages."""

    def __init__(self, source: str, is_file: bool):
        self.source, self.is_file = source, is_file

    def row(self, pos: int) -> str:
        return f"line {int(pos) + 2}" if self.is_file else f"row {int(pos)}"

    def at(self, col: str | None, pos: int | None = None) -> str:
        parts = [self.source]
        if col is not None:
            parts.append(f"column '{col}'")
        if pos is not None:
            parts.append(self.row(pos))
        return ", ".join(parts)


@dataclass
class SeriesTable:
    """Validated series, concatenated and sorted by (series, time).

    Attributes:
        ids: ``[S]`` original series ids (sorted).
        offsets: ``[S + 1]`` int64: rows of series ``s`` are ``offsets[s]:offsets[s + 1]``.
        times: ``[N]`` float64 raw float time (see :class:`TimeCodec`), strictly increasing per series.
        values: ``[N, D]`` float64, NaN where not observed.
        mask: ``[N, D]`` bool, True where observed. Every row has at least one observed channel.
        channel_names: the value column names (``D`` of them).
        codec: the :class:`TimeCodec` that produced ``times``.
        source: file name or "<DataFrame>", used in messages.
        time_ns: ``[N]`` int64 for datetime data: the instants exactly as read (ns since the epoch, UTC when
            timezone-aware), so that history times leave the package unchanged (``times`` are floats).
        rows: ``[N]`` int64 position of each row in the input (the first of a group merged by
            ``duplicates="mean"``), for messages (:meth:`where`).
        from_file: whether ``source`` is a file (messages say ``line N``) or a DataFrame (``row N``).
    """

    ids: np.ndarray
    offsets: np.ndarray
    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    channel_names: list[str]
    codec: TimeCodec
    source: str = "<DataFrame>"
    id_col: str | None = "unique_id"
    time_col: str = "ds"
    extra: dict = field(default_factory=dict)
    time_ns: np.ndarray | None = None
    rows: np.ndarray | None = None
    from_file: bool = False

    @property
    def n_series(self) -> int:
        return len(self.ids)

    def where(self, col: str | None, k: int | None = None) -> str:
        """'file, column 'c', line N' of row ``k`` of this table (its position in the input)."""
        pos = None if k is None or self.rows is None else int(self.rows[k])
        return _Where(self.source, self.from_file).at(col, pos)

    def user_times(self, k: np.ndarray | slice | None = None):
        """Times of rows ``k`` (default all) exactly as read: a float array, or a DatetimeIndex in the data's
        timezone (from :attr:`time_ns`, not from the float ``times``)."""
        k = slice(None) if k is None else k
        if self.time_ns is None or not self.codec.is_datetime:
            return self.codec.from_float(self.times[k])
        return self.codec.from_ns(self.time_ns[k])

    def take(self, rows: np.ndarray, offsets: np.ndarray, ids) -> SeriesTable:
        """A table with rows ``rows`` of this one (in that order), grouped into series by ``offsets``/``ids``."""
        from dataclasses import replace

        opt = lambda a: None if a is None else a[rows]  # noqa: E731
        return replace(
            self,
            ids=np.asarray(ids),
            offsets=np.asarray(offsets, dtype=np.int64),
            times=self.times[rows],
            values=self.values[rows],
            mask=self.mask[rows],
            time_ns=opt(self.time_ns),
            rows=opt(self.rows),
        )

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def first_times(self) -> np.ndarray:
        return self.times[self.offsets[:-1]]

    def last_times(self) -> np.ndarray:
        return self.times[self.offsets[1:] - 1]

    def series_of_rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_series), self.counts)

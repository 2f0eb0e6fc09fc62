"""`IrregularTimeSeriesDataModule`: CSV/DataFrame -> validated series -> split -> normalised batches.

Tasks:

* ``interpolation``: observe a random ``obs_fraction`` of each series' points (at least one); targets are
  all points (reconstruct all), the held-out ones are ``batch.held_out_mask``. Training draws a new
  subsample every time a series is batched; validation/test use one seeded subsample per series, fixed
  for the life of the DataModule, so metrics are comparable across epochs and models.
* ``extrapolation``: observe the points up to a cut and predict the points after it. ``cut`` is a
  fraction of each series' own span (default 0.5), or ``cut_time`` an absolute time (number or datetime,
  in the data's own time axis). ``extrap_obs_fraction`` < 1 also subsamples the conditioning window (the
  Latent ODE protocol with subsampled points). Series with no point before or after an absolute cut are
  left out of the task (warning).

``batch.cutoff`` is the cut in model time for extrapolation, and each series' last time for
interpolation and prediction (so interpolation targets never lie after it).

Layouts: ``union`` (times ``[T]`` shared by the batch, the Latent ODE convention) or ``padded`` (times
``[B, T]``, each row a series' own times). See :mod:`ts_neuralode.data.transform` for the time convention.

Loaders are plain DataLoaders over series indices (train shuffled unless ``shuffle=False``), so Lightning
can inject a DistributedSampler under DDP and workers (``num_workers > 0``) only run the cheap vectorised
collate. Under DDP with ``devices=N`` each rank gets ``batch_size`` series per step (a global batch of
``N * batch_size``); ``shuffle=False`` makes the order deterministic (rank r of N takes series r, r+N, …),
so a DDP run with ``batch_size = B / N`` sees the same global batches as one process with ``B``.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from ts_neuralode.data.batching import LAYOUTS, Collator, SeriesArrays, TaskSpec, subsample
from ts_neuralode.data.io import read_series
from ts_neuralode.data.transform import SeriesTransform
from ts_neuralode.errors import ConfigError, DataError

TASKS = ("interpolation", "extrapolation")


class SeriesIndexDataset(Dataset):
    """Yields positions into the DataModule's series arrays; the Collator builds the batch."""

    def __init__(self, indices: np.ndarray):
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])


class IrregularTimeSeriesDataModule(L.LightningDataModule):
    """Irregularly sampled series for interpolation/extrapolation (see the module docstring).

    Args:
        path: CSV file (or pass ``df``). format/id_col/time_col/value_cols/mask_cols/time_unit/duplicates:
            see :func:`ts_neuralode.data.io.read_series`.
        task: "interpolation" or "extrapolation". obs_fraction: interpolation's observed fraction.
        cut: extrapolation cut as a fraction of each series' span; cut_time: an absolute cut instead.
        extrap_obs_fraction: fraction of the conditioning window observed in extrapolation (default all).
        layout: "union" or "padded". batch_size / eval_batch_size: loader batch sizes.
        val_fraction / test_fraction: fractions of the series held out; seed: split and subsample seed.
        scaler: "standard", "minmax", "robust" or "none"; time_scale: "auto" or a number;
            time_origin: "series" or "zero" (see :mod:`ts_neuralode.data.transform`).
        predict_split: which series predict_dataloader serves: "all", "train", "val" or "test".
        shuffle: shuffle the training series every epoch (default True; False: a fixed order, e.g. to
            compare a DDP run with a single-process one batch for batch).
    """

    def __init__(
        self,
        path: str | None = None,
        df: pd.DataFrame | None = None,
        format: str = "long",
        id_col: str | None = "unique_id",
        time_col: str = "ds",
        value_cols: list[str] | None = None,
        mask_cols: list[str] | None = None,
        time_unit: str | None = None,
        task: str = "interpolation",
        obs_fraction: float = 0.5,
        cut: float = 0.5,
        layout: str = "union",
        batch_size: int = 50,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        cut_time: float | str | None = None,
        extrap_obs_fraction: float = 1.0,
        eval_batch_size: int | None = None,
        scaler: str = "standard",
        time_scale: float | str = "auto",
        time_origin: str = "series",
        duplicates: str = "error",
        predict_split: str = "all",
        pin_memory: bool = False,
        shuffle: bool = True,
    ):
        super().__init__()
        if (path is None) == (df is None):
            raise ConfigError("give exactly one of path=... (a CSV file) or df=... (a pandas DataFrame)")
        if task not in TASKS:
            raise ConfigError(f"task={task!r} is not supported; use 'interpolation' or 'extrapolation'")
        if layout not in LAYOUTS:
            raise ConfigError(f"layout={layout!r} is not supported; use 'union' or 'padded'")
        for name, val in (("obs_fraction", obs_fraction), ("extrap_obs_fraction", extrap_obs_fraction)):
            if not 0.0 < float(val) <= 1.0:
                raise ConfigError(f"{name}={val} must be in (0, 1]")
        if cut_time is None and not 0.0 < float(cut) < 1.0:
            raise ConfigError(f"cut={cut} must be in (0, 1) (a fraction of each series' span); or pass cut_time")
        if not (0.0 <= val_fraction < 1 and 0.0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum "
                              "to less than 1")
        if predict_split not in ("all", "train", "val", "test"):
            raise ConfigError(f"predict_split={predict_split!r}; use 'all', 'train', 'val' or 'test'")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        self.save_hyperparameters(ignore=["df"])
        self.path, self.df = path, df
        self.read_kwargs = dict(format=format, id_col=id_col, time_col=time_col, value_cols=value_cols,
                                mask_cols=mask_cols, time_unit=time_unit, duplicates=duplicates)
        self.task, self.obs_fraction, self.cut, self.cut_time = task, float(obs_fraction), float(cut), cut_time
        self.extrap_obs_fraction = float(extrap_obs_fraction)
        self.layout, self.batch_size = layout, int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.val_fraction, self.test_fraction, self.seed = float(val_fraction), float(test_fraction), int(seed)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.scaler, self.time_scale, self.time_origin = scaler, time_scale, time_origin
        self.predict_split = predict_split
        self.shuffle = bool(shuffle)
        self._ready = False

    # --- preparation (lazy: properties trigger it, so models can be sized before trainer.fit) --------
    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def _prepare(self) -> None:
        if self._ready:
            return
        source = self.df if self.df is not None else self.path
        table = read_series(source, **self.read_kwargs)
        rng = np.random.default_rng(self.seed)
        s = table.n_series
        perm = rng.permutation(s)
        n_test = int(round(self.test_fraction * s))
        n_val = int(round(self.val_fraction * s))
        if s - n_test - n_val < 1:
            raise ConfigError(f"{table.source}: {s} series leave none for training with val_fraction="
                              f"{self.val_fraction} and test_fraction={self.test_fraction}; lower them")
        split = {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
                 "train": np.sort(perm[n_test + n_val:])}
        transform = SeriesTransform.fit(table, split["train"], scaler=self.scaler, time_scale=self.time_scale,
                                        time_origin=self.time_origin)
        origins = transform.origins(table)
        arrays = SeriesArrays.from_table(table, transform, origins)

        counts = arrays.counts
        seg = table.series_of_rows()
        if self.task == "interpolation":
            cond_count, cutoff, fraction = counts.copy(), None, self.obs_fraction
        else:
            if self.cut_time is not None:
                cut_raw = np.full(s, float(transform.codec.to_float([self.cut_time])[0]))
            else:
                first, last = table.first_times(), table.last_times()
                cut_raw = first + self.cut * (last - first)
            cond_count = np.bincount(seg, weights=table.times <= np.repeat(cut_raw, counts), minlength=s)
            cond_count = cond_count.astype(np.int64)
            cutoff = transform.raw_to_model_time(cut_raw, origins).astype(np.float32)
            fraction = self.extrap_obs_fraction
            usable = (cond_count >= 1) & (cond_count < counts)
            if not usable.all():
                n_bad = int((~usable).sum())
                if not usable.any():
                    raise DataError(f"{table.source}: no series has points both before and after the cut "
                                    f"(cut={self.cut}, cut_time={self.cut_time!r}); move the cut")
                warnings.warn(f"{table.source}: {n_bad} series have no point before or after the extrapolation cut "
                              "and are left out of the task", stacklevel=2)
                split = {k: v[usable[v]] for k, v in split.items()}
        cand = np.arange(len(seg)) - np.repeat(arrays.starts, counts) < np.repeat(cond_count, counts)
        fixed = subsample(seg, cand, counts, fraction, np.random.default_rng([self.seed, 1]))
        targets_after = self.task == "extrapolation"
        self._specs = {
            "train": TaskSpec(cond_count, targets_after, fraction, None, cutoff),
            "eval": TaskSpec(cond_count, targets_after, fraction, fixed, cutoff),
        }
        self.table, self.split, self._transform, self.arrays, self.origins = table, split, transform, arrays, origins
        self._ready = True

    # --- public properties ---------------------------------------------------------------------
    @property
    def transform(self) -> SeriesTransform:
        """The fitted :class:`SeriesTransform` (JSON: ``.state_dict()``)."""
        self._prepare()
        return self._transform

    @property
    def num_channels(self) -> int:
        self._prepare()
        return self.table.num_channels

    @property
    def channel_names(self) -> list[str]:
        self._prepare()
        return list(self.table.channel_names)

    @property
    def series_ids(self) -> list:
        self._prepare()
        return list(self.table.ids)

    def split_ids(self, name: str) -> list:
        """Series ids of split ``name`` ("train", "val", "test")."""
        self._prepare()
        return [self.table.ids[i] for i in self.split[name]]

    def to_frame(self, series_idx, times, values, bands: Mapping[str, Any] | None = None,
                 value_kind: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Predictions for ``series_idx`` [B] (Batch.series_idx) at model ``times`` -> original units/times."""
        self._prepare()
        idx = np.asarray(series_idx.cpu() if hasattr(series_idx, "cpu") else series_idx, dtype=np.int64)
        return self.transform.to_frame([self.table.ids[i] for i in idx], self.origins[idx], times, values, bands,
                                       value_kind, history=(self.table, idx))

    # --- loaders -------------------------------------------------------------------------------
    def _loader(self, indices: np.ndarray, spec: TaskSpec | None, shuffle: bool, batch_size: int,
                ddp_fixed_order: bool = False) -> DataLoader:
        dataset = SeriesIndexDataset(indices)
        sampler = None
        if ddp_fixed_order:
            # Lightning always puts a *shuffling* DistributedSampler on a training loader under DDP; with
            # shuffle=False give it a fixed-order one (rank r of N: series r, r + N, ...), which it keeps.
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset, num_replicas=self.trainer.world_size,
                                         rank=int(self.trainer.global_rank), shuffle=False)
            shuffle = False
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                          collate_fn=Collator(self.arrays, self.layout, spec), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        self._prepare()
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        return self._loader(self.split["train"], self._specs["train"], self.shuffle, self.batch_size,
                            ddp_fixed_order=not self.shuffle and world > 1)

    def val_dataloader(self) -> DataLoader:
        self._prepare()
        return self._loader(self.split["val"], self._specs["eval"], False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self._prepare()
        return self._loader(self.split["test"], self._specs["eval"], False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Conditions on every observed point of each series (targets = every observed point)."""
        self._prepare()
        idx = np.arange(self.table.n_series) if self.predict_split == "all" else self.split[self.predict_split]
        return self._loader(idx, None, False, self.eval_batch_size)

    def state_dict(self) -> dict:
        """Lightning stores this in checkpoints: the JSON-able transform."""
        return {"transform": self._transform.state_dict()} if self._ready else {}

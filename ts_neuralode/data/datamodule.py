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

* ``forecast``: windows of long histories (:class:`~ts_neuralode.data.batching.ForecastSpec`): condition on
  the ``context`` before a cutoff (default: all history before it), score the ``horizon`` after it (both
  durations in the data's time unit — a number, or e.g. ``"30D"`` for datetimes). Training draws a new
  random cutoff for every window, ``windows_per_series`` windows per series per epoch (``"auto"``: about one
  per horizon of the series' training span, so an epoch covers each part of the history about once as a
  target; scaled up when that gives fewer than ``AUTO_MIN_BATCHES`` = 10 batches an epoch). Validation and
  test use the *last* horizon of each series (a backtest: what a forecast from that point would have
  scored). ``split_by="time"`` (the default for this task) keeps every series in
  every split and splits its time axis instead: test = the last horizon, validation = the horizon before
  it (each on only when ``test_fraction`` / ``val_fraction`` > 0), training = everything before the
  validation cutoff (no training target lies after it; the scaler is fitted on that part only). That is what
  few long series need (with 1–12 series a split by series leaves little or nothing to train on);
  ``split_by="series"`` holds out whole series as for the other tasks (their last horizon is scored).
  Series too short for a window (no point before a cutoff or none after it) are left out of that split
  (warning).

``batch.cutoff`` is the cut in model time for extrapolation and forecast windows, and each series' last
time for interpolation and prediction (so interpolation targets never lie after it).

Layouts: ``union`` (times ``[T]`` shared by the batch, the Latent ODE convention) or ``padded`` (times
``[B, T]``, each row a series' own times). See :mod:`ts_neuralode.data.transform` for the time convention.

Loaders are plain DataLoaders over series indices (train shuffled unless ``shuffle=False``), so Lightning
can inject a DistributedSampler under DDP and workers (``num_workers > 0``) only run the cheap vectorised
collate. Under DDP with ``devices=N`` each rank gets ``batch_size`` series per step (a global batch of
``N * batch_size``); ``shuffle=False`` makes the order deterministic (rank r of N takes series r, r+N, …),
so a DDP run with ``batch_size = B / N`` sees the same global batches as one process with ``B``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from ts_neuralode.data.batching import LAYOUTS, Collator, ForecastSpec, TaskSpec, auto_layout
from ts_neuralode.data.covariate_spec import column_uses
from ts_neuralode.data.covariates import CovariateArrays, CovariateSource, CovariateSpec
from ts_neuralode.data.io import READ_KEYS, as_frame, read_series
from ts_neuralode.data.loaders import series_loader
from ts_neuralode.data.season import detect_season
from ts_neuralode.data.tasks import positive_duration, prepare_forecast, prepare_series_task, series_split
from ts_neuralode.data.transform import SeriesTransform
from ts_neuralode.errors import ConfigError, check_choice

TASKS = ("interpolation", "extrapolation", "forecast")
SPLITS = ("series", "time")


class _FolderDispatch(type):
    """``IrregularTimeSeriesDataModule(path=FOLDER, ...)`` with a folder (a partitioned Parquet dataset) gives a
    :class:`~ts_neuralode.data.parquet_stream.ParquetFolderDataModule`, which streams it in shards of whole series.
    (A metaclass, not ``__new__``: option parsers read the signature of ``__init__``.)"""

    #: the data module class for folders, registered by :mod:`ts_neuralode.data.parquet_stream` (which
    #: ``ts_neuralode.data`` imports, so it is registered before any data module is made)
    folder_module: type | None = None

    def __call__(cls, *args, **kwargs):
        path = kwargs.get("path", args[0] if args else None)
        if (
            cls is IrregularTimeSeriesDataModule
            and kwargs.get("df") is None
            and path is not None
            and os.path.isdir(os.fspath(path))
            and _FolderDispatch.folder_module is not None
        ):
            cls = _FolderDispatch.folder_module
        return super().__call__(*args, **kwargs)


class IrregularTimeSeriesDataModule(L.LightningDataModule, metaclass=_FolderDispatch):
    """Irregularly sampled series for interpolation, extrapolation or forecast windows (see the module docstring).

    Args:
        path: CSV file (or pass ``df``).
        format: "long" (one row per series and time) or "wide" (see :func:`ts_neuralode.data.io.read_series`).
        id_col: the series id column (None: the whole file is one series).
        time_col: the time column (numbers or datetimes).
        value_cols: the value columns (default: ``y`` if there is one in long format, else every numeric column
            other than id, time and masks).
        mask_cols: 0/1 observation mask columns, aligned with value_cols.
        time_unit: a datetime column's unit of model time, a pandas unit ("s", "min", "h", "D", "W"; default "h";
            ignored for numeric times).
        duplicates: rows sharing a series and time: "error" or "mean".
        task: "interpolation", "extrapolation" or "forecast".
        obs_fraction: interpolation's observed fraction.
        cut: extrapolation cut as a fraction of each series' span.
        cut_time: an absolute extrapolation cut instead.
        extrap_obs_fraction: fraction of the conditioning window observed in extrapolation (default all).
        layout: "auto" (default: a union grid where the series share their time stamps, else per-series padded
            grids; :func:`~ts_neuralode.data.batching.auto_layout`), "union" or "padded".
        batch_size: training loader batch size.
        eval_batch_size: validation/test/predict loader batch size (default: batch_size).
        val_fraction: fraction of the series held out for validation.
        test_fraction: fraction of the series held out for testing.
        seed: split and subsample seed.
        scaler: "standard", "minmax", "robust", "none" or "log" (the log of the forecast channels, standardised).
        time_scale: "auto" or a number.
        time_origin: "series" or "zero" (see :mod:`ts_neuralode.data.transform`).
        predict_split: which series predict_dataloader serves: "all", "train", "val" or "test".
        shuffle: shuffle the training series every epoch (default True; False: a fixed order, e.g. to
            compare a DDP run with a single-process one batch for batch).
        horizon: forecast task: how far after the cutoff targets are scored (required; a number of the data's
            time units or a duration such as "2D").
        context: forecast task: how far before the cutoff the model looks (default None: all history).
        windows_per_series: forecast task: training windows per series per epoch (an int, or "auto").
        split_by: "series" or "time" (default: "time" for the forecast task, "series" otherwise; "time" applies
            to the forecast task only).
        train_end: forecast task split by time: one cutoff time for every series (a number or datetime on the
            data's own time axis) instead of the last horizons: training windows lie before it (the scaler is
            fitted on that part), validation scores the horizon after it, conditioned on the context before
            it (val_fraction / test_fraction are then ignored; there is no test split).
        holdout_shift: forecast task split by time: move the validation (and test) horizons this many horizons back
            from each series' end; the observations after them are not used (default 0). The automatic model
            choice scores a trial on several such backtest folds where there are few series
            (:mod:`ts_neuralode.api.model_choice_folds`).
        season: the period of the seasonal naive baseline and the harmonic base (a duration or a number of time
            units), or ``"auto"``: chosen from the calendar's periods by the harmonic fit (datetimes only;
            :mod:`ts_neuralode.data.season`); the LightningModule gets it in model units through
            :attr:`season_period`.
        future_cols: known-future covariate columns (a control ``u(t)`` of the dynamics, never forecast or scored;
            :mod:`ts_neuralode.data.covariates`). future_interp: ``"constant"`` (default) or ``"linear"``, one for
            all, a list (one per column) or a ``{column: kind}`` dict. calendar: calendar features computed as
            known-future covariates (``time_of_day``, ``day_of_week``, ``day_of_year``; datetimes only). The
            model gets the fitted spec through :attr:`covariates`.
        past_cols: past-only covariates: extra input channels (after the value columns) the models condition on,
            never forecast or scored (their target mask is 0). static_cols: one value per series, numeric or
            categorical (one-hot): they condition the models' initial state / encoding.
    """

    #: the data module holds all the series (False for one shard of a Parquet folder: the checks that need every
    #: series, e.g. "no series has a validation window", are then made by the folder module over all shards)
    whole_data = True

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
        layout: str = "auto",
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
        horizon: float | str | None = None,
        context: float | str | None = None,
        windows_per_series: int | str = "auto",
        split_by: str | None = None,
        season: float | str | None = None,
        future_cols: list[str] | None = None,
        future_interp: str | list[str] | dict[str, str] | None = None,
        calendar: list[str] | None = None,
        past_cols: list[str] | None = None,
        static_cols: list[str] | None = None,
        train_end: float | str | None = None,
        holdout_shift: int = 0,
    ):
        super().__init__()

        df = as_frame(df)  # a polars DataFrame or a pyarrow Table: through the Arrow interchange
        if (path is None) == (df is None):
            raise ConfigError("give exactly one of path=... (a CSV file) or df=... (a pandas DataFrame)")
        check_choice(task, "task", TASKS)
        split_by = split_by or ("time" if task == "forecast" else "series")
        check_choice(split_by, "split_by", SPLITS)
        if split_by == "time" and task != "forecast":
            raise ConfigError(
                f"split_by='time' applies to task='forecast' only (task={task!r} splits by series); "
                "drop split_by or pass task='forecast' with a horizon"
            )
        if task == "forecast" and horizon is None:
            raise ConfigError(
                "task='forecast' needs a horizon: pass --data.horizon (a number of the data's time "
                "units, or a duration such as 2D for datetimes)"
            )
        if train_end is not None and (task != "forecast" or split_by != "time"):
            raise ConfigError(
                f"train_end applies to task='forecast' split by time (task={task!r}, split_by="
                f"{split_by!r}); pass --data.task forecast with a horizon, or drop train_end"
            )
        if isinstance(holdout_shift, bool) or not str(holdout_shift).isdigit():
            raise ConfigError(f"holdout_shift={holdout_shift!r} must be an integer >= 0 (a number of horizons)")
        if int(holdout_shift) and (task != "forecast" or split_by != "time" or train_end is not None):
            raise ConfigError(
                f"holdout_shift={holdout_shift} applies to task='forecast' split by time without train_end; "
                "drop holdout_shift (or train_end)"
            )
        if windows_per_series != "auto" and not (str(windows_per_series).isdigit() and int(windows_per_series) >= 1):
            raise ConfigError(f"windows_per_series={windows_per_series!r} must be 'auto' or an integer >= 1")
        check_choice(layout, "layout", ("auto", *LAYOUTS))
        for name, val in (("obs_fraction", obs_fraction), ("extrap_obs_fraction", extrap_obs_fraction)):
            if not 0.0 < float(val) <= 1.0:
                raise ConfigError(f"{name}={val} must be in (0, 1]")
        if cut_time is None and not 0.0 < float(cut) < 1.0:
            raise ConfigError(f"cut={cut} must be in (0, 1) (a fraction of each series' span); or pass cut_time")
        if not (0.0 <= val_fraction < 1 and 0.0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum to less than 1"
            )
        check_choice(predict_split, "predict_split", ("all", "train", "val", "test"))
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        self.save_hyperparameters(ignore=["df"])
        self.path, self.df = path, df
        self.read_kwargs: dict[str, Any] = {k: self.hparams[k] for k in READ_KEYS}  # the reading arguments, as saved
        self.task, self.obs_fraction, self.cut, self.cut_time = task, float(obs_fraction), float(cut), cut_time
        self.extrap_obs_fraction = float(extrap_obs_fraction)
        self.layout, self.batch_size, self.eval_batch_size = layout, int(batch_size), int(eval_batch_size or batch_size)
        self.val_fraction, self.test_fraction, self.seed = float(val_fraction), float(test_fraction), int(seed)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.scaler, self.time_scale, self.time_origin = scaler, time_scale, time_origin
        self.predict_split, self.shuffle = predict_split, bool(shuffle)
        self.horizon, self.context, self.split_by = horizon, context, split_by
        self.season, self.train_end, self.holdout_shift = season, train_end, int(holdout_shift)
        self.windows_per_series = windows_per_series if windows_per_series == "auto" else int(windows_per_series)
        self._cov_spec = CovariateSpec.configure(future_cols, future_interp, calendar, past_cols, static_cols)
        if self._cov_spec is not None:
            self.read_kwargs["exclude_cols"] = list(self._cov_spec.future_cols) + list(self._cov_spec.static_cols)
            self.read_kwargs["past_cols"] = list(self._cov_spec.past_cols)
        self._ready = False

    # --- preparation (lazy: properties trigger it, so models can be sized before trainer.fit) --------
    def setup(self, stage: str | None = None) -> None:
        self._prepare()

    def _series_split(self, table) -> dict[str, np.ndarray]:
        """Seeded split of whole series into train/val/test (:func:`ts_neuralode.data.tasks.series_split`)."""
        return series_split(table, self.seed, self.val_fraction, self.test_fraction)

    def _fit_transform(self, table, series, window: float | None = None) -> SeriesTransform:
        """The value scaler and time scale, fitted on rows of ``series`` of ``table`` (the streaming Parquet module
        fits them over all shards instead: :mod:`ts_neuralode.data.parquet_stream`)."""
        return SeriesTransform.fit(
            table, series, scaler=self.scaler, time_scale=self.time_scale, time_origin=self.time_origin, window=window
        )

    def _prepare(self) -> None:
        if self._ready:
            return
        source = self.df if self.df is not None else self.path
        table = read_series(source, **self.read_kwargs)
        prepared = (prepare_forecast if self.task == "forecast" else prepare_series_task)(self, table)
        self.table, self.split, self._transform = prepared.table, prepared.split, prepared.transform
        self.arrays, self.origins = prepared.arrays, prepared.origins
        self._specs, self._train_items = prepared.specs, prepared.train_items
        if self._cov_spec is not None:
            self._attach_covariates(source)
        self._ready = True

    def _attach_covariates(self, source) -> None:
        """Read the known-future covariates of every series, fit their scaling on the training series and attach
        them to the series arrays (so every batch carries ``u(t)``)."""
        arrays = CovariateArrays.read(
            [source], self.table, self._cov_spec, id_col=self.table.id_col, time_col=self.table.time_col
        )
        train_spec = getattr(self, "_specs", {}).get("train")
        until = getattr(train_spec, "end", None)  # the forecast task split by time: nothing after the training end
        self._cov_spec = self._cov_spec.fit(
            arrays, self.split["train"], self.table.codec, self._transform.time_scale, until
        )
        self.arrays.covariates = CovariateSource(
            self._cov_spec, arrays, self.table.codec, float(self._transform.time_scale), self.origins
        )
        n_past = len(self._cov_spec.past_cols)
        if n_past:  # past-only channels are inputs: never targets
            self.arrays.scored = np.r_[np.ones(self.table.num_channels - n_past), np.zeros(n_past)].astype(np.float32)

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
    def covariates(self) -> dict | None:
        """The fitted known-future covariate spec (JSON; the model's ``covariates``), or None."""
        if self._cov_spec is None:
            return None
        self._prepare()
        return self._cov_spec.state_dict()

    @property
    def series_ids(self) -> list:
        self._prepare()
        return list(self.table.ids)

    @property
    def train_items_per_epoch(self) -> int:
        """Training samples per epoch: the training series, or for the forecast task their windows."""
        self._prepare()
        return len(self._train_items)

    @property
    def season_period(self) -> float | None:
        """The ``season`` in model time units (for the seasonal baseline), or None."""
        season = self.resolved_season
        if season is None:
            return None
        return positive_duration(self.table.codec, season, "season") / self._transform.time_scale

    @property
    def resolved_season(self) -> float | str | None:
        """``season``, with ``"auto"`` replaced by the period :func:`ts_neuralode.data.season.detect_season` chooses
        (chosen once; its line is :attr:`season_line`)."""
        if self.season != "auto":
            return self.season
        self._prepare()
        if not hasattr(self, "_detected_season"):
            self._detected_season, self.season_line = detect_season(self.table, self.seed)
        return self._detected_season

    @property
    def column_summary(self) -> str:
        """One line: what each column of the data is used as (targets, masks, covariates, ignored)."""
        self._prepare()
        line = column_uses(self.table, self._cov_spec)
        if self.season == "auto":
            self.resolved_season  # noqa: B018 (detects once and sets season_line)
            line += f"; {self.season_line}"
        return line

    def split_ids(self, name: str) -> list:
        """Series ids of split ``name`` ("train", "val", "test")."""
        self._prepare()
        return [self.table.ids[i] for i in self.split[name]]

    def to_frame(self, series_idx, times, values, bands: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Predictions for ``series_idx`` [B] (Batch.series_idx) at model ``times`` -> original units/times."""
        self._prepare()
        idx = np.asarray(series_idx.cpu() if hasattr(series_idx, "cpu") else series_idx, dtype=np.int64)
        transform, spec = self.transform, self._cov_spec
        if spec is not None:  # past-only covariates are inputs, never forecast
            transform, values, bands = spec.outputs(transform, values, bands)
        return transform.to_frame(
            [self.table.ids[i] for i in idx], self.origins[idx], times, values, bands, history=(self.table, idx)
        )

    # --- loaders -------------------------------------------------------------------------------
    @property
    def batch_layout(self) -> str:
        """The layout the batches have: ``layout``, with ``"auto"`` resolved on the data
        (:func:`~ts_neuralode.data.batching.auto_layout`; padded for a Parquet folder read in shards)."""
        if self.layout != "auto":
            return self.layout
        if getattr(self, "streams_shards", False):
            return "padded"
        if getattr(self, "_auto_layout", None) is None:  # resolved once: every loader of the fit asks
            self._prepare()
            self._auto_layout = auto_layout(self.table.times, self.table.counts, self.task)
        return self._auto_layout

    def _loader(
        self,
        indices: np.ndarray,
        spec: TaskSpec | ForecastSpec | None,
        shuffle: bool,
        batch_size: int,
        ddp_fixed_order: bool = False,
    ) -> DataLoader:
        trainer = self.trainer if ddp_fixed_order else None
        return series_loader(
            indices,
            Collator(self.arrays, self.batch_layout, spec),
            batch_size,
            shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            ddp_trainer=trainer,
        )

    def train_dataloader(self) -> DataLoader:
        self._prepare()
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        return self._loader(
            self._train_items,
            self._specs["train"],
            self.shuffle,
            self.batch_size,
            ddp_fixed_order=not self.shuffle and world > 1,
        )

    def val_dataloader(self) -> DataLoader:
        self._prepare()
        return self._loader(self.split["val"], self._specs["val"], False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self._prepare()
        return self._loader(self.split["test"], self._specs["test"], False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Conditions on every observed point of each series (targets = every observed point)."""
        self._prepare()
        idx = np.arange(self.table.n_series) if self.predict_split == "all" else self.split[self.predict_split]
        return self._loader(idx, None, False, self.eval_batch_size)

    def state_dict(self) -> dict:
        """Lightning stores this in checkpoints: the JSON-able transform."""
        return {"transform": self._transform.state_dict()} if self._ready else {}

"""Forecast from a trained model (:class:`Predictor`, the body of :class:`~ts_neuralode.api.forecaster.Forecaster`):
observed history in, predictions at any query times out.

    from ts_neuralode.api.forecaster import Forecaster
    fc = Forecaster.load("demo_output/model")             # a model directory, or a Lightning .ckpt
    out = fc.predict(history_df, horizon="30D", num_samples=100, level=[50, 90])
    fc.plot(history_df, out, "plots/")                    # one PNG per series

Query times (per series, after its own last observation unless given explicitly):

* ``horizon``: how far past each series' last observation — a number in the data's time units (for
  datetimes, the ``time_unit`` the model was trained with, default hours) or a duration string / Timedelta
  ("30D", "12h"); with ``freq`` (a step: number or duration string) for a regular grid, else ``num_points``
  evenly spaced points (default 50);
* ``times``: an explicit list shared by every series (numbers or datetimes; may lie inside the history —
  interpolation — or far beyond it), or a DataFrame with ``unique_id`` and ``ds`` columns for per-series times.

Output: a DataFrame in original units and timestamps, Nixtla style: ``unique_id, ds, <model>,
<model>-lo-<L>, <model>-hi-<L>`` per requested level ``L`` (central ``L``% interval from the sampled
predictive distribution, or the Gaussian one for models with a predictive std), ``<model>-q-<P>`` per
requested quantile (``P`` = percent). With several channels there is one row per (series, time, channel)
and a ``channel`` column.

The pieces live in their own modules: model directories and checkpoints in :mod:`ts_neuralode.training.model_store`,
the query-time grammar in :mod:`ts_neuralode.data.query_times`, the output frames in
:mod:`ts_neuralode.api.forecast_frame`, the figures in :mod:`ts_neuralode.api.plotting`; this class ties them together.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ts_neuralode.api import calibration, plotting
from ts_neuralode.api.forecast_chunk import forecast_chunk
from ts_neuralode.api.forecast_frame import fmt_level, model_display_name, parse_levels, parse_quantiles, table_to_long
from ts_neuralode.api.training_extent import load_extent, save_extent
from ts_neuralode.core.progress import show_progress
from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.core.seeding import seeded
from ts_neuralode.core.threads import configure_threads
from ts_neuralode.data.batching import context_start
from ts_neuralode.data.batching import subset_table as _subset_table
from ts_neuralode.data.covariates import CovariateArrays, CovariateSpec
from ts_neuralode.data.io import READ_KEYS, as_frame
from ts_neuralode.data.query_times import check_reachable, count, query_times
from ts_neuralode.errors import ForecastError
from ts_neuralode.models import step_budget as budgets
from ts_neuralode.training.model_store import as_transform, build_module, read_stored, write_model_dir
from ts_neuralode.training.module import clean_hparams


def training_context(datamodule) -> float | str | None:
    """The ``context`` a data module's forecast task trained on (None for other tasks or a whole history)."""
    if getattr(datamodule, "task", None) != "forecast":
        return None
    return getattr(datamodule, "context", None)


class Predictor:
    """A trained model plus the data transform that maps its units back to the user's.

    Args:
        module: the trained :class:`ts_neuralode.training.ForecastingModule` (its ``.model`` is used).
        transform: the fitted :class:`ts_neuralode.data.transform.SeriesTransform`.
        read_options: CSV reading options used for training (format, id/time/value/mask columns …).
        name: name of the forecast column (default: model name, plus the flow kind for flows).
        context: the forecast task's training ``context`` (a duration such as "4D", or a number of time
            units; None: the model saw whole histories). ``predict`` conditions on that much recent history
            by default — what the model was trained to read.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        transform,
        read_options: Mapping[str, Any] | None = None,
        name: str | None = None,
        context: float | str | None = None,
    ) -> None:
        self.module = module.eval()
        self.model = getattr(module, "model", module)
        self.transform = transform
        self.read_options = {k: v for k, v in dict(read_options or {}).items() if k in READ_KEYS}
        self.hparams = clean_hparams(getattr(module, "hparams", {}) or {})
        self.name = name or model_display_name(self.hparams)
        self.context = context
        #: the known-future covariates the model reads (None: none); ``predict`` needs them for every query time
        self.covariate_spec = CovariateSpec.from_state_dict(self.hparams.get("covariates"))
        self.fit_info: dict | None = None  # set by Forecaster.fit
        #: the transform of the forecast channels (the training channels but the past-only covariates)
        spec = self.covariate_spec
        self.output_transform = transform if spec is None else spec.output_transform(transform)
        self.calibration: dict | None = None  # conformal band factors (ts_neuralode.api.calibration), if calibrated
        #: which observations the model trained on (ts_neuralode.api.training_extent), when known
        self.training_extent: dict | None = None

    # ------------------------------------------------------------------------------------------
    # construction, saving, loading
    @classmethod
    def from_module(cls, module: torch.nn.Module, datamodule, name: str | None = None) -> Predictor:
        """From a trained module and the data module it was trained on (its transform, read options and, for
        the forecast task, its context)."""
        read = dict(getattr(datamodule, "read_kwargs", {}) or {})
        return cls(module, datamodule.transform, read, name=name, context=training_context(datamodule))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model directory ``path`` (``weights.pt`` + ``config.json``, replaced atomically; see
        :func:`ts_neuralode.training.model_store.write_model_dir`); returns it."""
        out = write_model_dir(
            path, self.module, self.hparams, self.transform, self.read_options, self.name, self.context
        )

        if self.calibration is not None:
            calibration.save(out, self.calibration)
        if self.training_extent is not None:
            save_extent(out, self.training_extent)
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike, transform=None, map_location: str | torch.device = "cpu", name: str | None = None
    ) -> Predictor:
        """Load a model directory (``weights.pt`` + ``config.json``) or a Lightning ``.ckpt``.

        A ``.ckpt`` written by ``ts-neuralode fit`` carries the data transform itself; for others pass
        ``transform`` (a SeriesTransform, its ``state_dict()`` dict, or the path of a JSON file holding it,
        e.g. a model directory's ``config.json``). Everything is loaded with ``weights_only=True``; older model
        formats are mapped onto this version's options (:mod:`ts_neuralode.training.model_store`). A directory written
        by an
        :class:`~ts_neuralode.api.model_choice_ensemble.EnsembleForecaster` loads as one through
        :meth:`Forecaster.load <ts_neuralode.api.forecaster.Forecaster.load>` (this class reads one model).
        """
        stored = read_stored(path, map_location)
        tstate = transform if transform is not None else stored.transform
        if tstate is None:
            raise ForecastError(
                f"{path}: the checkpoint holds no data transform; pass transform=... (a model "
                "directory's config.json or a SeriesTransform)"
            )
        tr = as_transform(tstate)
        module = build_module(stored, Path(path), map_location)
        fc = cls(module, tr, stored.read_options, name=name or stored.name, context=stored.context)
        if Path(path).is_dir():
            fc.calibration = calibration.load(path)
            fc.training_extent = load_extent(path)
        return fc

    def split_ids(self, name: str) -> list:
        """The series ids of the fit's split ``name`` ("train", "val" or "test"): e.g. ``backtest --series`` with
        the ``"test"`` ids scores only series the model never saw. ForecastError when the model does not record its
        split (a model saved before this version, or built from a module)."""
        if name not in ("train", "val", "test"):
            raise ForecastError(f"split {name!r}: pass 'train', 'val' or 'test'")
        split = (self.training_extent or {}).get("split")
        if split is None:
            raise ForecastError(
                "this model does not record its fit's split (it was saved without "
                "training_extent.json); fit it again with this version"
            )
        return list(split.get(name, []))

    # ------------------------------------------------------------------------------------------
    # prediction
    def read_history(self, history: Any, **read_options: Any):
        """A history (CSV path, DataFrame) -> SeriesTable on the training time axis and channels."""
        kw = {k: v for k, v in self.read_options.items() if k not in ("id_col", "time_col", "value_cols")}
        kw.setdefault("min_points", 1)  # one observation is enough to condition on
        kw.update(read_options)
        history = as_frame(history)  # a polars DataFrame or a pyarrow Table: through the Arrow interchange
        if isinstance(history, (str, os.PathLike, pd.DataFrame)):
            return self.transform.read(history, **kw)
        if hasattr(history, "offsets"):
            return history
        raise ForecastError(
            f"history of type {type(history).__module__.split('.')[0]}.{type(history).__name__} is "
            "not supported; pass a pandas or polars DataFrame, a pyarrow Table, or a CSV/Parquet path"
        )

    def predict(
        self,
        history: Any,
        horizon: float | str | pd.Timedelta | None = None,
        *,
        times: Any = None,
        freq: float | str | pd.Timedelta | None = None,
        num_points: int | None = None,
        num_samples: int = SAMPLING.num_samples,
        level: Iterable[float] | float | None = SAMPLING.level,
        quantiles: Iterable[float] | None = None,
        series: Sequence[Any] | None = None,
        batch_size: int = SAMPLING.batch_size,
        progress: bool = False,
        seed: int | None = SAMPLING.seed,
        context: float | str | pd.Timedelta | None = None,
        future: pd.DataFrame | str | os.PathLike | None = None,
        calibrated: bool | None = None,
        max_steps: int | None = None,
        covariates: CovariateArrays | None = None,
        **read_options: Any,
    ) -> pd.DataFrame:
        """Forecast every series of ``history`` at the query times (see the module docstring).

        Args:
            history: DataFrame or CSV path in the training format (read options default to training's).
            horizon / freq / num_points / times: the query times.
            num_samples: predictive samples (latent models); quantiles and intervals come from them.
            level: central interval levels in percent; quantiles: extra quantiles in (0, 1).
            series: only these series ids (ForecastError for ids not in the history).
            batch_size: series per forward pass. progress: show a progress bar. seed: sampling seed.
            context: condition on only the observations within this duration before each series' last one
                (a number of time units or a duration such as "30D"; the same window rule as the forecast
                task's ``context`` in training). Default None: the model's training context
                (``self.context``) when it was trained on the forecast task with one, else the whole
                history; "all": the whole history in any case.
            future: known-future covariate values after the history (a DataFrame or CSV with the id and time
                columns — the id may be left out for a single series — and the model's ``future_cols``). Per series
                and column, ``future``'s samples replace the history's from the first time ``future`` gives a value
                on (a what-if plan overrides the history's own schedule rows); before it the history's samples
                stand. Every covariate must be known up to each series' last query time (ForecastError naming the
                column otherwise).
            calibrated: stretch the bands by the model's conformal calibration (:mod:`ts_neuralode.api.calibration`,
                fitted per horizon bucket at the end of ``fit`` on its held-out validation windows, or by
                ``backtest --calibrate``); the quantile columns are then left out (they describe the uncalibrated
                distribution). None (default): when the model has a calibration and no ``quantiles`` are asked
                for; True: always (ForecastError when the model has none); False: the model's own bands.
            max_steps: ODE solver steps per solve (:mod:`ts_neuralode.models.step_budget`); default None: what the
                horizon needs, at least the model's own ``max_steps``, at most ``FORECAST_MAX_STEPS``.
            covariates: the covariates already read (:class:`~ts_neuralode.data.covariates.CovariateArrays` with
                ``ids``, e.g. of a longer history: the backtest reads them once); used instead of reading the
                history and ``future``, still checked to cover the query times.
        Returns:
            DataFrame ``unique_id, ds, [channel,] <name>, <name>-lo-L, <name>-hi-L, <name>-q-P``.
        """
        configure_threads()  # torch threads fitted to this process's CPUs (ts_neuralode.core.threads)
        num_samples = count(num_samples, "num_samples")
        batch_size = count(batch_size, "batch_size")
        history, future = as_frame(history), as_frame(future)
        if calibrated and self.calibration is None:
            raise ForecastError(
                "calibrated=True, but this model has no band calibration; calibrate it first "
                "('ts-neuralode backtest --calibrate' or ts_neuralode.api.backtest.calibrate)"
            )
        levels, qs = parse_levels(level), parse_quantiles(quantiles)
        if calibrated is None:
            calibrated = self.calibration is not None and not qs
            if calibrated:
                missing = [lv for lv in levels if fmt_level(lv) not in self.calibration["factors"]]
                if missing:
                    raise ForecastError(
                        f"level {fmt_level(missing[0])} has no calibration (the model's calibrated "
                        f"levels: {', '.join(self.calibration['factors'])}); ask for those levels, "
                        "or for the model's own bands with calibrated=False (--raw_bands)"
                    )
        table = self.read_history(history, **read_options)
        if context is None:
            context = self.context
        elif isinstance(context, str) and context.strip().lower() == "all":
            context = None
        if context is not None:
            table = self._recent(table, context, "context")
        self.transform.check_table(table)  # the chunks' batches are built below; here only ids and origins
        ids = list(table.ids)
        index = list(range(len(ids)))
        if series is not None:
            if isinstance(series, (str, bytes)) or not hasattr(series, "__iter__"):
                series = [series]
            series = list(series)
            if not series:
                raise ForecastError("series=[] names no series; pass some ids, or series=None for all of them")
            known = {str(s): i for i, s in enumerate(ids)}
            missing = [s for s in series if str(s) not in known]
            if missing:
                raise ForecastError(
                    f"series {missing[:5]} not found in the history (it has {len(ids)} series: "
                    f"{', '.join(map(str, ids[:5]))}{' …' if len(ids) > 5 else ''})"
                )
            index = [known[str(s)] for s in series]
        raw_q, exact_q = query_times(self.transform.codec, table, index, horizon, times, freq, num_points)
        check_reachable(self.transform, table, self.transform.origins(table), index, raw_q, exact_q, context)
        covariates = self._covariates(history, future, table, index, raw_q, covariates)
        chunks = [index[i : i + batch_size] for i in range(0, len(index), batch_size)]
        rows_of = {i: r for r, i in enumerate(index)}
        user_steps = budgets.check_max_steps(max_steps)
        span = budgets.forecast_span(self.transform, table, index, raw_q)
        steps = budgets.forecast_budget(self.module, span.span, user_steps)
        bar = show_progress(chunks, progress, "forecast", "batch")
        with seeded(seed):
            try:
                frames = [
                    forecast_chunk(
                        self,
                        table,
                        chunk,
                        [raw_q[rows_of[i]] for i in chunk],
                        num_samples,
                        levels,
                        qs,
                        [exact_q[rows_of[i]] for i in chunk],
                        covariates,
                        steps,
                    )
                    for chunk in bar
                ]
            except ForecastError as err:
                asked = f"horizon={horizon!r}" if horizon is not None else "the query times"
                far = budgets.steps_exceeded(
                    err.__cause__, self.module, steps or 0, self.transform, span, asked, user_steps is not None
                )
                if far is None:
                    raise
                raise far from err
            finally:
                getattr(bar, "close", lambda: None)()  # clears the bar: an error line stands on its own
        out = pd.concat(frames, ignore_index=True)
        if calibrated:
            lead = calibration.lead_since_last(table, out["unique_id"], out["ds"])
            out = calibration.apply(out, self.calibration, self.name, lead)
        return out

    def _covariates(
        self,
        history: Any,
        future: Any,
        table,
        index: list[int],
        raw_q: list[np.ndarray],
        given: CovariateArrays | None = None,
    ):
        """The known-future covariates of ``table``'s series from the history and ``future``, or from ``given``
        (read before; matched by id), None when the model takes none; checked to cover every query time."""
        spec = self.covariate_spec
        if spec is None:
            return None
        if given is not None:
            arrays = given.align(table.ids)
        elif not spec.future_cols and not spec.static_cols:
            return CovariateArrays.read([], table, spec, id_col=table.id_col, time_col=table.time_col)
        else:
            arrays = self.read_covariates(history, future, table)
        if spec.future_cols:
            arrays.check_coverage(
                spec, table.ids, index, np.array([float(np.max(q)) for q in raw_q]), self.transform.codec
            )
        return arrays

    def read_covariates(self, history: Any, future: Any, table) -> CovariateArrays:
        """The covariates of ``table``'s series read from ``history`` (DataFrame or CSV path) and ``future`` (see
        :meth:`predict`)."""
        spec = self.covariate_spec
        if (
            spec is not None
            and (spec.future_cols or spec.static_cols)
            and not isinstance(history, (str, os.PathLike, pd.DataFrame))
        ):
            raise ForecastError(
                f"the model reads covariates {spec.future_cols + spec.static_cols}: pass the history "
                "as a DataFrame or CSV path holding them"
            )
        sources = [history] + ([] if future is None else [future])
        return CovariateArrays.read(sources, table, spec, id_col=table.id_col, time_col=table.time_col)

    def target_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A long frame (``unique_id, ds, channel, y``) without the past-only covariate channels
        (:meth:`CovariateSpec.target_rows`)."""
        return frame if self.covariate_spec is None else self.covariate_spec.target_rows(frame)

    def _duration(self, value: Any, what: str) -> float:
        """A duration (number in raw units, or a Timedelta / string for datetime data) -> raw float."""
        return self.transform.codec.duration(value, what, ForecastError)

    def _recent(self, table, window: Any, what: str):
        """``table`` with only each series' observations within ``window`` before its last one (at least that
        one): :func:`ts_neuralode.data.batching.context_start`, the forecast task's context rule."""
        w = self._duration(window, what)
        if not w > 0:
            raise ForecastError(f"{what}={window!r} must be positive (e.g. '5D' or a number)")
        lo = context_start(table.times, table.offsets[:-1], table.counts, table.last_times(), w)
        return _subset_table(table, range(table.n_series), lo=lo)

    # ------------------------------------------------------------------------------------------
    # history frames and plots
    def history_frame(self, history: Any, **read_options: Any) -> pd.DataFrame:
        """The observed history as ``unique_id, ds, channel, y`` (original units and timestamps)."""
        table = self.read_history(history, **read_options)
        return table_to_long(table)

    def plot(
        self,
        history: Any,
        forecast: pd.DataFrame,
        out_dir: str | os.PathLike,
        series: Sequence[Any] | None = None,
        max_series: int | None = None,
        history_window: float | str | pd.Timedelta | None = None,
        **read_options: Any,
    ) -> list[Path]:
        """One PNG per series (history, forecast mean, interval bands) in ``out_dir``; returns the paths.

        ``history_window`` (a duration like ``"5D"`` or a number of time units) shows only that much history
        before each series' last observation (default: all of it).
        """

        table = self.read_history(history, **read_options)
        if history_window is not None:
            table = self._recent(table, history_window, "history_window")
        hist = self.target_rows(table_to_long(table))  # not the past-only covariates
        ids = list(series) if series is not None else list(dict.fromkeys(forecast["unique_id"].tolist()))
        if max_series is not None:
            ids = ids[:max_series]
        last = dict(zip([str(i) for i in table.ids], table.user_times(table.offsets[1:] - 1), strict=True))
        hist = hist.assign(unique_id=hist["unique_id"].astype(str))
        fc = forecast.assign(unique_id=forecast["unique_id"].astype(str))
        return plotting.plot_forecasts(hist, fc, self.name, out_dir, series=[str(i) for i in ids], cutoffs=last)

    def plot_validation_forecasts(
        self, datamodule, out_dir: str | os.PathLike, n_series: int = 3, num_samples: int = 50
    ) -> list[Path]:
        """Fit-time figures: condition on the first half of a few validation series, forecast the rest."""

        return plotting.validation_forecast_figures(self, datamodule, out_dir, n_series, num_samples)


__all__ = ["Predictor", "table_to_long", "training_context"]

"""Forecast from a trained model: observed history in, predictions at any query times out.

    from ts_neuralode.forecaster import Forecaster
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

A model directory holds ``weights.pt`` (the module's ``state_dict``, loaded with ``weights_only=True``) and
``config.json`` (module hyperparameters, the data transform's ``state_dict()`` and the CSV reading options)
— no pickles.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ts_neuralode.data.batching import context_start
from ts_neuralode.data.batching import subset_table as _subset_table
from ts_neuralode.errors import ConfigError, ForecastError

FORMAT = "ts_neuralode.model/2"
#: older formats that still load: /1 spelled the evolution options flat (mapped onto the nested config)
READABLE_FORMATS = (FORMAT, "ts_neuralode.model/1")
WEIGHTS = "weights.pt"
CONFIG = "config.json"
READ_KEYS = ("format", "id_col", "time_col", "value_cols", "mask_cols", "time_unit", "duplicates")
DEFAULT_LEVELS = (50, 90)


def _module_class():
    from ts_neuralode.lightning import ForecastingModule

    return ForecastingModule


def _clean_hparams(hparams: Mapping[str, Any]) -> dict:
    """Module hyperparameters without LightningCLI's private keys (``_class_path``, ``_instantiator``)."""
    return {k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}


def _jsonable(obj: Any) -> Any:
    """Deep copy of ``obj`` with only JSON types (tuples -> lists); raise ConfigError on anything else."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ConfigError(f"hyperparameter value {obj!r} ({type(obj).__name__}) is not JSON-serialisable; "
                      "model options must be plain numbers, strings, lists or dicts")


def model_display_name(hparams: Mapping[str, Any]) -> str:
    """Column name of the point forecast: the model name, plus the evolution when it is not an ODE."""
    model = str(hparams.get("model", "model"))
    evolution = hparams.get("evolution", "ode")
    kind = str(evolution.get("kind", "ode") if isinstance(evolution, Mapping) else getattr(evolution, "kind", evolution))
    return model if kind == "ode" else f"{model}_{kind}"


def parse_levels(level: Iterable[float] | float | None) -> list[float]:
    if level is None:
        return []
    levels = [level] if isinstance(level, (int, float)) else list(level)
    for lv in levels:
        if not 0 < float(lv) < 100:
            raise ForecastError(f"level {lv} must be a percentage strictly between 0 and 100 (e.g. 90)")
    return sorted({float(lv) for lv in levels})


def _fmt(x: float) -> str:
    return f"{x:g}"


def training_context(datamodule) -> float | str | None:
    """The ``context`` a data module's forecast task trained on (None for other tasks or a whole history)."""
    if getattr(datamodule, "task", None) != "forecast":
        return None
    return getattr(datamodule, "context", None)


class Forecaster:
    """A trained model plus the data transform that maps its units back to the user's.

    Args:
        module: the trained :class:`ts_neuralode.lightning.ForecastingModule` (its ``.model`` is used).
        transform: the fitted :class:`ts_neuralode.data.transform.SeriesTransform`.
        read_options: CSV reading options used for training (format, id/time/value/mask columns …).
        name: name of the forecast column (default: model name, plus the flow kind for flows).
        context: the forecast task's training ``context`` (a duration such as "4D", or a number of time
            units; None: the model saw whole histories). ``predict`` conditions on that much recent history
            by default — what the model was trained to read.
    """

    def __init__(self, module: torch.nn.Module, transform, read_options: Mapping[str, Any] | None = None,
                 name: str | None = None, context: float | str | None = None) -> None:
        self.module = module.eval()
        self.model = getattr(module, "model", module)
        self.transform = transform
        self.read_options = {k: v for k, v in dict(read_options or {}).items() if k in READ_KEYS}
        self.hparams = _clean_hparams(getattr(module, "hparams", {}) or {})
        self.name = name or model_display_name(self.hparams)
        self.context = context

    # ------------------------------------------------------------------------------------------
    # construction, saving, loading
    @classmethod
    def from_module(cls, module: torch.nn.Module, datamodule, name: str | None = None) -> "Forecaster":
        """From a trained module and the data module it was trained on (its transform, read options and, for
        the forecast task, its context)."""
        read = dict(getattr(datamodule, "read_kwargs", {}) or {})
        return cls(module, datamodule.transform, read, name=name, context=training_context(datamodule))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``weights.pt`` + ``config.json`` to directory ``path`` (created); returns it.

        The directory is replaced atomically (:func:`ts_neuralode.atomic.atomic_write_dir`): a process killed
        during the save leaves the previous model directory, or the new one complete, never a mix."""
        from ts_neuralode.atomic import atomic_write_dir

        path = Path(path)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        config = {
            "format": FORMAT,
            "name": self.name,
            "module": {"class": "ts_neuralode.lightning.ForecastingModule", "hparams": _jsonable(self.hparams)},
            "transform": _jsonable(self.transform.state_dict()),
            "read_options": _jsonable(self.read_options),
            "context": _jsonable(self.context),
        }
        try:
            from ts_neuralode import __version__

            config["ts_neuralode_version"] = __version__
        except ImportError:  # pragma: no cover
            pass
        text = json.dumps(config, indent=2) + "\n"

        def fill(tmp: Path) -> None:
            torch.save(state, tmp / WEIGHTS)
            (tmp / CONFIG).write_text(text)

        try:
            return atomic_write_dir(path, fill)
        except NotADirectoryError as err:
            raise ConfigError(f"{path}: exists and is not a directory; pass a directory for the model") from err

    @classmethod
    def load(cls, path: str | os.PathLike, transform=None, map_location: str | torch.device = "cpu",
             name: str | None = None) -> "Forecaster":
        """Load a model directory (``weights.pt`` + ``config.json``) or a Lightning ``.ckpt``.

        A ``.ckpt`` written by ``ts-neuralode fit`` carries the data transform itself; for others pass
        ``transform`` (a SeriesTransform, its ``state_dict()`` dict, or the path of a JSON file holding it,
        e.g. a model directory's ``config.json``). Everything is loaded with ``weights_only=True``.
        """
        from ts_neuralode.atomic import interrupted_backup

        p = Path(path)
        backup = interrupted_backup(p)
        if backup is not None:
            raise ForecastError(f"{p}: missing; a save was interrupted and left the previous model at {backup}; "
                                f"rename it to {p.name} or save the model again")
        if not p.exists():
            raise ForecastError(f"{p}: no such model directory or checkpoint; pass the path written by "
                                "'ts-neuralode fit' (a model directory or a .ckpt file)")
        if p.is_dir():
            cfg_path, w_path = p / CONFIG, p / WEIGHTS
            if not cfg_path.is_file() or not w_path.is_file():
                raise ForecastError(f"{p}: not a model directory (needs {CONFIG} and {WEIGHTS}); "
                                    "pass a directory written by Forecaster.save or 'ts-neuralode fit'")
            try:
                config = json.loads(cfg_path.read_text())
            except ValueError as err:
                raise ForecastError(f"{cfg_path}: not valid JSON ({err})") from err
            if config.get("format") not in READABLE_FORMATS:
                raise ForecastError(f"{cfg_path}: unknown model format {config.get('format')!r} (expected {FORMAT}); "
                                    "save it again with this version (Forecaster.save)")
            hparams = config["module"]["hparams"]
            state = _torch_load(w_path, map_location)
            tstate = config["transform"]
            read = config.get("read_options", {})
            name = name or config.get("name")
            context = config.get("context")
        else:
            ckpt = _torch_load(p, map_location)
            if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
                raise ForecastError(f"{p}: not a Lightning checkpoint (no state_dict); pass a .ckpt from a fit")
            hparams = ckpt.get("hyper_parameters") or {}
            state = ckpt["state_dict"]
            dm_hparams = ckpt.get("datamodule_hyper_parameters") or {}
            read = {k: v for k, v in dm_hparams.items() if k in READ_KEYS}
            context = dm_hparams.get("context") if dm_hparams.get("task") == "forecast" else None
            tstate = None
            for key, val in ckpt.items():
                if isinstance(val, Mapping) and "transform" in val and "DataModule" in str(key):
                    tstate = val["transform"]
        if transform is not None:
            tstate = transform
        if tstate is None:
            raise ForecastError(f"{p}: the checkpoint holds no data transform; pass transform=... (a model "
                                "directory's config.json or a SeriesTransform)")
        tr = _as_transform(tstate)
        module = _module_class().from_hparams(hparams)
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ForecastError(f"{p}: weights do not match the configured model ({first})") from err
        module.to(map_location)
        return cls(module, tr, read, name=name, context=context)

    # ------------------------------------------------------------------------------------------
    # prediction
    def read_history(self, history: Any, **read_options: Any):
        """A history (CSV path, DataFrame) -> SeriesTable on the training time axis and channels."""
        kw = {k: v for k, v in self.read_options.items() if k not in ("id_col", "time_col", "value_cols")}
        kw.setdefault("min_points", 1)  # one observation is enough to condition on
        kw.update(read_options)
        if isinstance(history, (str, os.PathLike)) or isinstance(history, pd.DataFrame):
            return self.transform.read(history, **kw)
        if hasattr(history, "offsets"):
            return history
        raise ForecastError(f"history of type {type(history).__name__} is not supported; pass a pandas "
                            "DataFrame or a CSV path")

    def predict(
        self,
        history: Any,
        horizon: float | str | pd.Timedelta | None = None,
        *,
        times: Any = None,
        freq: float | str | pd.Timedelta | None = None,
        num_points: int | None = None,
        num_samples: int = 100,
        level: Iterable[float] | float | None = DEFAULT_LEVELS,
        quantiles: Iterable[float] | None = None,
        series: Sequence[Any] | None = None,
        batch_size: int = 64,
        progress: bool = False,
        seed: int | None = 0,
        context: float | str | pd.Timedelta | None = None,
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
        Returns:
            DataFrame ``unique_id, ds, [channel,] <name>, <name>-lo-L, <name>-hi-L, <name>-q-P``.
        """
        num_samples = _count(num_samples, "num_samples")
        batch_size = _count(batch_size, "batch_size")
        levels = parse_levels(level)
        qs = sorted({float(q) for q in (quantiles or [])})
        for q in qs:
            if not 0.0 < q < 1.0:
                raise ForecastError(f"quantile {q} must be strictly between 0 and 1 (e.g. 0.1, 0.9)")
        table = self.read_history(history, **read_options)
        if context is None:
            context = self.context
        elif isinstance(context, str) and context.strip().lower() == "all":
            context = None
        if context is not None:
            table = self._recent(table, context, "context")
        prepared_all = self.transform.make_batch(table)
        ids = list(prepared_all.series_ids)
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
                raise ForecastError(f"series {missing[:5]} not found in the history (it has {len(ids)} series: "
                                    f"{', '.join(map(str, ids[:5]))}{' …' if len(ids) > 5 else ''})")
            index = [known[str(s)] for s in series]
        raw_q, exact_q = self._query_raw(table, prepared_all, index, horizon, times, freq, num_points)
        firsts = table.first_times()[index]
        first_rows = table.offsets[:-1][index]
        for row, i in enumerate(index):
            q = raw_q[row]
            if not np.isfinite(q).all():
                raise ForecastError(f"series {ids[i]!r}: query time {exact_q[row][~np.isfinite(q)][0]} is not a "
                                    "finite time; pass finite numbers or valid datetimes")
            if q.size and q.min() < firsts[row] - 1e-9 * max(1.0, abs(firsts[row])):
                k = int(np.argmin(q))
                asked = self.transform.codec.from_ns(exact_q[row][k:k + 1])[0] if self.transform.codec.is_datetime \
                    else exact_q[row][k]
                where = "its first observation" if context is None else f"the start of its context={context!r} window"
                raise ForecastError(
                    f"series {ids[i]!r}: query time {asked} is before {where} "
                    f"{table.user_times(first_rows[row:row + 1])[0]}; the model forecasts forward from the history: "
                    "pass times at or after the history's start")
            model_t = self.transform.raw_to_model_time(q, prepared_all.origins[i])
            if q.size and not np.abs(model_t).max() <= MAX_MODEL_TIME:
                raise ForecastError(
                    f"series {ids[i]!r}: query time {exact_q[row][int(np.argmax(np.abs(model_t)))]} is "
                    f"{float(np.abs(model_t).max()):.3g} model time units from the series' start (the training "
                    f"series spanned at most ~10); the model cannot reach it: pass nearer times")

        gen_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        frames = []
        chunks = [index[i:i + batch_size] for i in range(0, len(index), max(1, int(batch_size)))]
        rows_of = {i: r for r, i in enumerate(index)}
        try:
            bar = _progress(chunks, progress, "forecast")
            for chunk in bar:
                frames.append(self._predict_chunk(table, chunk, [raw_q[rows_of[i]] for i in chunk],
                                                  num_samples, levels, qs, [exact_q[rows_of[i]] for i in chunk]))
        finally:
            if seed is not None:
                torch.random.set_rng_state(gen_state)
        return pd.concat(frames, ignore_index=True)

    def _query_raw(self, table, prepared, index, horizon, times, freq, num_points
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Query times per requested series, sorted: raw floats (for the model), and the same times exactly as
        they leave the package (for the output ``ds``): for datetime data int64 ns since the epoch (the instants
        asked for, not ones recovered from floats a few ns off); for numbers the values passed (their own dtype),
        or ``last + k * step`` computed in float64 for a horizon."""
        codec = self.transform.codec
        exact = codec.is_datetime
        unit_ns = 0
        if exact:
            from ts_neuralode.data.timecodec import DEFAULT_TIME_UNIT, unit_to_ns

            unit_ns = unit_to_ns(codec.unit or DEFAULT_TIME_UNIT)

        def from_ns(ns_rows: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
            return [(ns - codec.ref_ns).astype(np.float64) / unit_ns for ns in ns_rows], ns_rows

        def to_ns(values) -> np.ndarray:
            return np.sort(codec.datetimes_to_ns(values))

        def numbers(values) -> tuple[np.ndarray, np.ndarray]:
            """(sorted raw floats, the same values as given, in that order)."""
            given = np.asarray(values.to_numpy() if isinstance(values, (pd.Series, pd.Index)) else values)
            given = given.reshape(-1)
            raw = np.asarray(codec.to_float(given), dtype=np.float64).reshape(-1)  # DataError if not numbers
            order = np.argsort(raw, kind="stable")
            keep_given = given.dtype.kind in "iuf"  # numbers come back as given; anything else as parsed floats
            return raw[order], (given[order] if keep_given else raw[order])

        if times is not None:
            if horizon is not None or freq is not None:
                raise ForecastError("pass either times=... or horizon=... (with freq/num_points), not both")
            if isinstance(times, pd.DataFrame):
                if not {"unique_id", "ds"} <= set(times.columns):
                    raise ForecastError("a times DataFrame needs 'unique_id' and 'ds' columns (one row per query)")
                raw_rows, exact_rows = [], []
                ids = list(table.ids)
                groups = {str(k): g for k, g in times.groupby(times["unique_id"].astype(str), sort=False)}
                for i in index:
                    g = groups.get(str(ids[i]))
                    if g is None:
                        raise ForecastError(f"series {ids[i]!r} has no query times in the times DataFrame; add rows "
                                            "for it or pass series=[...] to forecast fewer series")
                    if exact:
                        exact_rows.append(to_ns(g["ds"]))
                    else:
                        raw, given = numbers(g["ds"])
                        raw_rows.append(raw)
                        exact_rows.append(given)
                return from_ns(exact_rows) if exact else (raw_rows, exact_rows)
            arr = times if isinstance(times, (pd.Series, pd.Index, np.ndarray, list, tuple)) else [times]
            if len(arr) == 0:
                raise ForecastError("times=[] is empty; pass at least one query time")
            if len(arr) > MAX_QUERY_POINTS:
                raise ForecastError(f"times has {len(arr)} values; pass at most {MAX_QUERY_POINTS} per call")
            if exact:
                ns = to_ns(arr)
                return from_ns([ns for _ in index])
            raw, given = numbers(arr)
            return [raw for _ in index], [given for _ in index]
        if horizon is None:
            raise ForecastError("no query times: pass horizon=... (how far past the last observation) or times=[...]")
        h = self._duration(horizon, "horizon")
        if not h > 0:
            raise ForecastError(f"horizon={horizon!r} must be positive: it is how far past each series' last "
                                "observation to forecast; for times inside the history pass times=[...] instead")
        last = table.last_times()[index]
        if exact and not h * unit_ns < 9.2e18:  # int64 ns spans 292 years
            raise ForecastError(f"horizon={horizon!r} reaches past the last representable timestamp (2262-04-11); "
                                "pass a shorter horizon")
        if freq is not None:
            if num_points is not None:
                raise ForecastError("pass either freq=... or num_points=..., not both")
            step = self._duration(freq, "freq")
            if not step > 0:
                raise ForecastError(f"freq={freq!r} must be positive")
            ratio = h / step
            if not ratio < MAX_QUERY_POINTS + 1:  # inf or NaN too
                raise ForecastError(f"horizon/freq gives {ratio:.3g} query times per series; use a coarser freq "
                                    f"(at most {MAX_QUERY_POINTS})")
            n = math.floor(ratio + 1e-9)
            if n < 1:
                raise ForecastError(f"freq={freq!r} is longer than horizon={horizon!r}; no query time fits")
            offs = step * np.arange(1, n + 1)
            if exact:
                if round(step * unit_ns) < 1:
                    raise ForecastError(f"freq={freq!r} is shorter than a nanosecond; pass a longer freq")
                offs_ns = np.int64(round(step * unit_ns)) * np.arange(1, n + 1, dtype=np.int64)
        else:
            n = 50 if num_points is None else _count(num_points, "num_points")
            if n > MAX_QUERY_POINTS:
                raise ForecastError(f"num_points={n} is too many; pass at most {MAX_QUERY_POINTS}")
            offs = np.linspace(0.0, h, n + 1)[1:]
            if exact:
                offs_ns = np.rint(np.linspace(0.0, round(h * unit_ns), n + 1)[1:]).astype(np.int64)
        if exact:
            if table.time_ns is not None:  # the last observations exactly as read
                last_ns = table.time_ns[table.offsets[1:][index] - 1].astype(np.int64)
            else:
                last_ns = np.rint(last * unit_ns).astype(np.int64) + codec.ref_ns
            span = float(np.max(np.abs(last_ns.astype(np.float64)))) + float(offs_ns[-1])
            if not span < 9.2e18:  # int64 ns ends in the year 2262
                raise ForecastError(f"horizon={horizon!r} reaches past the last representable timestamp "
                                    "(2262-04-11); pass a shorter horizon")
            return from_ns([lt + offs_ns for lt in last_ns])
        rows = [lt + offs for lt in last]
        return rows, rows

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

    @torch.no_grad()
    def _predict_chunk(self, table, chunk: list[int], raw_q: list[np.ndarray], num_samples: int,
                       levels: list[float], qs: list[float], exact_q: list[np.ndarray] | None = None
                       ) -> pd.DataFrame:
        """Forecast series ``chunk`` of ``table`` at raw times ``raw_q``; the output ``ds`` is ``exact_q`` (see
        :meth:`_query_raw`) when given."""
        from ts_neuralode.callbacks import solver_failure

        sub = _subset_table(table, chunk)
        prepared = self.transform.make_batch(sub)
        lengths = [len(q) for q in raw_q]
        tq = max(lengths)
        padded = np.stack([np.concatenate([q, np.full(tq - len(q), q[-1])]) for q in raw_q])
        device = next(iter(self.module.parameters()), torch.zeros(())).device
        qt = prepared.query_times(padded, raw=True).to(device)
        batch = prepared.batch.to(device)
        try:
            fc = self.model.forecast(batch, qt, num_samples=num_samples)
        except (RuntimeError, ValueError) as err:
            if not solver_failure(err):
                raise
            first = " ".join(str(err).strip().splitlines()[0].split())
            raise ForecastError(f"the ODE solver could not forecast series {list(prepared.series_ids)[:5]} ({first}); "
                                "query times may be too far beyond the history for this model, or its solver "
                                "tolerances too tight") from err
        mean = fc.mean.float()
        if not torch.isfinite(mean).all():
            raise ForecastError("the model produced non-finite forecasts (NaN/inf) for series "
                                f"{[prepared.series_ids[i] for i in range(len(chunk))][:5]}; query times may be "
                                "too far beyond the training range for this model")
        bands: dict[str, torch.Tensor] = {}
        for lv in levels:
            a = (1.0 - lv / 100.0) / 2.0
            bands[f"lo-{_fmt(lv)}"] = fc.quantile(a)
            bands[f"hi-{_fmt(lv)}"] = fc.quantile(1.0 - a)
        for q in qs:
            bands[f"q-{_fmt(100.0 * q)}"] = fc.quantile(q)
        frame = prepared.to_frame(qt, mean, bands, query=padded, raw=True)
        keep = np.concatenate([np.arange(n) < lengths[b] for b, n in enumerate([tq] * len(chunk))])
        frame = frame[keep]
        if exact_q is not None:  # the times exactly as asked for (rows are series-major, like exact_q)
            codec = self.transform.codec
            ds = codec.from_ns(np.concatenate(exact_q)) if codec.is_datetime else np.concatenate(exact_q)
            frame = frame.assign(**{self.transform.time_col: ds})
        return self._nixtla(frame, list(bands))

    def _nixtla(self, frame: pd.DataFrame, band_names: list[str]) -> pd.DataFrame:
        """``[id, time, ch, ch-band…]`` -> ``unique_id, ds, [channel,] name, name-band…``."""
        tr, name = self.transform, self.name
        base = frame[[tr.id_col, tr.time_col]].rename(columns={tr.id_col: "unique_id", tr.time_col: "ds"})
        channels = list(tr.channel_names)
        parts = []
        for ch in channels:
            part = base.copy()
            if len(channels) > 1:
                part["channel"] = ch
            part[name] = frame[ch].to_numpy()
            for b in band_names:
                part[f"{name}-{b}"] = frame[f"{ch}-{b}"].to_numpy()
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        keys = ["unique_id", "ds"] + (["channel"] if len(channels) > 1 else [])
        order = {c: i for i, c in enumerate(channels)}
        if len(channels) > 1:
            out = out.sort_values(keys, key=lambda s: s.map(order) if s.name == "channel" else s, kind="stable")
        return out.drop_duplicates(keys).reset_index(drop=True)

    # ------------------------------------------------------------------------------------------
    # history frames and plots
    def history_frame(self, history: Any, **read_options: Any) -> pd.DataFrame:
        """The observed history as ``unique_id, ds, channel, y`` (original units and timestamps)."""
        table = self.read_history(history, **read_options)
        return table_to_long(table)

    def plot(self, history: Any, forecast: pd.DataFrame, out_dir: str | os.PathLike,
             series: Sequence[Any] | None = None, max_series: int | None = None,
             history_window: float | str | pd.Timedelta | None = None, **read_options: Any) -> list[Path]:
        """One PNG per series (history, forecast mean, interval bands) in ``out_dir``; returns the paths.

        ``history_window`` (a duration like ``"5D"`` or a number of time units) shows only that much history
        before each series' last observation (default: all of it).
        """
        from ts_neuralode.plotting import plot_forecasts

        table = self.read_history(history, **read_options)
        if history_window is not None:
            table = self._recent(table, history_window, "history_window")
        hist = table_to_long(table)
        ids = list(series) if series is not None else list(dict.fromkeys(forecast["unique_id"].tolist()))
        if max_series is not None:
            ids = ids[:max_series]
        last = dict(zip([str(i) for i in table.ids], table.user_times(table.offsets[1:] - 1)))
        hist = hist.assign(unique_id=hist["unique_id"].astype(str))
        fc = forecast.assign(unique_id=forecast["unique_id"].astype(str))
        return plot_forecasts(hist, fc, self.name, out_dir, series=[str(i) for i in ids], cutoffs=last)

    def plot_validation_forecasts(self, datamodule, out_dir: str | os.PathLike, n_series: int = 3,
                                  num_samples: int = 50) -> list[Path]:
        """Fit-time figures: condition on the first half of a few validation series, forecast the rest."""
        table = datamodule.table
        names = [n for n in ("val", "test", "train") if len(datamodule.split.get(n, []))]
        idx = list(datamodule.split[names[0]][:n_series])
        hist_full = table_to_long(_subset_table(table, idx))
        ctx_parts, queries = [], []
        for k, i in enumerate(idx):
            lo, hi = table.offsets[i], table.offsets[i + 1]
            t = table.times[lo:hi]
            cut = t[0] + 0.5 * (t[-1] - t[0])
            ctx_parts.append(int(np.searchsorted(t, cut, side="right")))
            queries.append(np.linspace(t[0], t[-1] + 0.25 * (t[-1] - t[0]), 120))
        ctx = _subset_table(table, idx, hi=ctx_parts)
        fc = self._predict_chunk(ctx, list(range(len(idx))), queries, num_samples, [50.0, 90.0], [])
        fc = fc.assign(unique_id=fc["unique_id"].astype(str))
        hist_full = hist_full.assign(unique_id=hist_full["unique_id"].astype(str))
        from ts_neuralode.plotting import plot_forecasts

        cut_t = dict(zip([str(i) for i in ctx.ids], ctx.user_times(ctx.offsets[1:] - 1)))
        return plot_forecasts(hist_full, fc, self.name, out_dir, cutoffs=cut_t, prefix="val_forecast_")


MAX_QUERY_POINTS = 100_000  # query times per series and call
MAX_MODEL_TIME = 1e6  # |model time| a query may reach: 1e5 training spans (auto time_scale makes them <= 10)


def _count(value: Any, what: str) -> int:
    """A positive whole number option (num_samples, num_points, batch_size) or a ForecastError."""
    try:
        n = int(value)
        ok = not isinstance(value, bool) and float(value) == n and n >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ForecastError(f"{what}={value!r} must be a whole number >= 1")
    return n


def _progress(items: list, enabled: bool, desc: str):
    if not enabled or len(items) == 0:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False)


def _torch_load(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file or a pickle that weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ForecastError(f"{path}: cannot be loaded as weights only ({first}); pass a file written by "
                            "ts_neuralode (weights.pt or a .ckpt from 'ts-neuralode fit')") from err


def _as_transform(tstate: Any):
    from ts_neuralode.data.transform import SeriesTransform

    if isinstance(tstate, SeriesTransform):
        return tstate
    if isinstance(tstate, (str, os.PathLike)):
        p = Path(tstate)
        if p.is_dir():
            p = p / CONFIG
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise ForecastError(f"{p}: cannot read a transform from it ({err})") from err
        tstate = data.get("transform", data)
    try:
        return SeriesTransform.from_state_dict(tstate)
    except (KeyError, TypeError) as err:
        raise ForecastError(f"transform state is incomplete ({err}); pass SeriesTransform.state_dict()") from err


def table_to_long(table) -> pd.DataFrame:
    """SeriesTable -> ``unique_id, ds, channel, y`` rows for every observed value."""
    ids = np.repeat(np.asarray(table.ids, dtype=object), table.counts)
    ts = table.user_times()  # exactly as read
    parts = []
    for d, ch in enumerate(table.channel_names):
        m = table.mask[:, d]
        parts.append(pd.DataFrame({"unique_id": ids[m], "ds": ts[m] if isinstance(ts, pd.DatetimeIndex) else ts[m],
                                   "channel": ch, "y": table.values[m, d]}))
    return pd.concat(parts, ignore_index=True)

"""The benchmark's settings: the model table, the result columns and :class:`BenchmarkConfig` (checked once), and
the :class:`BenchmarkResult` a run returns."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ts_neuralode.data.batching import LAYOUTS as BATCH_LAYOUTS
from ts_neuralode.data.datamodule import SPLITS, TASKS, IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import NAMES
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.baselines import baseline_names

PROG = "ts-neuralode benchmark"

#: Benchmark model name -> ForecastingModule options (on top of the shared ones), the evolution's spelled flat
#: for a readable table (``evolution`` is its kind; :func:`module_options` nests them).
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "latent_ode_dopri5": {"model": "latent_ode", "evolution": "ode", "method": "dopri5"},
    "latent_ode_rk4": {"model": "latent_ode", "evolution": "ode", "method": "rk4"},
    "latent_gru_flow": {"model": "latent_ode", "evolution": "gru_flow"},
    "latent_coupling_flow": {"model": "latent_ode", "evolution": "coupling_flow"},
    "latent_resnet_flow": {"model": "latent_ode", "evolution": "resnet_flow"},
    "ode_rnn": {"model": "ode_rnn", "evolution": "ode", "method": "dopri5"},
    "flow_rnn": {"model": "ode_rnn", "evolution": "gru_flow"},
    "gru_ode": {"model": "gru_ode", "evolution": "ode", "method": "dopri5"},
    "gru_flow": {"model": "gru_ode", "evolution": "gru_flow"},
}
DEFAULT_MODELS = tuple(MODEL_SPECS)
# Optional variants of the latent models' encoder (by default every latent model encodes with the same ODE-RNN,
# one Euler step per observation interval, as the Latent ODE reference code; only the decoder differs):
# the latent ODE with a dopri5 ODE-RNN encoder (each interval an adaptive solve), and latent flows whose
# encoder is a flow-RNN of the same flow kind (the Neural Flows paper's latent flow models).
MODEL_SPECS["latent_ode_dopri5_enc"] = {
    "model": "latent_ode",
    "evolution": "ode",
    "method": "dopri5",
    "model_kwargs": {"encoder_method": "dopri5"},
}
for _kind in ("gru_flow", "coupling_flow", "resnet_flow"):
    MODEL_SPECS[f"latent_{_kind}_flowenc"] = {
        "model": "latent_ode",
        "evolution": _kind,
        "model_kwargs": {"encoder_evolution": "same"},
    }
LAYOUTS = ("auto", *BATCH_LAYOUTS)  # auto: union when the series share their times, else padded (runner.choose_layout)
#: test task -> (result column prefix, the test metric that scores it)
SCORES = {
    "interpolation": ("interp", "test_interp_mse"),
    "extrapolation": ("extrap", "test_extrap_mse"),
    "forecast": ("forecast", "test_extrap_mse"),
}

#: Result columns, in table order (CSV has them all; the markdown table a readable subset).
COLUMNS = (
    "model",
    "family",
    "evolution",
    "method",
    "params",
    "epochs",
    "epoch_time_s",
    "epoch_time_min_s",
    "train_time_s",
    "train_nfe",
    "infer_nfe",
    "latency_p50_ms",
    "latency_p95_ms",
    "interp_mse",
    "extrap_mse",
    "forecast_mse",
    "interp_skill",
    "extrap_skill",
    "forecast_skill",
    "final_train_loss",
    "error",
)
MD_COLUMNS = (
    ("model", "model"),
    ("params", "params"),
    ("epoch_time_s", "epoch time s (median)"),
    ("latency_p50_ms", "latency p50 ms"),
    ("latency_p95_ms", "latency p95 ms"),
    ("train_nfe", "NFE/forward train"),
    ("infer_nfe", "NFE/forward infer"),
    ("interp_mse", "interp MSE"),
    ("extrap_mse", "extrap MSE"),
    ("forecast_mse", "forecast MSE"),
    ("interp_skill", "interp skill"),
    ("extrap_skill", "extrap skill"),
    ("forecast_skill", "forecast skill"),
)
#: markdown columns left out when no row has a value (tasks that were not scored)
MD_OPTIONAL = ("interp_mse", "extrap_mse", "forecast_mse", "interp_skill", "extrap_skill", "forecast_skill")


#: The :class:`BenchmarkConfig` fields that are options of the data module
#: (:class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule`, the command line's ``--data.*``): their
#: defaults are the data module's (one declaration), but for ``layout``, which adds ``auto``.
DATA_FIELDS = (
    "path",
    "task",
    "obs_fraction",
    "cut",
    "extrap_obs_fraction",
    "layout",
    "batch_size",
    "scaler",
    "time_scale",
    "horizon",
    "context",
    "windows_per_series",
    "split_by",
    "season",
)
#: The data module's reading options a CSV may need (``BenchmarkConfig.read_options``; ``--data.*``)
READ_OPTIONS = ("format", "id_col", "time_col", "value_cols", "mask_cols", "time_unit", "duplicates")
#: Model options a benchmark may set for every model at once (``BenchmarkConfig.model_options``; ``--latent_dim``
#: ...): ForecastingModule's (latent_dim, hidden_dim, lr) and EvolutionConfig's (the others)
SHARED_MODEL_OPTIONS = ("latent_dim", "hidden_dim", "num_layers", "flow_layers", "lr", "rtol", "atol", "step_size")

_DATA_DEFAULTS = {
    name: p.default for name, p in inspect.signature(IrregularTimeSeriesDataModule.__init__).parameters.items()
}


def names_list(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"a,b c"`` or ``["a", "b"]`` -> ``("a", "b")`` (``none`` is dropped: ``"none"`` -> ``()``); None stays."""
    if value is None:
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]
    return tuple(v for v in items if v and v != "none")


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run depends on; scripts build it directly, ``ts-neuralode benchmark`` from its
    options (the fields below, the data options as ``--data.*``: :data:`DATA_FIELDS`, :data:`READ_OPTIONS`).

    Attributes:
        dataset: a synthetic data set (as ``ts-neuralode generate`` writes it); give it or a data path.
        path: CSV file (long or wide format) of the series; give it or a dataset.
        read_options: how to read that file (format, id_col, time_col, value_cols, mask_cols, time_unit,
            duplicates: the data module's options).
        n_series: series of the synthetic set.
        n_points: points per synthetic series (None: the set's own).
        models: the models to train (a tuple of names, or one string of them separated by commas or spaces), a
            subset of MODEL_SPECS.
        task: training task: interpolation, extrapolation or forecast (interpolation and extrapolation are both
            scored; forecast adds its own test, see split_by).
        horizon: forecast task: how far after the cutoff targets are scored (e.g. 2D, 52W or a number of time
            units); required with task forecast.
        context: forecast task: how much history before the cutoff the models see (None: all).
        windows_per_series: forecast task: training windows per series per epoch (auto: about one per horizon of
            the series).
        split_by: forecast task: hold out the last horizons of every series (time, the default) or whole series
            (series).
        baselines: naive baselines with rows of their own (locf, nearest, linear, mean, seasonal; a tuple or a
            string separated by commas, 'none' for none); None: locf, mean, linear (+ seasonal with a season).
        season: period of the seasonal naive baseline: a duration (24h, 365D) or a number of time units.
        obs_fraction: interpolation: the observed fraction of each series' points.
        cut: extrapolation: the cut as a fraction of each series' span.
        extrap_obs_fraction: extrapolation: the observed fraction of the points before the cut.
        layout: batch layout: auto (union when the series share their times, else padded), union or padded.
        scaler: value scaler: standard, minmax, robust, log or none (MSE in the data's units).
        time_scale: auto or a number.
        epochs: training epochs of every model.
        batch_size: series per batch.
        seed: data generation, split, subsampling and model init.
        train_seed: model init and training order (None: seed).
        model_options: ForecastingModule options shared by every model (SHARED_MODEL_OPTIONS on the command line).
        model_overrides: per benchmark model name, extra options.
        gradient_clip: gradient clipping value (None: none).
        latency_reps: passes over the test batches timed for the latency (after one warm-up pass).
        device: cpu or cuda.
        threads: torch CPU threads (1: these small models run fastest and least noisily on one thread per process,
            especially on a shared machine; None or 0: torch's default).
    """

    dataset: str | None = None
    path: str | None = _DATA_DEFAULTS["path"]
    read_options: dict = field(default_factory=dict)
    n_series: int = 1000
    n_points: int | None = None
    models: tuple[str, ...] | str = DEFAULT_MODELS
    task: str = _DATA_DEFAULTS["task"]
    horizon: float | str | None = _DATA_DEFAULTS["horizon"]
    context: float | str | None = _DATA_DEFAULTS["context"]
    windows_per_series: int | str = _DATA_DEFAULTS["windows_per_series"]
    split_by: str | None = _DATA_DEFAULTS["split_by"]
    baselines: tuple[str, ...] | str | None = None
    season: float | str | None = _DATA_DEFAULTS["season"]
    obs_fraction: float = _DATA_DEFAULTS["obs_fraction"]
    cut: float = _DATA_DEFAULTS["cut"]
    extrap_obs_fraction: float = _DATA_DEFAULTS["extrap_obs_fraction"]
    layout: str = "auto"
    scaler: str = _DATA_DEFAULTS["scaler"]
    time_scale: float | str = _DATA_DEFAULTS["time_scale"]
    epochs: int = 5
    batch_size: int = _DATA_DEFAULTS["batch_size"]
    seed: int = 0
    train_seed: int | None = None
    model_options: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)
    gradient_clip: float | None = 1.0
    latency_reps: int = 3
    device: str = "cpu"
    threads: int | None = 1

    def __post_init__(self) -> None:
        self.models = names_list(self.models)
        self.baselines = names_list(self.baselines)
        if self.threads == 0:
            self.threads = None

    def validate(self) -> None:
        if (self.dataset is None) == (self.path is None):
            raise ConfigError("give exactly one of --dataset NAME (a synthetic set) or --data.path FILE.csv")
        if self.dataset is not None:
            if self.dataset not in NAMES:
                raise ConfigError(
                    f"--dataset {self.dataset!r} is unknown; choose one of {', '.join(NAMES)} "
                    "or pass --data.path FILE.csv"
                )
        elif not Path(self.path).is_file():
            raise ConfigError(f"--data.path {self.path}: file not found; pass an existing CSV file")
        if not self.models:
            raise ConfigError(f"--models is empty; choose from {', '.join(MODEL_SPECS)}")
        unknown = [m for m in self.models if m not in MODEL_SPECS]
        if unknown:
            raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_SPECS)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--models lists a model twice ({', '.join(self.models)}); list each once")
        if self.task not in TASKS:
            raise ConfigError(
                f"--data.task {self.task!r}: invalid choice; use interpolation, extrapolation or forecast"
            )
        if self.task == "forecast" and self.horizon is None:
            raise ConfigError(
                "--data.task forecast needs --data.horizon (a number of the data's time units, or a "
                "duration such as 2D)"
            )
        if self.split_by is not None and (self.split_by not in SPLITS or self.task != "forecast"):
            raise ConfigError(f"--data.split_by {self.split_by!r}: use series or time, with --data.task forecast only")

        baseline_names(self.baselines, self.season)  # unknown names, duplicates
        if "seasonal" in (self.baselines or ()) and self.season is None:
            raise ConfigError(
                "--baselines seasonal needs --data.season (the period: a duration such as 24h or a number)"
            )
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--data.layout {self.layout!r}; use auto, union or padded")
        for name in ("epochs", "batch_size", "n_series", "latency_reps"):
            if int(getattr(self, name)) < 1:
                option = f"--data.{name}" if name in DATA_FIELDS else f"--{name}"
                raise ConfigError(f"{option} {getattr(self, name)} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be >= 1")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}; use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
        if self.gradient_clip is not None and self.gradient_clip <= 0:
            raise ConfigError(f"--gradient_clip {self.gradient_clip} must be > 0 (or omit it)")


def scored_tasks(cfg: BenchmarkConfig) -> tuple[str, ...]:
    """The test tasks of a run: interpolation and extrapolation; plus forecast when training on forecast
    windows — alone under a split by time, where every series is in training (see the module docstring)."""
    if cfg.task != "forecast":
        return ("interpolation", "extrapolation")
    return ("forecast",) if (cfg.split_by or "time") == "time" else TASKS


@dataclass
class BenchmarkResult:
    """What :func:`~ts_neuralode.api.benchmark.runner.run_benchmark` returns: the scored table (models, then
    baselines), each model's per-epoch history, the run's description and batch layout, and its MLflow runs."""

    table: pd.DataFrame
    histories: dict[str, dict]
    description: str
    layout: str
    parent_run_id: str | None = None
    child_run_ids: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None

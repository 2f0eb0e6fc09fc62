"""The benchmark's settings: the model table, the result columns and :class:`BenchmarkConfig` (checked once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ts_neuralode.data.batching import LAYOUTS as BATCH_LAYOUTS
from ts_neuralode.data.datamodule import SPLITS, TASKS
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
MODEL_SPECS["latent_ode_dopri5_enc"] = {"model": "latent_ode", "evolution": "ode", "method": "dopri5",
                                        "model_kwargs": {"encoder_method": "dopri5"}}
for _kind in ("gru_flow", "coupling_flow", "resnet_flow"):
    MODEL_SPECS[f"latent_{_kind}_flowenc"] = {"model": "latent_ode", "evolution": _kind,
                                              "model_kwargs": {"encoder_evolution": "same"}}
LAYOUTS = ("auto", *BATCH_LAYOUTS)  # auto: union when the series share their times, else padded (runner.choose_layout)
#: test task -> (result column prefix, the test metric that scores it)
SCORES = {"interpolation": ("interp", "test_interp_mse"), "extrapolation": ("extrap", "test_extrap_mse"),
          "forecast": ("forecast", "test_extrap_mse")}

#: Result columns, in table order (CSV has them all; the markdown table a readable subset).
COLUMNS = (
    "model", "family", "evolution", "method", "params", "epochs", "epoch_time_s", "epoch_time_min_s",
    "train_time_s", "train_nfe", "infer_nfe", "latency_p50_ms", "latency_p95_ms", "interp_mse", "extrap_mse",
    "forecast_mse", "interp_skill", "extrap_skill", "forecast_skill", "final_train_loss", "error",
)
MD_COLUMNS = (
    ("model", "model"), ("params", "params"), ("epoch_time_s", "epoch time s (median)"),
    ("latency_p50_ms", "latency p50 ms"), ("latency_p95_ms", "latency p95 ms"), ("train_nfe", "NFE/forward train"),
    ("infer_nfe", "NFE/forward infer"), ("interp_mse", "interp MSE"), ("extrap_mse", "extrap MSE"),
    ("forecast_mse", "forecast MSE"), ("interp_skill", "interp skill"), ("extrap_skill", "extrap skill"),
    ("forecast_skill", "forecast skill"),
)
#: markdown columns left out when no row has a value (tasks that were not scored)
MD_OPTIONAL = ("interp_mse", "extrap_mse", "forecast_mse", "interp_skill", "extrap_skill", "forecast_skill")


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run depends on (the CLI options; scripts build it directly)."""

    dataset: str | None = None              # a generator name (ts_neuralode.data.generators.NAMES) ...
    path: str | None = None                 # ... or a CSV file (exactly one of the two)
    read_options: dict = field(default_factory=dict)   # format/id_col/time_col/value_cols/... for the CSV
    n_series: int = 1000
    n_points: int | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    task: str = "interpolation"             # training task (see scored_tasks for the test tasks)
    horizon: float | str | None = None      # forecast task: target window after the cutoff (a duration)
    context: float | str | None = None      # forecast task: conditioning window before it (None: all history)
    windows_per_series: int | str = "auto"  # forecast task: training windows per series per epoch
    split_by: str | None = None             # forecast task: "time" (default) or "series"
    baselines: tuple[str, ...] | None = None  # None: locf, mean, linear (+ seasonal with a season); (): none
    season: float | str | None = None       # period of the seasonal baseline (a duration)
    obs_fraction: float = 0.5
    cut: float = 0.5
    extrap_obs_fraction: float = 1.0
    layout: str = "auto"
    scaler: str = "standard"
    time_scale: float | str = "auto"
    epochs: int = 5
    batch_size: int = 50
    seed: int = 0
    train_seed: int | None = None         # model init and training order (default: seed)
    model_options: dict = field(default_factory=dict)  # shared ForecastingModule options (latent_dim, lr, ...)
    model_overrides: dict = field(default_factory=dict)  # per benchmark model name: extra options
    gradient_clip: float | None = 1.0
    latency_reps: int = 3
    device: str = "cpu"
    threads: int | None = 1                 # torch CPU threads (None: torch's default)

    def validate(self) -> None:
        if (self.dataset is None) == (self.path is None):
            raise ConfigError("give exactly one of --dataset NAME (a synthetic set) or --data.path FILE.csv")
        if self.dataset is not None:
            if self.dataset not in NAMES:
                raise ConfigError(f"--dataset {self.dataset!r} is unknown; choose one of {', '.join(NAMES)} "
                                  "or pass --data.path FILE.csv")
        elif not Path(self.path).is_file():
            raise ConfigError(f"--data.path {self.path}: file not found; pass an existing CSV file")
        if not self.models:
            raise ConfigError(f"--models is empty; choose from {', '.join(MODEL_SPECS)}")
        unknown = [m for m in self.models if m not in MODEL_SPECS]
        if unknown:
            raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(MODEL_SPECS)}")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--models lists a model twice ({', '.join(self.models)}); list each once")
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}; use interpolation, extrapolation or forecast")
        if self.task == "forecast" and self.horizon is None:
            raise ConfigError("--task forecast needs --horizon (a number of the data's time units, or a duration "
                              "such as 2D)")
        if self.split_by is not None and (self.split_by not in SPLITS or self.task != "forecast"):
            raise ConfigError(f"--split_by {self.split_by!r}: use series or time, with --task forecast only")

        baseline_names(self.baselines, self.season)  # unknown names, duplicates
        if "seasonal" in (self.baselines or ()) and self.season is None:
            raise ConfigError("--baselines seasonal needs --season (the period: a duration such as 24h or a number)")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--data.layout {self.layout!r}; use auto, union or padded")
        for name in ("epochs", "batch_size", "n_series", "latency_reps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)} must be >= 1")
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

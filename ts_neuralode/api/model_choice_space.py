"""The search space of the automatic model choice: one declared table, :data:`SEARCH_SPACE`.

Each entry is one option of ``ts-neuralode fit`` spelled as on the command line without the dashes
(``model.evolution.kind``, ``data.context``, ``trainer.gradient_clip_val``), with the values the search may give it
and, optionally, the condition under which it applies (``when={"model.evolution.kind": FLOWS}``: only for the
flows). An option the user sets (``model_options`` / ``data_options`` / ``trainer`` of ``Forecaster.fit``) is fixed
and not searched; conditions read the fixed value as well.

To search a new option, add a line::

    choice("data.normalize", ("none", "window")),                                  # per-window normalisation
    choice("model.model_kwargs.residual", (False, True), when={"model.model": ("ode_rnn",)}),

Values are what Optuna can store (None, bool, int, float, str). Derived options (:data:`DERIVED`) map a value
onto the real option(s) at trial time: ``data.context_horizons`` = k gives ``data.context`` = k × the horizon.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ts_neuralode.errors import ConfigError

FLOWS = ("gru_flow", "coupling_flow", "resnet_flow")


@dataclass(frozen=True)
class Param:
    """One searched option: ``kind`` "choice" (``values``), "float" or "int" (``low``..``high``, ``log`` scale);
    ``when``: ``{option: allowed values}`` that must all hold for the option to be searched."""

    option: str
    kind: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    when: Mapping[str, tuple] = field(default_factory=dict)

    def applies(self, chosen: Mapping[str, Any]) -> bool:
        return all(chosen.get(opt) in allowed for opt, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.option, list(self.values))
        if self.kind == "float":
            return trial.suggest_float(self.option, self.low, self.high, log=self.log)
        return trial.suggest_int(self.option, int(self.low), int(self.high), log=self.log)


def choice(option: str, values: Sequence, when: Mapping[str, Sequence] | None = None) -> Param:
    return Param(option, "choice", tuple(values), when={k: tuple(v) for k, v in (when or {}).items()})


def float_range(
    option: str, low: float, high: float, log: bool = False, when: Mapping[str, Sequence] | None = None
) -> Param:
    return Param(option, "float", low=low, high=high, log=log, when={k: tuple(v) for k, v in (when or {}).items()})


def int_range(option: str, low: int, high: int, when: Mapping[str, Sequence] | None = None) -> Param:
    return Param(option, "int", low=low, high=high, when={k: tuple(v) for k, v in (when or {}).items()})


#: the model families × evolutions and their key options (the order matters: conditions read earlier entries)
SEARCH_SPACE: tuple[Param, ...] = (
    choice("model.model", ("latent_ode", "ode_rnn", "gru_ode")),
    choice("model.evolution.kind", ("ode", *FLOWS)),
    choice("model.evolution.method", ("rk4", "dopri5"), when={"model.evolution.kind": ("ode",)}),
    int_range("model.evolution.flow_layers", 1, 4, when={"model.evolution.kind": FLOWS}),
    choice("model.evolution.time_embedding", ("fourier", "tanh", "linear"), when={"model.evolution.kind": FLOWS}),
    choice("model.latent_dim", (8, 16, 32)),
    choice("model.hidden_dim", (32, 64, 128)),
    float_range("model.lr", 1e-3, 3e-2, log=True),
    choice("model.lr_schedule", ("cosine", "step")),
    choice("data.context_horizons", (1, 2, 4, None)),  # the forecast task's context in horizons (None: all)
    choice("model.normalize", ("none", "window")),  # per-window units (RevIN-style)
    # a correction on top of a forecast from the context: auto = the harmonic seasonal forecast with a season, else
    # the last value; trend = the context's least-squares line (growth curves)
    choice("model.base", ("none", "auto", "trend")),
)

#: searched for seasonal data whose values to forecast are all positive (:func:`default_space`): the forecast
#: channels' log, standardised (a season whose amplitude grows with the level becomes additive; forecasts and bands
#: map back through exp). Not without a season: there the log scale forecast worse on every set of the suite
#: (ChickWeight 1.15x the last value against 0.72, BXLator 0.233 against 0.192, PBC equal but its CRPS 15x wider:
#: exp of a wide band; results/peers_irregular.md)
LOG_SCALE = choice("data.scaler", ("standard", "log"))


def default_space(log_scale: bool, trend: bool = True) -> tuple[Param, ...]:
    """The search space of a search given none: :data:`SEARCH_SPACE`, and :data:`LOG_SCALE` where ``log_scale`` (a
    season, and every observed value of the forecast channels > 0: a log trial on other data would fail as a data
    error); without the trend base where not ``trend`` (its rolling forecasts over the history lost to the last
    value's: :func:`ts_neuralode.api.model_choice_bases.trend_is_searched`)."""
    space = SEARCH_SPACE
    if not trend:
        space = tuple(
            choice(p.option, tuple(v for v in p.values if v != "trend")) if p.option == "model.base" else p
            for p in space
        )
    return (*space, LOG_SCALE) if log_scale else space


def searches_trend(space: Sequence[Param]) -> bool:
    """Whether ``space`` lets a trial take the trend base."""
    return any(p.option == "model.base" and "trend" in p.values for p in space)


#: the first trial when the caller enqueues none: the ODE-RNN learning a correction in window units on top of the
#: harmonic seasonal forecast (the last value without a season) — the configuration that won the ablations of
#: results/forecast_ablations.md; the search goes on from there. Its solver is the adaptive dopri5, not rk4: rk4
#: without a step size steps from one grid time to the next, so its dynamics are learned on the batch's grid and
#: forecast on the query grid; on per-series grids (layout auto) BXLator's winner went 0.49x the last value with rk4,
#: 0.19x with dopri5, the other sets unchanged (results/peers_irregular.md)
STARTING_POINT: dict[str, Any] = {
    "model.model": "ode_rnn",
    "model.evolution.kind": "ode",
    "model.evolution.method": "dopri5",
    "model.latent_dim": 16,
    "model.hidden_dim": 64,
    "model.lr": 0.01,
    "model.lr_schedule": "cosine",
    "data.context_horizons": 4,
    "model.normalize": "window",
    "model.base": "auto",
}


#: without a season, also: the same model forecasting the level itself in the data's global units (no window
#: normalisation, no base). Series that are draws of one process (a population of similar systems, the same
#: oscillator from different starts) share its level and its pull towards it, which each window's own units discard:
#: on BXLator it forecast at 0.65x the last value where the window model on the last value stayed at 1.00
#: (results/peers_irregular.md)
GLOBAL_LEVEL: dict[str, Any] = {**STARTING_POINT, "model.normalize": "none", "model.base": "none"}


def starting_points(fixed: Mapping[str, Any], log_scale: bool = False, trend: bool = True) -> list[dict[str, Any]]:
    """The trials run first: :data:`STARTING_POINT`, and without a season (``data.season`` not fixed) the same on
    the trend base through the last horizon of history as well (the last value and today's slope are the two naive
    forecasts of series without a season: lab values that wander, growth curves that may level off), then, with a
    season or without, :data:`GLOBAL_LEVEL` (the level in the data's global units). With a season it was left out
    until the season could be chosen automatically: BXLator given the 12.5 period a scan of its times finds forecast
    at 0.485x the last value without it, 0.192 with it (as without a season); the demo, CO₂ and El Niño unchanged
    (0.110, 0.279, 0.524: the validation did not choose it; results/peers_irregular.md). A point on the context's
    mean in window units was measured and dropped: the validation horizon chose it where it forecast worse
    (results/peers.md).

    ``trend``: the space holds the trend base (False where the history's rolling forecasts ruled it out: no trend
    point either). ``log_scale`` (the search space has :data:`LOG_SCALE`: positive seasonal data) and a season: the
    second point is :data:`STARTING_POINT` on the log scale (unless the user fixed ``data.scaler``): a season whose
    amplitude grows with the level (airline passengers, sales) is additive there, and the harmonic base fits it."""
    points = [dict(STARTING_POINT)]
    if fixed.get("data.season") is None and trend:
        points.append({**STARTING_POINT, "model.base": "trend", "data.context_horizons": 1})
    points.append(dict(GLOBAL_LEVEL))
    if not log_scale or "data.scaler" in fixed:
        return points
    # the points set the scaler they run on (an option of the space that a point leaves out is sampled at random)
    points = [{**p, "data.scaler": "standard"} for p in points]
    if fixed.get("data.season") is not None:
        points.insert(1, {**points[0], "data.scaler": "log"})
    return points


def _times_horizon(k: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """``data.context_horizons`` = k -> ``data.context`` = k × ``data.horizon`` (None: the whole history)."""
    if k is None:
        return {"data.context": None}
    return {"data.context": scale_duration(options.get("data.horizon"), float(k))}


#: derived option -> (the real option it sets, a function of (value, all options) giving the real options)
DERIVED: dict[str, tuple[str, Callable[[Any, Mapping[str, Any]], dict[str, Any]]]] = {
    "data.context_horizons": ("data.context", _times_horizon)
}


def scale_duration(value: Any, k: float) -> Any:
    """``k`` times a duration: a number (time units) or a string such as ``"2D"`` (-> ``"4D"`` for k = 2)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value * k
    text = str(value).strip()
    try:
        return float(text) * k
    except ValueError:
        pass
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([A-Za-z]+)", text)
    if m:
        return f"{float(m.group(1)) * k:g}{m.group(2)}"
    try:
        td = pd.Timedelta(text) * k
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.horizon={value!r} is not a duration; pass e.g. 2D or a number of time units") from err
    return f"{td.value}ns"


def fixed_in(option: str, fixed: Mapping[str, Any]) -> bool:
    """Whether the user fixed ``option`` (or, for a derived option, the real option it sets)."""
    real = DERIVED[option][0] if option in DERIVED else option
    return real in fixed


def check_space(space: Sequence[Param]) -> tuple[Param, ...]:
    space = tuple(space)
    seen = set()
    for p in space:
        if not isinstance(p, Param):
            raise ConfigError(
                f"search space entry {p!r} is not a Param; build entries with choice(), float_range() "
                "or int_range() of ts_neuralode.api.model_choice_space"
            )
        if p.option.split(".")[0] not in ("model", "data", "trainer"):
            raise ConfigError(f"search space option {p.option!r} must start with model., data. or trainer.")
        if p.option in seen:
            raise ConfigError(f"search space option {p.option!r} appears twice")
        if p.kind == "choice" and not p.values:
            raise ConfigError(f"search space option {p.option!r} has no values")
        seen.add(p.option)
    return space


def sample(trial, space: Sequence[Param], fixed: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's searched values (``{option: value}``, as Optuna stores them) and every option of the trial's fit
    (the fixed ones, the searched ones and the real options of derived ones), flat and dotted."""
    chosen: dict[str, Any] = dict(fixed)
    searched: dict[str, Any] = {}
    for p in space:
        if fixed_in(p.option, fixed) or not p.applies(chosen):
            continue
        searched[p.option] = chosen[p.option] = p.suggest(trial)
    options = {k: v for k, v in chosen.items() if k not in DERIVED}
    for name, (_, fn) in DERIVED.items():
        if name in searched:
            options.update(fn(searched[name], options))
    return searched, options


def nest(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.evolution.kind": "ode", "data.horizon": 2}`` -> ``{"model": {"evolution": {"kind": "ode"}},
    "data": {"horizon": 2}, "trainer": {}}``."""
    out: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "trainer": {}}
    for key, value in options.items():
        group, *path = key.split(".")
        node = out[group]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def flatten(group: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inverse of :func:`nest` for one group: ``("model", {"evolution": {"kind": "ode"}})`` ->
    ``{"model.evolution.kind": "ode"}`` (nested dicts of ``evolution`` and ``model_kwargs`` are opened)."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if isinstance(value, Mapping) and key in ("evolution", "model_kwargs"):
            out.update(flatten(f"{group}.{key}", value))
        else:
            out[f"{group}.{key}"] = value
    return out


def describe(searched: Mapping[str, Any]) -> str:
    """A short label of a trial's configuration for progress lines: ``ode_rnn/gru_flow lr=0.004 ...``."""
    model = searched.get("model.model", "")
    kind = searched.get("model.evolution.kind", "")
    head = "/".join(str(x) for x in (model, kind) if x)
    rest = " ".join(
        f"{k.rsplit('.', 1)[-1]}={_short(v)}"
        for k, v in searched.items()
        if k not in ("model.model", "model.evolution.kind")
    )
    return (head + " " + rest).strip()


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


__all__ = [
    "DERIVED",
    "FLOWS",
    "LOG_SCALE",
    "Param",
    "SEARCH_SPACE",
    "check_space",
    "choice",
    "default_space",
    "describe",
    "flatten",
    "float_range",
    "int_range",
    "nest",
    "sample",
    "scale_duration",
]

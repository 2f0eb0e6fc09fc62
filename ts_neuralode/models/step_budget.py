"""The ODE solver's step budget (``max_steps``) of a forecast, and the one line when a far horizon exceeds it.

Training fixes ``model.evolution.max_steps`` (default 10 000 steps per solve) for spans of about ten model time
units. A forecast far past the history needs more: a fixed-step solver exactly ``span / step_size``, an
adaptive one about proportionally more. :func:`forecast_budget` gives a forecast the steps its span needs, up to
:data:`FORECAST_MAX_STEPS` unless the caller passes ``max_steps`` (``ts-neuralode forecast --max_steps``,
``Forecaster.predict(max_steps=...)``); :func:`steps_exceeded` turns a solver that still runs out into one line
saying how far it got, in the user's units, and what to change.

The budget is an argument of the forecast call (``model.forecast(batch, query_times, max_steps=budget)``), handed
to every evolution's call with the call's grid (:class:`ts_neuralode.models.base.CallInputs`); no model is modified.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ts_neuralode.errors import ForecastError
from ts_neuralode.models.evolution import ODEEvolution
from ts_neuralode.solvers.tableaus import ADAPTIVE_METHODS

#: default upper bound of a forecast's automatic step budget (3x the training default). Time and memory grow
#: linearly with the steps: the demo's ODE-RNN (rk4, 3 h steps, 12 series) took ~12 ms and ~18 kB a step on
#: one thread of a busy 2-core machine, so 30 000 steps are a few minutes and ~0.6 GB at most.
FORECAST_MAX_STEPS = 30_000
#: the span (model time units) a model's own max_steps was meant for: auto time_scale keeps training spans <= 10
REFERENCE_SPAN = 10.0


def ode_evolutions(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The ODE evolutions (solver users) inside ``module``; flows have no step budget."""

    return [m for m in module.modules() if isinstance(m, ODEEvolution)]


def check_max_steps(max_steps: Any, option: str = "max_steps") -> int | None:
    """``max_steps`` as a positive int (None stays None); ForecastError otherwise."""
    if max_steps is None:
        return None
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ForecastError(f"{option}={max_steps!r} must be a whole number >= 1 (solver steps per solve)")
    return int(max_steps)


def _needed(config, span: float) -> int:
    if config.method in ADAPTIVE_METHODS:
        return math.ceil(config.max_steps * span / REFERENCE_SPAN)
    if config.step_size:
        return math.ceil(span / config.step_size)
    return 0  # steps = output intervals: as many as query times and observations, far below any budget


def forecast_budget(module: torch.nn.Module, span: float, max_steps: int | None = None) -> int | None:
    """The step budget of a forecast whose solves cover at most ``span`` model time units: ``max_steps`` when
    given, else what the span needs (never less than the model's own ``max_steps``), capped at
    :data:`FORECAST_MAX_STEPS`. None for a model without an ODE solver."""
    evs = ode_evolutions(module)
    if not evs:
        return None
    if max_steps is not None:
        return max_steps
    own = max(e.config.max_steps for e in evs)
    need = max(_needed(e.config, span) for e in evs)
    return max(own, min(need, FORECAST_MAX_STEPS))


@dataclasses.dataclass
class Span:
    """The farthest-reaching series of a forecast, in model time: ``span`` from its first (context) observation
    to its last query, ``last`` its last observation, ``target`` its last query."""

    span: float
    last: float
    target: float


def forecast_span(transform, table, index: list[int], raw_q: list[np.ndarray]) -> Span:
    """:class:`Span` of the series ``index`` of ``table`` queried at raw times ``raw_q`` (one array per series)."""
    origins = transform.origins(table)
    firsts, lasts = table.first_times(), table.last_times()
    best = Span(0.0, 0.0, 0.0)
    for row, i in enumerate(index):
        if not len(raw_q[row]):
            continue
        target = float(np.max(raw_q[row]))
        span = float(transform.raw_to_model_time(target, firsts[i]))
        if span > best.span:
            best = Span(
                span,
                float(transform.raw_to_model_time(lasts[i], origins[i])),
                float(transform.raw_to_model_time(target, origins[i])),
            )
    return best


def describe_duration(raw: float, codec) -> str:
    """A raw time span in the user's units: '12.5 days', '3 h' for datetime data, else a number of time units."""
    if not codec.is_datetime:
        return f"{_num(raw)} time units"
    seconds = raw * codec.unit_ns / 1e9
    for name, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(seconds) >= size:
            return f"{_num(seconds / size)} {name}"
    return f"{_num(seconds)} s"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def steps_exceeded(
    err: BaseException | None, module: torch.nn.Module, budget: int, transform, span: Span, asked: str, user_set: bool
) -> ForecastError | None:
    """The one line for a forecast whose solver ran out of steps (None when ``err`` is another failure).

    ``span``: the farthest-reaching series (:func:`forecast_span`); ``asked``: the horizon as the user gave it;
    ``user_set``: whether ``budget`` came from the caller."""
    codec, time_scale = transform.codec, transform.time_scale
    last_model_t, target_model_t = span.last, span.target
    if getattr(err, "max_steps", None) is None:  # another failure (SolverError's max_steps: the limit that stopped it)
        return None
    t_reached = err.t_reached
    failed = err.failed
    t_stop = (
        float(t_reached[failed].min())
        if t_reached is not None and failed is not None and failed.any()
        else last_model_t
    )
    evs = ode_evolutions(module)
    method = err.method or (evs[0].config.method if evs else "the solver")
    # a fixed-step solve is refused before it starts: it would have reached budget * step
    if err.needed_steps is not None:
        need, step = int(err.needed_steps), float(err.step_size)
        reached = t_stop + budget * step
        what = f"{method} steps of {describe_duration(step * time_scale, codec)}"
        suggest = need
    else:
        reached = t_stop
        what = f"adaptive {method} steps"
        covered = max(reached - last_model_t, 1e-12)
        suggest = budget * min(1000, math.ceil((target_model_t - last_model_t) / covered) + 1)
    past = (reached - last_model_t) * time_scale
    where = (
        f"about {describe_duration(past, codec)} past the last observation"
        if past > 0
        else f"only to about {describe_duration(-past, codec)} before the last observation"
    )
    whole = (target_model_t - last_model_t) * time_scale
    how = "--max_steps" if user_set else f"--max_steps (default: what the horizon needs, at most {FORECAST_MAX_STEPS})"
    return ForecastError(
        f"{asked}: the forecast needs more ODE solver steps ({what}) than the budget max_steps={budget}; "
        f"with it the solver gets {where}, of {describe_duration(whole, codec)} past it asked; pass a nearer "
        f"horizon, or raise {how} to at least {suggest} "
        f"(Forecaster.predict(max_steps=...); time and memory grow with it)"
    )


__all__ = [
    "FORECAST_MAX_STEPS",
    "ode_evolutions",
    "check_max_steps",
    "forecast_budget",
    "steps_exceeded",
    "describe_duration",
    "forecast_span",
    "Span",
]

"""Naive baseline forecasters — what a model has to beat — behind the models' own interface.

Each baseline is a :class:`~ts_neuralode.models.base.ForecastModel` without parameters: ``forecast(batch,
query_times)`` / ``predict(batch)`` return a deterministic :class:`~ts_neuralode.models.base.Forecast`
(``samples`` holds the one path, ``std`` is None), so the LightningModule's metrics and the benchmark score
them with exactly the code that scores the models.

A baseline sees only what a model sees: the values under ``batch.obs_mask``, per series and per channel
(a channel may be missing at some times), and predicts at the query times (``[Tq]`` or ``[B, Tq]``; for
``predict``, the batch's own times). Both batch layouts (union ``[T]``, padded ``[B, T]``) work; everything is
vectorised over ``[B, Tq, D]`` (one ``searchsorted`` per call, no Python loop over series or channels).

* ``locf`` — last observation carried forward: the last observed value at or before the query time (for
  extrapolation, the last one before the cutoff; for interpolation, the previous observed point). A query
  before a channel's first observation takes that first observation (carried backwards).
* ``nearest`` — the observed value nearest in time (ties: the earlier one).
* ``linear`` — linear interpolation between the neighbouring observed points; flat (the nearest end value)
  before the first and after the last observation, so after the cutoff it equals ``locf``.
* ``mean`` — the mean of the series' observed values, per channel.
* ``seasonal`` — seasonal naive with period ``P`` (model time units): the observation ``k`` periods before
  the query, ``k >= 1`` the fewest periods that reach back into the observed history (``k = 1`` inside it;
  ``ceil((t - last observation) / P)`` beyond it). It takes the observed point nearest to ``t - k P`` if one
  lies within ``tolerance`` (default ``P / 10``), else falls back to ``locf``.

A channel with no observation at all in a series predicts 0 — the training mean in the data module's scaled
units (``scaler="standard"``), i.e. no information.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ts_neuralode.data.batch import Batch
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.base import Forecast, ForecastModel, check_positive, check_query_times

#: Baselines a LightningModule and the benchmark score next to every model unless told otherwise (plus
#: ``seasonal`` when a season is given).
DEFAULT_BASELINES = ("locf", "mean", "linear")
#: The baseline every skill is measured against (model MSE / its MSE).
REFERENCE = "locf"


class Neighbours(NamedTuple):
    """The observed points around per-channel query times, each ``[B, Tq, D]``.

    ``prev_*``: the last observation at or before the query; ``next_*``: the first at or after it;
    ``has_*``: whether there is one (where not, the time/value entries are meaningless).
    """

    prev_t: Tensor
    prev_v: Tensor
    has_prev: Tensor
    next_t: Tensor
    next_v: Tensor
    has_next: Tensor

    def carried(self) -> Tensor:
        """LOCF: the previous value, else the next one (before the first observation), else 0."""
        zero = torch.zeros_like(self.prev_v)
        return torch.where(self.has_prev, self.prev_v, torch.where(self.has_next, self.next_v, zero))

    def nearest(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(value, time, found)`` of the observation nearest to ``q`` (ties: the earlier one)."""
        use_prev = self.has_prev & (~self.has_next | (q - self.prev_t <= self.next_t - q))
        value = torch.where(use_prev, self.prev_v, torch.where(self.has_next, self.next_v, torch.zeros_like(q)))
        time = torch.where(use_prev, self.prev_t, self.next_t)
        return value, time, self.has_prev | self.has_next


def observed_neighbours(batch: Batch, q: Tensor) -> Neighbours:
    """The observed points of each series and channel around ``q`` ``[B, Tq, D]`` (per-channel query times).

    For every grid position the index of the last observed position at or before it (a running max) and of
    the first at or after it (a reversed running min) is computed once; ``searchsorted`` places the queries on
    each row's time grid (padding repeats a row's last time and holds no observation, so it never answers).
    """
    values = batch.values
    B, T, D = values.shape
    obs = batch.obs_mask > 0
    tps = batch.times_per_sample().to(values.dtype).contiguous()
    pos = torch.arange(T, device=values.device).view(1, T, 1)
    last = torch.where(obs, pos, torch.full_like(pos, -1)).cummax(1).values  # [B, T, D]
    first = torch.where(obs, pos, torch.full_like(pos, T)).flip(1).cummin(1).values.flip(1)
    flat = q.reshape(B, -1).contiguous()
    n_le = torch.searchsorted(tps, flat, right=True).view_as(q)  # grid points at or before q
    n_lt = torch.searchsorted(tps, flat, right=False).view_as(q)  # grid points before q
    prev_i = torch.where(n_le > 0, last.gather(1, (n_le - 1).clamp(0, T - 1)), torch.full_like(n_le, -1))
    next_i = torch.where(n_lt < T, first.gather(1, n_lt.clamp(0, T - 1)), torch.full_like(n_lt, T))
    pi, ni = prev_i.clamp(0, T - 1), next_i.clamp(0, T - 1)
    t3 = tps.unsqueeze(-1).expand(B, T, D)
    return Neighbours(
        t3.gather(1, pi), values.gather(1, pi), prev_i >= 0, t3.gather(1, ni), values.gather(1, ni), next_i < T
    )


class Baseline(ForecastModel):
    """A parameter-free forecaster: subclasses implement ``point(batch, q [B, Tq, D]) -> [B, Tq, D]``."""

    name = "baseline"

    def point(self, batch: Batch, q: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forecast(
        self, batch: Batch, query_times: Tensor, num_samples: int = 1, *, max_steps: int | None = None
    ) -> Forecast:
        """A deterministic point forecast at ``query_times`` ([Tq] or [B, Tq]); one sample path whatever
        ``num_samples`` (its CRPS is then its absolute error). ``max_steps``: unused (no solver)."""
        check_positive(num_samples=num_samples)
        self.last_nfe = 0.0
        qt = check_query_times(batch, query_times)
        B, T, D = batch.values.shape
        q = (qt.expand(B, -1) if qt.dim() == 1 else qt).unsqueeze(-1).expand(-1, -1, D)
        mean = self.point(batch, q) if T > 0 else torch.zeros_like(q)
        return Forecast(mean=mean, samples=mean.unsqueeze(0), std=None, times=query_times)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Nothing to train: the loss is the mean squared error over the batch's targets (for ``{stage}_loss``)."""
        pred = self.predict(batch).mean
        tm = batch.target_mask
        mse = ((pred - batch.values) ** 2 * tm).sum() / tm.sum().clamp_min(1.0)
        return mse, {"mse": mse}


class LOCF(Baseline):
    """Last observation carried forward (see the module docstring)."""

    name = "locf"

    def point(self, batch: Batch, q: Tensor) -> Tensor:
        return observed_neighbours(batch, q).carried()


class Nearest(Baseline):
    """The observed value nearest in time."""

    name = "nearest"

    def point(self, batch: Batch, q: Tensor) -> Tensor:
        return observed_neighbours(batch, q).nearest(q)[0]


class Linear(Baseline):
    """Linear interpolation between neighbouring observations; flat outside the observed span."""

    name = "linear"

    def point(self, batch: Batch, q: Tensor) -> Tensor:
        nb = observed_neighbours(batch, q)
        gap = nb.next_t - nb.prev_t
        inside = nb.has_prev & nb.has_next & (gap > 0)
        w = torch.where(inside, (q - nb.prev_t) / torch.where(inside, gap, torch.ones_like(gap)), torch.zeros_like(q))
        return torch.where(inside, nb.prev_v + w * (nb.next_v - nb.prev_v), nb.carried())


class Mean(Baseline):
    """The mean of each series' observed values, per channel."""

    name = "mean"

    def point(self, batch: Batch, q: Tensor) -> Tensor:
        m = batch.obs_mask
        mean = (batch.values * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, D]; 0 where nothing observed
        return mean.unsqueeze(1).expand_as(q).clone()


class Seasonal(Baseline):
    """Seasonal naive with period ``period`` (model time units); see the module docstring.

    Args:
        period: the season in model time units (the data module converts durations: ``season_period``).
        tolerance: how far (model units) the observation used may lie from ``t - k * period``; default
            ``period / 10``. Beyond it the forecast falls back to LOCF.
    """

    name = "seasonal"

    def __init__(self, period: float, tolerance: float | None = None) -> None:
        super().__init__()
        if period is None or not (math.isfinite(float(period)) and float(period) > 0):
            raise ConfigError(
                f"seasonal baseline: period={period!r} must be a positive number of model time units; "
                "pass a season (e.g. --data.season 24h)"
            )
        self.period = float(period)
        self.tolerance = self.period / 10 if tolerance is None else float(tolerance)
        check_positive(tolerance=self.tolerance)

    def point(self, batch: Batch, q: Tensor) -> Tensor:
        # the last observed time per series and channel ([B, 1, D]): the "history" the season reaches back into
        obs = batch.obs_mask > 0
        tps = batch.times_per_sample().to(q.dtype).unsqueeze(-1)
        end_t = torch.where(obs, tps, torch.full_like(tps, -math.inf)).amax(1, keepdim=True)
        behind = (q - end_t) / self.period
        k = torch.where(obs.any(1, keepdim=True), torch.ceil(behind - 1e-6).clamp_min(1.0), torch.ones_like(behind))
        target = q - k * self.period
        # one neighbour search for the query times (LOCF fallback) and their seasonal targets
        both = observed_neighbours(batch, torch.cat([q, target], 1))
        Tq = q.shape[1]
        here, back = Neighbours(*(f[:, :Tq] for f in both)), Neighbours(*(f[:, Tq:] for f in both))
        value, time, found = back.nearest(target)
        close = found & ((time - target).abs() <= self.tolerance)
        return torch.where(close, value, here.carried())


BASELINES: dict[str, type[Baseline]] = {c.name: c for c in (LOCF, Nearest, Linear, Mean, Seasonal)}


def build_baseline(name: str, season: float | None = None) -> Baseline:
    """The baseline called ``name`` (``seasonal`` needs ``season``, its period in model time units)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if name == "seasonal":
        if season is None:
            raise ConfigError(
                "the seasonal baseline needs a season: pass --data.season (a duration such as 24h, "
                "or a number of time units) or leave 'seasonal' out of the baselines"
            )
        return Seasonal(season)
    return BASELINES[name]()


def baseline_names(names: list[str] | tuple[str, ...] | None, season: float | None) -> list[str]:
    """The baselines to score: ``names`` as given (checked), or by default :data:`DEFAULT_BASELINES` plus
    ``seasonal`` when a season is known."""
    if names is None:
        return list(DEFAULT_BASELINES) + (["seasonal"] if season is not None else [])
    names = list(names)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BASELINES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"baselines {names} list one twice; list each once")
    return names


__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "REFERENCE",
    "Baseline",
    "LOCF",
    "Nearest",
    "Linear",
    "Mean",
    "Seasonal",
    "Neighbours",
    "observed_neighbours",
    "build_baseline",
    "baseline_names",
]

"""Per-window normalisation and naive-forecast bases: a model that works in each window's own units and, past the
cutoff, learns a correction on top of a naive forecast instead of the level itself.

:class:`WindowModel` wraps any :class:`~ts_neuralode.models.base.ForecastModel` (the ``inner`` model). From each
series' *context* — the values under ``batch.obs_mask``, per series and channel, nothing after the cutoff — it
computes

* a location ``m`` (the context mean) and a scale ``s`` (the context standard deviation, ``sqrt(var + eps²)``;
  1 where a channel has fewer than two context points) when ``normalize="window"`` (RevIN-style; Kim et al.
  2022); ``m = 0``, ``s = 1`` when ``normalize="none"``;
* a base forecast ``b(t)`` for times after the cutoff (``base``):

  ===================  ================================================================================
  ``none``             ``m`` (the model forecasts the level, in window units)
  ``mean``             the context mean
  ``last``             the last context value (LOCF)
  ``trend``            the least-squares line through the context, extended past the cutoff
  ``damped``           the last context value plus the context's least-squares slope, damped as it is carried
                       forward (Holt's damped trend in continuous time): ``last + slope τ (1 - exp(-Δ/τ))`` at
                       ``Δ`` after the last observation, so the forecast levels off at ``last + slope τ``
                       (growth curves that flatten, lab values that drift). ``τ = exp(θ) × the context's time
                       span`` per series, with ``θ`` a learned parameter per channel (initialised to ``log 2``),
                       trained with the model through the correction's loss
  ``seasonal``         seasonal naive: the context value ``k`` periods back (``k >= 1`` the fewest that reach
                       into the context; the observation nearest ``t - kP`` within ``P/10``, else LOCF) — the
                       package's ``seasonal`` baseline
  ``seasonal_trend``   seasonal naive plus ``k`` times the context's mean change over one period (its seasonal
                       differences; 0 where the context spans less than a period)
  ``harmonic``         the context's harmonic seasonal profile plus its deseasonalised current level and drift
                       (:mod:`ts_neuralode.data.harmonic`); ``seasonal_trend`` where the context spans
                       fewer than two seasons. The level's departure from the deseasonalised context's
                       least-squares line decays as ``exp(-Δ/τ)`` (a continuous-time AR(1), as the departures
                       of a seasonal series from its trend often are: El Niño's anomalies, a sensor's weather),
                       ``τ = exp(ρ)`` seasons with ``ρ`` a learned parameter per channel (initialised to
                       ``log 4``: nearly the persistent level of a random walk, where it stays)
  ``auto``             ``harmonic`` when the model knows a season (``--data.season``), else ``last``
  ===================  ================================================================================

The inner model reads and predicts ``z``: ``(y - m) / s`` at or before each series' cutoff (the context, as
RevIN) and ``(y - b(t)) / s`` after it (the correction); its forecast is mapped back with ``y = b(t) + s z``
(``m + s z`` at or before the cutoff), samples and predictive std alike. So a normalised model is invariant to
adding a constant to a series (or multiplying it by a positive number), and a model whose correction is zero
forecasts exactly its base — which is where training starts: with a base, the inner model's mean read-out is
initialised to 0 (:meth:`~ts_neuralode.models.base.ForecastModel.zero_mean_output`), so the model moves away from
the naive forecast only as far as the training windows pay for it. The inner model's loss is in ``z`` units: each window
weighs the same, whatever its level and spread. The bases' own parameters (``θ``, ``ρ``: one number per channel
each) are stepped :data:`~ts_neuralode.training.module.BASE_LR_FACTOR` times faster than the network.

Measured on real data in results/forecast_ablations.md (``scripts/ablate_forecast.py``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.harmonic import HarmonicFit
from ts_neuralode.errors import ConfigError, check_choice
from ts_neuralode.models.base import Forecast, ForecastModel, check_query_times
from ts_neuralode.models.baselines import Seasonal, observed_neighbours

NORMALIZE = ("none", "window")
BASES = ("none", "mean", "last", "trend", "damped", "seasonal", "seasonal_trend", "harmonic")
#: the bases that need a season
SEASONAL_BASES = ("seasonal", "seasonal_trend", "harmonic")
#: ``base="auto"``: the base a model corrects when none is named — harmonic with a season (seasonal_trend where the
#: context spans less than two seasons), else last (the winners of results/forecast_ablations.md)
AUTO_BASE = {True: "harmonic", False: "last"}
#: floor of the window scale, in the data module's scaled units (standardised per channel on the training part):
#: a near-constant context must not blow its targets up
SCALE_EPS = 1e-2
#: the damped base's initial time constant, in context spans (``θ = log DAMPED_INIT``): half the slope is left after
#: 1.4 spans, a third of the straight line's rise given up at one span
DAMPED_INIT = 2.0
#: the harmonic base's initial reversion time, in seasons (``log`` of it is learned per channel): the level's
#: departure from the context's line keeps 37% after a season. A start at 4 seasons (78% kept: nearly the persistent
#: level) left the learned value long where the data wanted it short: with 1, the automatic choice forecast UK driver
#: deaths at 0.563-0.575x the last value over three seeds (0.598-0.647 from 4; seasonal naive 0.596) and AirPassengers
#: at 0.201-0.208 (0.221-0.225); El Niño and the demo unchanged within the seeds' spread, nottem and CO2 2-3% and 0.7%
#: worse (results/peers_irregular.md)
REVERSION_INIT = 1.0


def resolve_base(base: str, season_period: float | None) -> str:
    """``base`` itself, or for ``"auto"`` the base of :data:`AUTO_BASE` (harmonic when a season is known)."""
    return AUTO_BASE[season_period is not None] if base == "auto" else base


def check_window_options(normalize: str, base: str, season_period: float | None) -> None:
    """One-line ConfigErrors for unknown names or a seasonal base without a season."""
    check_choice(normalize, "normalize", NORMALIZE)
    check_choice(base, "base", BASES + ("auto",))
    if base in SEASONAL_BASES and season_period is None:
        raise ConfigError(
            f"base={base!r} needs a season: pass --data.season (e.g. 24h, 52W) or choose another base "
            f"({', '.join(b for b in BASES if b not in SEASONAL_BASES)})"
        )


class WindowStats:
    """Location, scale and base of every series and channel of a batch's context (see the module docstring).

    ``loc``, ``scale``: ``[B, 1, D]``; ``base(q)`` for per-channel query times ``q`` ``[B, Tq, D]``.
    """

    def __init__(
        self,
        batch: Batch,
        normalize: str,
        base: str,
        period: float | None,
        damping: Tensor | None = None,
        reversion: Tensor | None = None,
    ) -> None:
        v, m = batch.values, batch.obs_mask
        self.batch, self.base_kind, self.period, self.damping = batch, base, period, damping
        self.reversion = reversion
        n = m.sum(1, keepdim=True)
        mean = (v * m).sum(1, keepdim=True) / n.clamp_min(1.0)
        self.mean = mean
        if normalize == "window":
            var = (((v - mean) ** 2) * m).sum(1, keepdim=True) / n.clamp_min(1.0)
            scale = torch.sqrt(var + SCALE_EPS**2)
            self.loc = mean
            self.scale = torch.where(n >= 2, scale, torch.ones_like(scale))
        else:
            self.loc = torch.zeros_like(mean)
            self.scale = torch.ones_like(mean)
        if base in ("trend", "damped"):
            t = batch.times_per_sample().to(v.dtype).unsqueeze(-1).expand_as(v)
            tm = (t * m).sum(1, keepdim=True) / n.clamp_min(1.0)
            vt = (((t - tm) ** 2) * m).sum(1, keepdim=True)
            cov = ((t - tm) * (v - mean) * m).sum(1, keepdim=True)
            ok = (n >= 2) & (vt > 0)
            self.slope = torch.where(ok, cov / torch.where(ok, vt, torch.ones_like(vt)), torch.zeros_like(vt))
            self.t_mean = tm
            if base == "damped":  # the context's last time and time span, per series and channel
                obs = m > 0
                self.t_end = torch.where(obs, t, torch.full_like(t, -math.inf)).amax(1, keepdim=True)
                t_start = torch.where(obs, t, torch.full_like(t, math.inf)).amin(1, keepdim=True)
                self.span = torch.where(ok, self.t_end - t_start, torch.ones_like(vt))
        if base in ("seasonal_trend", "harmonic"):
            self.drift = self._seasonal_drift()
        # the harmonic fit, made once per batch: read at the batch's times and at the forecast's
        self.harmonic = HarmonicFit(batch, float(period)) if base == "harmonic" else None

    def _seasonal_drift(self) -> Tensor:
        """``[B, 1, D]`` the mean seasonal difference ``y(t) - y(t - P)`` over the context points that have an
        observation within ``P/10`` of ``t - P`` (0 where none does)."""
        b, P = self.batch, float(self.period)
        obs = b.obs_mask > 0
        t = b.times_per_sample().to(b.values.dtype).unsqueeze(-1).expand_as(b.values)
        back = t - P
        nb = observed_neighbours(b, back)
        value, time, found = nb.nearest(back)
        pair = obs & found & ((time - back).abs() <= P / 10)
        w = pair.to(b.values.dtype)
        return ((b.values - value) * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)

    def base(self, q: Tensor) -> Tensor:
        """``[B, Tq, D]`` the base forecast at per-channel query times ``q``."""
        kind = self.base_kind
        if kind == "none":
            return self.loc.expand_as(q)
        if kind == "mean":
            return self.mean.expand_as(q)
        if kind == "last":
            return observed_neighbours(self.batch, torch.full_like(q, math.inf)).carried()
        if kind == "trend":
            return self.mean + self.slope * (q - self.t_mean)
        if kind == "damped":
            last = observed_neighbours(self.batch, torch.full_like(q, math.inf)).carried()
            theta = torch.zeros(q.shape[-1], dtype=q.dtype, device=q.device) if self.damping is None else self.damping
            tau = torch.exp(theta.to(q.dtype)).view(1, 1, -1) * self.span
            # time since the last observation (0 where a channel has none: its slope is 0 and no gradient turns NaN)
            dt = torch.where(torch.isfinite(self.t_end), q - self.t_end, torch.zeros_like(q)).clamp_min(0.0)
            return last + self.slope * tau * -torch.expm1(-dt / tau)
        seasonal = Seasonal(self.period).point(self.batch, q)
        if kind == "seasonal":
            return seasonal
        if kind == "harmonic":
            tau = None if self.reversion is None else torch.exp(self.reversion) * float(self.period)
            return torch.where(self.harmonic.ok, self.harmonic.at(q, tau), self._seasonal_trend(q, seasonal))
        return self._seasonal_trend(q, seasonal)

    def _seasonal_trend(self, q: Tensor, seasonal: Tensor) -> Tensor:
        # seasonal_trend: k periods back (as the seasonal baseline counts them) times the drift per period
        obs = self.batch.obs_mask > 0
        tps = self.batch.times_per_sample().to(q.dtype).unsqueeze(-1)
        end_t = torch.where(obs, tps, torch.full_like(tps, -math.inf)).amax(1, keepdim=True)
        k = torch.ceil((q - end_t) / self.period - 1e-6).clamp_min(1.0)
        k = torch.where(obs.any(1, keepdim=True), k, torch.zeros_like(k))
        return seasonal + k * self.drift

    def offset(self, q: Tensor, cutoff: Tensor) -> Tensor:
        """``[B, Tq, D]``: the location at query times at or before each series' cutoff, the base after it."""
        after = (q > cutoff.view(-1, 1, 1)).to(q.dtype)
        return after * self.base(q) + (1 - after) * self.loc.expand_as(q)


class WindowModel(ForecastModel):
    """``inner`` working in each window's units, on top of a base forecast (see the module docstring).

    Args:
        inner: the model (latent ODE, ODE-RNN, GRU-ODE …).
        normalize: ``none`` or ``window``.  base: one of :data:`BASES`.
        season_period: the season in model time units (the seasonal bases need it).
    """

    def __init__(
        self, inner: ForecastModel, normalize: str = "none", base: str = "none", season_period: float | None = None
    ) -> None:
        super().__init__()
        check_window_options(normalize, base, season_period)
        base = resolve_base(base, season_period)
        self.inner = inner
        if base != "none":  # the correction starts at 0: an untrained model forecasts its base exactly
            inner.zero_mean_output()
            # and only the correction is scored: one-step predictions of the context are in level units, and a
            # read-out trained on both carries the level into the correction (measured: results/forecast_ablations.md)
            inner.score_context = False
        self.normalize, self.base_kind = normalize, base
        self.period = None if season_period is None else float(season_period)
        # the weight of the learned correction in the forecast's mean (1: as trained); the fit sets it on its
        # validation windows (:func:`ts_neuralode.api.correction_gate.gate_correction`) and the model directory keeps it
        self.register_buffer("correction_scale", torch.ones(()))
        # the damped base's log time constant per channel (in context spans), learned with the model
        self.damping = (
            torch.nn.Parameter(torch.full((inner.input_dim,), math.log(DAMPED_INIT))) if base == "damped" else None
        )
        # the harmonic base's log reversion time per channel (in seasons), learned with the model
        self.reversion = (
            torch.nn.Parameter(torch.full((inner.input_dim,), math.log(REVERSION_INIT))) if base == "harmonic" else None
        )
        self.input_dim = inner.input_dim
        self.control_dim, self.static_dim, self.target_dim = inner.control_dim, inner.static_dim, inner.target_dim

    @property
    def last_nfe(self) -> float:  # the inner model counts its evolutions' function evaluations
        return getattr(self.inner, "last_nfe", 0.0) if "inner" in self._modules else 0.0

    @last_nfe.setter
    def last_nfe(self, value: float) -> None:
        if "inner" in self._modules:
            self.inner.last_nfe = value

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def stats(self, batch: Batch) -> WindowStats:
        return WindowStats(batch, self.normalize, self.base_kind, self.period, self.damping, self.reversion)

    def transform(self, batch: Batch) -> tuple[Batch, WindowStats]:
        """The batch in window units (every point with a value: context and targets) and the statistics."""
        st = self.stats(batch)
        B, T, D = batch.values.shape
        t = batch.times_per_sample().to(batch.values.dtype).unsqueeze(-1).expand(B, T, D)
        has = ((batch.obs_mask + batch.target_mask) > 0).to(batch.values.dtype)
        z = (batch.values - st.offset(t, batch.cutoff)) / st.scale * has
        return replace(batch, values=z), st

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        inner_batch, _ = self.transform(batch)
        return self.inner.loss(inner_batch)

    def forecast(
        self, batch: Batch, query_times: Tensor, num_samples: int = 1, *, max_steps: int | None = None
    ) -> Forecast:
        inner_batch, st = self.transform(batch)  # the batch's covariates ride along (dataclasses.replace)
        fc = self.inner.forecast(inner_batch, query_times, num_samples=num_samples, max_steps=max_steps)
        qt = check_query_times(batch, query_times)
        B, D = batch.values.shape[0], batch.values.shape[-1]
        q = (qt.expand(B, -1) if qt.dim() == 1 else qt).unsqueeze(-1).expand(-1, -1, D)
        off = st.offset(q, batch.cutoff)
        s = st.scale
        # the correction's mean is weighted by correction_scale after the cutoff; the spread around it is kept
        after = (q > batch.cutoff.view(-1, 1, 1)).to(q.dtype)
        shrink = -after * (1 - self.correction_scale.to(q.dtype)) * fc.mean
        return Forecast(
            mean=off + s * (fc.mean + shrink),
            samples=off + s * (fc.samples + shrink),
            std=None if fc.std is None else s * fc.std,
            times=fc.times,
        )

    def base_parameters(self) -> list[torch.nn.Parameter]:
        """The base's own learned time constants (the damped base's, the harmonic base's reversion): the optimiser
        steps them faster than the network (:data:`ts_neuralode.training.module.BASE_LR_FACTOR`)."""
        return [p for p in (self.damping, self.reversion) if p is not None]

    def set_correction_scale(self, weight: float) -> None:
        """Weight the learned correction by ``weight`` (0: the base alone, 1: as trained)."""
        self.correction_scale.fill_(float(weight))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # model directories written before the correction weight existed: the correction as trained
        state_dict.setdefault(prefix + "correction_scale", torch.ones(()))
        if self.reversion is not None:  # written before the harmonic base learned its reversion: none (it persists;
            # e^30 seasons, finite so that a fit resumed from such a model still has a gradient)
            state_dict.setdefault(prefix + "reversion", torch.full_like(self.reversion, 30.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


__all__ = [
    "AUTO_BASE",
    "BASES",
    "DAMPED_INIT",
    "SEASONAL_BASES",
    "resolve_base",
    "NORMALIZE",
    "WindowModel",
    "WindowStats",
    "check_window_options",
]

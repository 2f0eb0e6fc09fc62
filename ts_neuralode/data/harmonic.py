"""A seasonal forecast from the context's harmonic profile, its deseasonalised level and drift.

Seasonal naive copies one noisy observation a season back, and its drift term (``seasonal_trend``) the mean
seasonal difference: both carry the noise of single points. This forecast estimates the season from every context
point at once, at the series' own (irregular) observation times — no grid, no gap filling:

1. fit, per series and channel, by (slightly ridge-regularised) least squares over the context points of the
   last :data:`FIT_SEASONS` seasons
   ``y(t) ≈ a + b u + c u² + Σ_k [α_k sin(2πk(t - t_end)/P) + β_k cos(2πk(t - t_end)/P)]``, ``k = 1 … K``,
   ``u = (t - t_end) / span`` (the quadratic only keeps a curved trend out of the seasonal terms);
2. deseasonalise: ``s(t) = y(t) - seasonal(t)`` (the sin/cos part alone);
3. drift ``d``: the least-squares slope of ``s`` over the context; level ``ℓ``: the mean of
   ``s(t) - d (t - t_end)`` over the points within ``P / 10`` of the last one (the tolerance the seasonal naive
   forecast uses): the series' current deseasonalised level, not the fit's;
4. forecast ``ŷ(t) = ℓ + d (t - t_end) + seasonal(t)``; or, given a reversion time ``τ`` (the harmonic base of a
   window model learns one, :mod:`ts_neuralode.models.window`), with the level's departure from the deseasonalised
   context's least-squares line ``L`` decaying: ``L + (ℓ - L) exp(-(t - t_end)/τ)`` in place of ``ℓ``.

The number of harmonics ``K`` is chosen per series and channel, from 1 to :data:`HARMONICS`, by the Bayesian
information criterion of step 1's fit, ``n log(RSS/n) + p log n`` with ``p = 3 + 2K`` coefficients, among the ``K``
with at least two context points per coefficient (TBATS chooses its harmonics by an information criterion the same
way). A smooth profile (a daily temperature cycle) takes one harmonic, a skewed one (CO₂'s) three: a fixed ``K = 3``
fits the noise of the first, and forecast the demo sensors and El Niño 62% and 9% worse than the choice
(``scripts/peer_benchmark.py``'s ``base_harmonic`` row, results/peers_irregular.md).

The fit is trusted (``ok``) where the context spans at least :data:`MIN_SEASONS` seasons and some ``K`` has its two
points per coefficient; elsewhere callers fall back (the window model to seasonal naive plus drift, the
``harmonic`` baseline to seasonal naive). Every quantity is vectorised over ``[B, T, D]`` (one batched solve of
``[B, D, p, p]`` normal equations per ``K``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ts_neuralode.data.batch import Batch

#: the most harmonics of the season fitted (the information criterion chooses 1 to this many: a smooth annual or
#: daily profile needs 1–3)
HARMONICS = 3
#: the context must span this many seasons for the profile to be told from the trend
MIN_SEASONS = 2.0
#: the fit uses the last this many seasons of the context: several, to average the profile over them, and not
#: more, so the drift is today's (CO₂'s growth rate doubled over its 60 years)
FIT_SEASONS = 5.0
#: ridge on the normal equations, relative to the number of points (keeps a near-singular fit finite)
RIDGE = 1e-4


def _features(dt: Tensor, span: Tensor, period: float, k: int) -> Tensor:
    """``[..., 3 + 2k]``: 1, u, u², sin/cos of the first ``k`` harmonics at offsets ``dt`` from the last point."""
    u = dt / span
    w = 2 * math.pi * dt / period
    cols = [torch.ones_like(dt), u, u * u]
    for j in range(1, k + 1):
        cols += [torch.sin(j * w), torch.cos(j * w)]
    return torch.stack(cols, -1)


class HarmonicFit:
    """The fit of a batch's context (see the module docstring), evaluated at any query times with :meth:`at`:
    fitted once, whatever the number of query sets (a window model reads it at its batch's times and at the
    forecast's). ``ok`` ``[B, 1, D]``: False where the context is too short or too sparse for the fit;
    ``harmonics`` ``[B, D]``: the number of harmonics chosen (0 where none could be fitted)."""

    def __init__(self, batch: Batch, period: float, harmonics: int = HARMONICS) -> None:
        v = batch.values
        dtype = torch.float64  # normal equations of sin/cos and u² columns: float32 loses the small coefficients
        m = (batch.obs_mask > 0).to(dtype)
        t = batch.times_per_sample().to(dtype).unsqueeze(-1).expand_as(v)
        t_end = torch.where(m > 0, t, torch.full_like(t, -math.inf)).amax(1, keepdim=True)
        m = m * (t >= t_end - FIT_SEASONS * period).to(dtype)  # the recent seasons only: a trend that changes
        y = v.to(dtype) * m
        n = m.sum(1, keepdim=True)  # [B, 1, D]
        t_first = torch.where(m > 0, t, torch.full_like(t, math.inf)).amin(1, keepdim=True)
        finite = torch.isfinite(t_end) & torch.isfinite(t_first)
        t_end = torch.where(finite, t_end, torch.zeros_like(t_end))
        span = torch.where(finite, t_end - t_first, torch.zeros_like(t_end))
        k = harmonics
        self.t_end, self.span, self.period, self.k, self.dtype = t_end, span.clamp_min(1e-9), period, k, v.dtype
        dt = (t - t_end) * m  # masked points: dt 0, weight 0
        X = _features(dt, self.span, period, k) * m.unsqueeze(-1)  # [B, T, D, 3 + 2k]
        A = torch.einsum("btdi,btdj->bdij", X, X)
        rhs = torch.einsum("btdi,btd->bdi", X, y)
        nd = n.squeeze(1)  # [B, D]
        # the fits with 1 … k harmonics (their features are nested: the leading blocks of X, A and rhs), the one with
        # the lowest BIC kept per series and channel; its sin/cos coefficients padded with zeros to 2k
        best = torch.full_like(nd, math.inf)
        self.seas_coef = torch.zeros(*nd.shape, 2 * k, dtype=dtype, device=v.device)
        self.harmonics = torch.zeros(nd.shape, dtype=torch.long, device=v.device)  # [B, D] the K chosen (0: none)
        for j in range(1, k + 1):
            p = 3 + 2 * j
            eye = torch.eye(p, dtype=dtype, device=v.device)
            coef = torch.linalg.solve(A[..., :p, :p] + RIDGE * nd.clamp_min(1.0)[..., None, None] * eye, rhs[..., :p])
            rss = (((torch.einsum("btdi,bdi->btd", X[..., :p], coef) - y) ** 2) * m).sum(1)  # [B, D]
            bic = nd * torch.log(rss.clamp_min(1e-300) / nd.clamp_min(1.0)) + p * torch.log(nd.clamp_min(1.0))
            bic = torch.where(nd >= 2 * p, bic, torch.full_like(bic, math.inf))
            better = bic < best
            best = torch.where(better, bic, best)
            padded = torch.nn.functional.pad(coef[..., 3:], (0, 2 * (k - j)))
            self.seas_coef = torch.where(better.unsqueeze(-1), padded, self.seas_coef)
            self.harmonics = torch.where(better, j, self.harmonics)
        self.ok = finite & (span >= MIN_SEASONS * period) & torch.isfinite(best).unsqueeze(1)
        s = (y - self.seasonal(dt)) * m
        # drift: least-squares slope of the deseasonalised context
        tm = (dt * m).sum(1, keepdim=True) / n.clamp_min(1.0)
        sm = s.sum(1, keepdim=True) / n.clamp_min(1.0)
        var = (((dt - tm) ** 2) * m).sum(1, keepdim=True)
        cov = ((dt - tm) * (s - sm) * m).sum(1, keepdim=True)
        self.drift = torch.where(var > 0, cov / var.clamp_min(1e-300), torch.zeros_like(var))
        # level: the deseasonalised, drift-adjusted value of the points within a tenth of a season of the last one
        near = m * (dt >= -period / 10).to(dtype)
        self.level = ((s - self.drift * dt) * near).sum(1, keepdim=True) / near.sum(1, keepdim=True).clamp_min(1.0)
        # the deseasonalised context's least-squares line at the last point: where a reverting level tends to
        self.line = sm - self.drift * tm

    def seasonal(self, dts: Tensor) -> Tensor:
        """``[B, T, D]`` the seasonal part at offsets ``dts`` from each series' last context point."""
        f = _features(dts, self.span, self.period, self.k)[..., 3:]  # [B, T, D, 2k]
        return torch.einsum("btdi,bdi->btd", f, self.seas_coef)

    def at(self, q: Tensor, reversion: Tensor | None = None) -> Tensor:
        """``[B, Tq, D]`` the forecast at per-channel query times ``q``; ``reversion`` ``[D]`` (optional): the time
        constant, in model time units, at which the level's departure from the context's line decays (None: it
        persists)."""
        dq = q.to(self.t_end.dtype) - self.t_end
        level = self.level
        if reversion is not None:
            keep = torch.exp(-dq.clamp_min(0.0) / reversion.to(dq.dtype).view(1, 1, -1))
            level = self.line + keep * (self.level - self.line)
        return (level + self.drift * dq + self.seasonal(dq)).to(self.dtype)


def harmonic_forecast(batch: Batch, q: Tensor, period: float, harmonics: int = HARMONICS) -> tuple[Tensor, Tensor]:
    """The forecast at per-channel query times ``q`` ``[B, Tq, D]`` from the values under ``batch.obs_mask``.

    Returns ``(forecast [B, Tq, D], ok [B, 1, D])``; ``ok`` False where the context is too short or too sparse
    for the fit (the forecast there is finite but not to be used).
    """
    fit = HarmonicFit(batch, period, harmonics)
    return fit.at(q), fit.ok


__all__ = ["FIT_SEASONS", "HARMONICS", "MIN_SEASONS", "HarmonicFit", "harmonic_forecast"]

"""Masked forecast metrics as torchmetrics ``Metric`` classes.

Each metric keeps a running sum and a count of the scored (mask = 1) entries as states reduced by
``sum``, so ``compute()`` gives the exact pooled value over all batches and, under DDP, over all ranks
(torchmetrics syncs the states before computing). Entries under mask 0 never enter any state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from ts_neuralode.models.base import Forecast


class _MaskedMean(Metric):
    """Mean of a per-entry score over the entries where ``mask`` is 1."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def score(self, pred, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, pred, target: Tensor, mask: Tensor) -> None:
        mask = mask.to(torch.bool)
        s = self.score(pred, target)
        self.total += torch.where(mask, s, torch.zeros_like(s)).sum().to(torch.float64)
        self.count += mask.sum().to(torch.float64)

    def compute(self) -> Tensor:
        """The masked mean; NaN when nothing was scored."""
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).to(torch.float32)


class MaskedMSE(_MaskedMean):
    """Mean squared error over masked entries. ``update(pred [B,T,D], target, mask)``."""

    def score(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.detach() - target) ** 2


class MaskedMAE(_MaskedMean):
    """Mean absolute error over masked entries. ``update(pred [B,T,D], target, mask)``."""

    def score(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.detach() - target).abs()


def crps(forecast: Forecast, target: Tensor) -> Tensor:
    """Per-entry CRPS ``[B, T, D]`` (lower is better).

    Gaussian forecasts (``std`` set) use the closed form
    σ [z(2Φ(z) − 1) + 2φ(z) − 1/√π] with z = (y − μ)/σ; sample forecasts use the ensemble estimator
    E|X − y| − ½ E|X − X'| over the S samples; a single deterministic sample gives |x − y|.
    """
    if forecast.std is not None:
        std = forecast.std.detach().clamp_min(1e-12)
        z = (target - forecast.mean.detach()) / std
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    x = forecast.samples.detach()  # [S, B, T, D]
    first = (x - target.unsqueeze(0)).abs().mean(0)
    if x.shape[0] == 1:
        return first
    # E|X − X'| from sorted samples in O(S log S): Σ_i (2i − S − 1) x_(i) · 2 / S².
    xs, _ = torch.sort(x, dim=0)
    S = x.shape[0]
    w = (2 * torch.arange(1, S + 1, device=x.device, dtype=x.dtype) - S - 1).view(S, *([1] * (x.dim() - 1)))
    spread = 2.0 * (w * xs).sum(0) / (S * S)
    return first - 0.5 * spread


class MaskedCRPS(_MaskedMean):
    """CRPS of a :class:`Forecast` over masked entries. ``update(forecast, target, mask)``."""

    def score(self, pred: Forecast, target: Tensor) -> Tensor:
        return crps(pred, target)


def quantile_loss(forecast: Forecast, target: Tensor, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> Tensor:
    """Per-entry mean pinball loss over ``quantiles`` ``[B, T, D]``."""
    total = torch.zeros_like(target)
    for q in quantiles:
        diff = target - forecast.quantile(q).detach()
        total = total + torch.maximum(q * diff, (q - 1) * diff)
    return total / len(quantiles)


def skill(mse: float, reference_mse: float) -> float:
    """Skill against a reference forecaster (LOCF): ``mse / reference_mse``; below 1 beats the reference.
    NaN when either is not finite or the reference is 0 (a perfect reference leaves nothing to beat)."""
    mse, ref = float(mse), float(reference_mse)
    if not (math.isfinite(mse) and math.isfinite(ref)) or ref <= 0:
        return math.nan
    return mse / ref


__all__ = ["MaskedMSE", "MaskedMAE", "MaskedCRPS", "crps", "quantile_loss", "skill"]

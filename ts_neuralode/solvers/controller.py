"""The step-size controller: one object for every solve that adapts its step, forward or adjoint backward.

A PI controller (Hairer & Wanner; diffrax's ``PIDController`` without the D term). After a step whose error
ratio is ``r_n`` (RMS of error / (atol + rtol·|y|), accepted when ≤ 1) the next step is

    h_{n+1} = h_n · clamp(SAFETY · r_n^(−β1/q) · r_{n−1}^(β2/q), FACTOR_MIN, FACTOR_MAX)

with ``q`` = error-estimator order + 1 and ``r_{n−1}`` the ratio of the last *accepted* step. The running
term ``SAFETY·r_{n−1}^(β2/q)`` (``prev_term``) is ≤ SAFETY because accepted ratios are ≤ 1, so the same
formula also shrinks a rejected step (r > 1): there is no separate reject branch (fewer ops per step).

Two forms of the same arithmetic: :meth:`PIController.factor` / :meth:`~PIController.after_accept` on ``[B]``
tensors (the forward solve: every sample has its own step, computed without autograd nodes), and
:meth:`~PIController.factor_scalar` / :meth:`~PIController.after_accept_scalar` on Python floats (the
backsolve adjoint: one batch-joint step, decided on the host anyway — a tensor would add a sync per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .tableaus import Tableau

SAFETY = 0.9
FACTOR_MIN = 0.2
FACTOR_MAX = 10.0
BETA1 = 1.0  # gains of r_n and r_{n-1}, divided by q (the error-estimator order + 1)
BETA2 = 0.1
MIN_PREV_RATIO = 1e-4  # an accepted ratio this small would make the next step grow without bound


@dataclass(frozen=True)
class PIController:
    """PI step-size control for tableau order ``q − 1`` (see the module docstring)."""

    beta1: float
    beta2: float

    @classmethod
    def for_tableau(cls, tab: Tableau) -> PIController:
        q = min(tab.order, tab.error_order) + 1
        return cls(BETA1 / q, BETA2 / q)

    # -- per-sample tensors (forward solve) --------------------------------------------------------
    @staticmethod
    def initial_term(batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``SAFETY·r_{-1}^β2`` before any step (r_{-1} = 1)."""
        return torch.full((batch,), SAFETY, dtype=dtype, device=device)

    def factor(self, ratio: Tensor, prev_term: Tensor) -> Tensor:
        """``[B]`` step multipliers from the error ratios ``[B]`` (inf → FACTOR_MIN, 0 → FACTOR_MAX)."""
        return ratio.pow(-self.beta1).mul_(prev_term).clamp_(FACTOR_MIN, FACTOR_MAX)

    def after_accept(self, ratio: Tensor, accept: Tensor, prev_term: Tensor) -> Tensor:
        """The running term after a step: updated where it was accepted, kept where it was rejected."""
        return torch.where(accept, ratio.clamp(min=MIN_PREV_RATIO).pow_(self.beta2).mul_(SAFETY), prev_term)

    # -- one batch-joint float (backsolve adjoint) ---------------------------------------------------
    @staticmethod
    def initial_term_scalar() -> float:
        return SAFETY

    def factor_scalar(self, ratio: float, prev_term: float) -> float:
        if not math.isfinite(ratio):
            return FACTOR_MIN
        return min(FACTOR_MAX, max(FACTOR_MIN, (ratio if ratio > 0 else 1e-10) ** (-self.beta1) * prev_term))

    def after_accept_scalar(self, ratio: float) -> float:
        return SAFETY * max(ratio, MIN_PREV_RATIO) ** self.beta2


def error_ratio(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> Tensor:
    """RMS over channels of err / (atol + rtol·max(|y0|, |y1|)); non-finite → inf. Shapes [B, D] → [B].

    (vector_norm of err / (sqrt(D)·scale) instead of square/mean/sqrt: 3 ops fewer per step; the sqrt(D) folded into
    the tolerances.)
    """
    root_d = err.shape[-1] ** 0.5
    scale = torch.maximum(y0.abs(), y1.abs()).mul_(rtol * root_d).add_(atol * root_d)
    r = torch.linalg.vector_norm(err / scale, dim=-1)
    return torch.nan_to_num_(r, nan=math.inf, posinf=math.inf)


def initial_step(func, t0: Tensor, y0: Tensor, f0: Tensor, order: int, rtol: float, atol: float):
    """Hairer's automatic initial step, per sample (one extra evaluation). All inputs detached.

    (RMS norms as ``vector_norm / sqrt(D)``, ``d0`` and ``d1`` in one call on the stacked pair: ~10 ops fewer.)
    """
    rms = y0.shape[-1] ** -0.5
    scale = y0.abs().mul_(rtol).add_(atol)
    d0, d1 = torch.linalg.vector_norm(torch.stack((y0, f0)).div_(scale), dim=-1).mul_(rms)
    h0 = torch.where(torch.minimum(d0, d1) < 1e-5, 1e-6, d0.div(d1).mul_(0.01))
    h0 = torch.nan_to_num_(h0, nan=1e-6, posinf=1e-6)
    y1 = torch.addcmul(y0, h0.unsqueeze(-1), f0)
    f1 = func(t0 + h0, y1)
    d2 = torch.linalg.vector_norm((f1 - f0).div_(scale), dim=-1).mul_(rms).div_(h0)
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax).pow_(1.0 / (order + 1)))
    h = torch.minimum(100 * h0, h1)
    return torch.nan_to_num_(h, nan=1e-6, posinf=1e-6)

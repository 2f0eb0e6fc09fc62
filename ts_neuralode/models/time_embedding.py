"""Time embeddings ``φ: R -> R^D`` with ``φ(0) = 0`` exactly, one value per channel.

They scale the residual of a neural flow, ``F(t, x) = x + φ(t) ⊙ g(t, x)``, so ``F(0, x) = x`` holds
exactly whatever the network ``g`` computes. ``t`` is ``[..., 1]``; the result is ``[..., D]``.

====================  ===========================================  ==============  ===============
name                  φ_d(t)                                       parameters      bound on |φ|
====================  ===========================================  ==============  ===============
``linear``            s_d · t                                      s [D]           unbounded
``tanh``              tanh(s_d · t)                                s [D]           1
``log``               sign(t) · log(exp(s_d) · |t| + 1)            s [D]           unbounded
``fourier``           Σ_k w_dk · sin(a_dk · t)                     w, a [D, K]     Σ_k |w_dk|
``fourier_bounded``   Σ_k softmax_k(w_d)_k / 2 · sin(a_dk · t)     w, a [D, K]     1/2
====================  ===========================================  ==============  ===============

``log`` is the paper's ``log(exp(s)·t + 1)`` for ``t >= 0``, extended to negative times as an odd function
(``sign(t)·log(exp(s)|t| + 1)``) so that backward evolutions (``t < 0``) are defined; its derivative at 0 is
``exp(s)`` from both sides.

``bound`` (a float, ``inf`` when unbounded) is what the ResNet and GRU flows consult: they are invertible
wherever ``|φ(t)| <= 1`` (see :mod:`ts_neuralode.models.flows`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ts_neuralode.errors import ConfigError
from ts_neuralode.models.nets import check_positive_int


class TimeEmbedding(nn.Module):
    """Base class: ``forward(t [..., 1]) -> [..., dim]`` with ``φ(0) = 0``."""

    bound: float = math.inf

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "time embedding dim")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LinearTimeEmbedding(TimeEmbedding):
    """``φ(t) = s ⊙ t``."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.scale = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))

    def forward(self, t: Tensor) -> Tensor:
        return self.scale * t


class TanhTimeEmbedding(LinearTimeEmbedding):
    """``φ(t) = tanh(s ⊙ t)``, ``|φ| < 1``."""

    bound = 1.0

    def forward(self, t: Tensor) -> Tensor:
        return torch.tanh(self.scale * t)


class LogTimeEmbedding(TimeEmbedding):
    """``φ(t) = sign(t) · log(exp(s) ⊙ |t| + 1)`` (odd extension of the paper's form to ``t < 0``)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, t: Tensor) -> Tensor:
        return torch.sign(t) * torch.log1p(torch.exp(self.log_scale) * t.abs())


class FourierTimeEmbedding(TimeEmbedding):
    """``φ_d(t) = Σ_k w_dk sin(a_dk t)`` with ``num_features`` (K) trainable frequencies per channel.

    Frequencies start log-uniformly spread over [0.1, 3] radians per time unit (several time scales
    present at initialisation); weights start at ``±1/K``-sized values.
    """

    def __init__(self, dim: int, num_features: int = 8) -> None:
        super().__init__(dim)
        self.num_features = check_positive_int(num_features, "time_embedding_features")
        k = self.num_features
        log_freq = torch.empty(dim, k).uniform_(math.log(0.1), math.log(3.0))
        self.freq = nn.Parameter(log_freq.exp())
        self.weight = nn.Parameter(torch.empty(dim, k).uniform_(-1.0, 1.0) / math.sqrt(k))

    def _weights(self) -> Tensor:
        return self.weight

    def forward(self, t: Tensor) -> Tensor:
        # [..., 1, 1] * [D, K] -> [..., D, K] -> weighted sum over K -> [..., D]
        waves = torch.sin(t.unsqueeze(-1) * self.freq)
        return (waves * self._weights()).sum(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_features={self.num_features}"


class BoundedFourierTimeEmbedding(FourierTimeEmbedding):
    """Fourier embedding with weights ``softmax(w)/2`` (over the K features), so ``|φ| <= 1/2``."""

    bound = 0.5

    def _weights(self) -> Tensor:
        return torch.softmax(self.weight, dim=-1) / 2


TIME_EMBEDDINGS: dict[str, type[TimeEmbedding]] = {
    "linear": LinearTimeEmbedding,
    "tanh": TanhTimeEmbedding,
    "log": LogTimeEmbedding,
    "fourier": FourierTimeEmbedding,
    "fourier_bounded": BoundedFourierTimeEmbedding,
}


def make_time_embedding(name: str, dim: int, *, num_features: int = 8) -> TimeEmbedding:
    """Build a time embedding by name (see the table above); ``num_features`` applies to Fourier ones."""
    key = str(name).lower()
    if key not in TIME_EMBEDDINGS:
        raise ConfigError(f"time_embedding={name!r} is not supported; choose one of {', '.join(TIME_EMBEDDINGS)}")
    cls = TIME_EMBEDDINGS[key]
    if issubclass(cls, FourierTimeEmbedding):
        return cls(dim, num_features=num_features)
    return cls(dim)


__all__ = [
    "TimeEmbedding",
    "LinearTimeEmbedding",
    "TanhTimeEmbedding",
    "LogTimeEmbedding",
    "FourierTimeEmbedding",
    "BoundedFourierTimeEmbedding",
    "TIME_EMBEDDINGS",
    "make_time_embedding",
]

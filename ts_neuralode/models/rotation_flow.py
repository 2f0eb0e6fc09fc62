"""A flow layer whose oscillation frequency is read from the state: rotations by ``ω(x_B) · t``.

``F(t, x)`` rotates the first ``2P`` channels, taken as ``P`` pairs ``(a_k, b_k)``, by the angles ``θ_k = ω_k(x_B) t``
and leaves the other channels ``x_B`` as they are:

    [a_k', b_k'] = [cos θ_k · a_k − sin θ_k · b_k,  sin θ_k · a_k + cos θ_k · b_k],   ω_k(x_B) = ω0_k · exp(n_k(x_B))

with ``ω0`` trainable angular frequencies (radians per time unit, spread evenly in log over [0.5, 8] at
initialisation) and ``n`` an MLP whose last layer starts at zero (every series starts at ``ω0``). It is the exact
solution of the linear ODE ``da_k/dt = −ω_k b_k, db_k/dt = ω_k a_k, dx_B/dt = 0``, so ``F(0, x) = x``,
``F(s + t, x) = F(s, F(t, x))`` and the inverse is the rotation by ``−θ`` (``x_B`` is unchanged, so ``ω`` is read
from ``y`` as from ``x``): always invertible, in closed form.

Why (results/flows_periodic.md): the ResNet, GRU and coupling flows assemble every oscillation from fixed time
features ``φ(t)``, so a change of ``z0`` cannot change a series' frequency except through those features, and the
latent flows sat on the mean-curve plateau of the periodic set (interpolation MSE 0.27–0.39 against the latent
ODE's 0.11). Here ``∂F/∂x_B`` contains ``t · ∂ω/∂x_B`` from the start — the first-order term of a frequency change
that a rotating ODE has — so the encoder's frequency information has a direct path to the output. It is placed first
in a flow stack (``EvolutionConfig.rotation_pairs``), ahead of the flow kind's own layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ts_neuralode.errors import ConfigError
from ts_neuralode.models.nets import check_positive_int, mlp


class RotationFlowLayer(nn.Module):
    """``P`` channel pairs rotated by ``ω(x_B) t`` (see the module docstring); ``x`` is ``[..., D]`` with
    ``D > 2P`` and ``t`` a ``[..., 1]`` tensor broadcastable to it (as :func:`ts_neuralode.models.flows.broadcast_time`
    gives)."""

    def __init__(
        self, dim: int, pairs: int, *, hidden_dim: int = 64, num_layers: int = 2, activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.pairs = check_positive_int(pairs, "rotation_pairs")
        if 2 * pairs >= dim:
            raise ConfigError(
                f"rotation_pairs={pairs} needs a state of more than {2 * pairs} channels (it has {dim}): the "
                f"rotated pairs take 2 x {pairs} channels and the frequencies are read from the rest; use "
                f"rotation_pairs <= {(dim - 1) // 2} or a larger latent_dim"
            )
        # spread evenly in log over [0.5, 8] (each pair at the middle of its share): a random draw can leave every
        # pair far from the data's frequencies, where the loss gives little gradient towards them
        share = (torch.arange(pairs, dtype=torch.float32) + 0.5) / pairs
        self.log_omega0 = nn.Parameter(math.log(0.5) + share * math.log(16.0))
        self.net = mlp(dim - 2 * pairs, pairs, check_positive_int(hidden_dim, "hidden_dim"), num_layers, activation)
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def omega(self, x: Tensor) -> Tensor:
        """Angular frequencies ``[..., P]`` of the state ``x`` (read from its channels past the pairs)."""
        return torch.exp(self.log_omega0 + self.net(x[..., 2 * self.pairs :]))

    def _rotate(self, t: Tensor, x: Tensor, sign: float) -> Tensor:
        p = self.pairs
        theta = sign * t * self.omega(x)  # [..., P]
        cos, sin = torch.cos(theta), torch.sin(theta)
        a, b = x[..., 0 : 2 * p : 2], x[..., 1 : 2 * p : 2]
        rotated = torch.stack([cos * a - sin * b, sin * a + cos * b], dim=-1).flatten(-2)
        return torch.cat([rotated, x[..., 2 * p :]], dim=-1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self._rotate(t, x, 1.0)

    def inverse(self, t: Tensor, y: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
        """Closed form: the rotation by ``−ω(y_B) t`` (``iters``/``tol`` unused)."""
        return self._rotate(t, y, -1.0)

    @property
    def guaranteed_invertible(self) -> bool:
        return True


__all__ = ["RotationFlowLayer"]

"""GRU-ODE-Bayes (De Brouwer et al. 2019) and its GRU-flow counterpart.

Between observations h follows the continuous GRU dynamics dh/dt = (1 − z) ⊙ (g − h)
(``make_evolution("ode", dim, vector_field="gru")``; ``evolution="gru_flow"`` swaps in the GRU flow).
p(x | h) = N(μ, exp(logvar)) with (μ, logvar) = MLP(h). At an observation, the GRU-Bayes jump reads per
channel ``[x, μ, logvar, (x − μ)/σ]`` through a per-channel linear map + ReLU, zeroed on unobserved
channels, into a GRU cell. Loss (per known value) = pre-jump Gaussian NLL
+ ``kl_weight`` · KL(N(μ⁺, σ⁺²) ‖ N(x, obs_std²)) of the post-jump prediction on observed values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ts_neuralode.models.base import Grid, check_positive
from ts_neuralode.models.nets import mlp
from ts_neuralode.models.recurrent import FilteringModel


class GRUBayesUpdate(nn.Module):
    """The GRU-Bayes jump: per-channel preparation of [x, μ, logvar, error], masked, into a GRU cell."""

    def __init__(self, input_dim: int, state_dim: int, prep_dim: int) -> None:
        super().__init__()
        self.w_prep = nn.Parameter(torch.randn(input_dim, 4, prep_dim) * math.sqrt(2.0 / (4 + prep_dim)))
        self.b_prep = nn.Parameter(torch.zeros(input_dim, prep_dim))
        self.cell = nn.GRUCell(input_dim * prep_dim, state_dim)

    def forward(self, h: Tensor, x: Tensor, m: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
        error = (x - mean) * torch.exp(-0.5 * logvar)
        feats = torch.stack([x, mean, logvar, error], dim=-1)  # [B, D, 4]
        feats = torch.relu(torch.einsum("bdi,dio->bdo", feats, self.w_prep) + self.b_prep)
        feats = feats * m.unsqueeze(-1)
        return self.cell(feats.flatten(1), h)


class GRUODE(FilteringModel):
    """GRU-ODE-Bayes forecaster (evolution kind ``"ode"``: continuous GRU field by default; ``"gru_flow"``: GRU flow).

    Options as :class:`~ts_neuralode.models.ode_rnn.ODERNN` (those of ``FilteringModel`` and ``NeuralModel``; with
    ``control_dim`` the GRU gates also read ``u(t)``), plus its own: ``prep_dim`` (per-channel jump features),
    ``obs_std`` (std of the KL target N(x, obs_std²)) and ``kl_weight`` (1e-4 as in the paper).
    """

    #: the continuous GRU dynamics between observations, unless the evolution's config names another field
    vector_field = "gru"

    def __init__(self, prep_dim: int = 8, obs_std: float = 0.01, kl_weight: float = 1e-4, **options: Any) -> None:
        super().__init__(**options)
        check_positive(prep_dim=prep_dim, obs_std=obs_std)
        self.obs_std = float(obs_std)
        self.kl_weight = float(kl_weight)
        self.evolution = self.evolution_config.build(self.latent_dim, self.control_dim)
        self.head = mlp(self.latent_dim, 2 * self.input_dim, self.hidden_dim, num_layers=1, activation="relu")
        self.jump = GRUBayesUpdate(self.input_dim, self.latent_dim, prep_dim)

    def _params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.head(h).chunk(2, dim=-1)
        # Keep the variance above min_std² (a soft floor) so the NLL cannot collapse onto one point.
        logvar = torch.logaddexp(logvar, torch.full_like(logvar, 2 * math.log(self.min_std)))
        return mean, logvar

    def readout(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self._params(h)
        return mean, torch.exp(0.5 * logvar)

    def update(self, h: Tensor, x: Tensor, m: Tensor) -> Tensor:
        mean, logvar = self._params(h)
        return self.jump(h, x, m, mean, logvar)

    def extra_loss(self, post: Tensor, grid: Grid, scored: Tensor) -> dict[str, Tensor]:
        if self.kl_weight == 0:
            return {}
        mean, logvar = self._params(post)
        var_p = self.obs_std**2
        kl = 0.5 * (math.log(var_p) - logvar + (torch.exp(logvar) + (mean - grid.values) ** 2) / var_p - 1.0)
        kl = (kl * self._targets_only(grid.obs_mask)).sum() / scored.sum().clamp_min(1.0)
        return {"kl": self.kl_weight * kl}

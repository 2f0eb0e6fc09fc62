"""ODE-RNN (Rubanova et al. 2019) and, with a flow evolution, flow-RNN.

h evolves between observation times by the evolution; at each observation a GRU cell reads
``[x ⊙ m, m]`` (rows with nothing observed keep h unchanged); a Gaussian read-out MLP(h) → (mean, std)
gives the prediction at any time from the state just *before* that time's update. Query times after the
last observation are reached from the last update with one evolution call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ts_neuralode.models.base import check_positive
from ts_neuralode.models.evolution_config import EvolutionConfig
from ts_neuralode.models.nets import mlp
from ts_neuralode.models.recurrent import FilteringModel, GRUUpdate


class ODERNN(FilteringModel):
    """ODE-RNN / flow-RNN forecaster with a Gaussian output.

    Args:
        input_dim: channels D.  evolution: an :class:`EvolutionConfig` (or just its kind, "ode" or a flow).
        latent_dim: state size H.  hidden_dim: width of the read-out (and of the evolution's nets unless its
        config sets ``hidden_dim``).  loss: "nll" (Gaussian, learned std) or "mse".  min_std: std floor.
        control_dim: channels of the known-future covariates driving the evolution (0: none).  static_dim: width of
        the encoded static covariates added (linearly) to the initial state.  target_dim: the first channels are
        targets, the rest past-only covariates (read, never scored; None: all channels are targets).
    """

    def __init__(
        self,
        input_dim: int = 1,
        evolution: EvolutionConfig | str | None = None,
        latent_dim: int = 16,
        hidden_dim: int = 64,
        loss: str = "nll",
        min_std: float = 1e-3,
        control_dim: int = 0,
        static_dim: int = 0,
        target_dim: int | None = None,
    ) -> None:
        super().__init__(loss=loss, min_std=min_std)
        check_positive(input_dim=input_dim, latent_dim=latent_dim, hidden_dim=hidden_dim, min_std=min_std)
        self.input_dim = input_dim
        config = EvolutionConfig.coerce(evolution).resolve(hidden_dim=hidden_dim, vector_field="mlp")
        self._covariate_inputs(static_dim, target_dim, control_dim)
        self.h0 = nn.Parameter(torch.zeros(latent_dim))
        self.static_proj = nn.Linear(static_dim, latent_dim) if static_dim else None
        self.cell = GRUUpdate(input_dim, latent_dim)
        self.evolution = config.build(latent_dim, self.control_dim)
        self.head = mlp(latent_dim, 2 * input_dim, hidden_dim, num_layers=1)

    def readout(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.head(h).chunk(2, dim=-1)
        return mean, F.softplus(raw) + self.min_std

    def update(self, h: Tensor, x: Tensor, m: Tensor) -> Tensor:
        return self.cell(h, x, m)

"""ODE-RNN (Rubanova et al. 2019) and, with a flow evolution, flow-RNN.

h evolves between observation times by the evolution; at each observation a GRU cell reads
``[x ⊙ m, m]`` (rows with nothing observed keep h unchanged); a Gaussian read-out MLP(h) → (mean, std)
gives the prediction at any time from the state just *before* that time's update. Query times after the
last observation are reached from the last update with one evolution call.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F

from ts_neuralode.models.nets import mlp
from ts_neuralode.models.recurrent import FilteringModel, GRUUpdate


class ODERNN(FilteringModel):
    """ODE-RNN / flow-RNN forecaster with a Gaussian output.

    Options: those of :class:`~ts_neuralode.models.recurrent.FilteringModel` (``loss``: "nll", Gaussian with a
    learned std, or "mse"; ``min_std``: std floor) and of :class:`~ts_neuralode.models.base.NeuralModel`
    (``input_dim``, ``evolution``, ``latent_dim``, ``hidden_dim``: width of the read-out and of the evolution's nets
    unless its config sets ``hidden_dim``, ``control_dim``, ``static_dim``: added linearly to the initial state,
    ``target_dim``).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cell = GRUUpdate(self.input_dim, self.latent_dim)
        self.evolution = self.evolution_config.build(self.latent_dim, self.control_dim)
        self.head = mlp(self.latent_dim, 2 * self.input_dim, self.hidden_dim, num_layers=1)

    def readout(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.head(h).chunk(2, dim=-1)
        return mean, F.softplus(raw) + self.min_std

    def update(self, h: Tensor, x: Tensor, m: Tensor) -> Tensor:
        return self.cell(h, x, m)

"""The batch container: the one place that documents what a batch of irregular series holds.

Shapes: ``B`` series in the batch, ``T`` time points, ``D`` channels. Times and values are in the
*normalised* units of the DataModule (see its scalers); the DataModule maps predictions back.

Two layouts share this container:

* union grid (the Latent ODE convention): ``times`` is ``[T]``, the sorted union of every time at which
  any series in the batch has a point; ``time_mask[b, t]`` says whether series ``b`` has a point there.
* per-series padded grid (for the solver's ``[B, T]`` mode): ``times`` is ``[B, T]``; row ``b`` holds
  series ``b``'s own strictly increasing times followed by padding; ``time_mask`` is False on padding
  (padded times repeat the row's last real time, so every row stays non-decreasing).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ts_neuralode.data.covariates import CovariateBatch


@dataclass
class Batch:
    """A batch of irregularly sampled series.

    Attributes:
        times: ``[T]`` (union grid) or ``[B, T]`` (per-series padded grid), float.
        values: ``[B, T, D]`` normalised values; 0 wherever nothing was observed.
        obs_mask: ``[B, T, D]`` float 0/1: values the model may read (its conditioning set).
        target_mask: ``[B, T, D]`` float 0/1: values to predict and score. For interpolation this is every
            observed point (reconstruct all); the held-out points are ``target_mask * (1 - obs_mask)``.
            For extrapolation it is every observed point after the cut; for a forecast window, every observed
            point in the horizon after its cutoff (``obs_mask`` is then the context window before it).
        time_mask: ``[B, T]`` bool: True where series ``b`` has a real point at time index ``t``.
        series_idx: ``[B]`` long: position of each series in ``DataModule.series_ids``.
        cutoff: ``[B]`` float: the last conditioning time of each series (the extrapolation cut or the forecast
            window's cutoff, or the last observed time for interpolation), normalised units.
        covariates: known-future covariates ``u(t)`` of each series
            (:class:`~ts_neuralode.data.covariates.CovariateBatch`), or None.
    """

    times: Tensor
    values: Tensor
    obs_mask: Tensor
    target_mask: Tensor
    time_mask: Tensor
    series_idx: Tensor
    cutoff: Tensor
    covariates: CovariateBatch | None = None

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    @property
    def shared_grid(self) -> bool:
        """True for the union-grid layout (``times`` is ``[T]``)."""
        return self.times.dim() == 1

    def times_per_sample(self) -> Tensor:
        """``[B, T]`` times for either layout (a view for the union grid)."""
        if self.shared_grid:
            return self.times.unsqueeze(0).expand(self.batch_size, -1)
        return self.times

    @property
    def held_out_mask(self) -> Tensor:
        """``[B, T, D]``: targets the model did not see (interpolation's held-out points)."""
        return self.target_mask * (1.0 - self.obs_mask)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            **{f.name: _maybe(getattr(self, f.name), "to", device, non_blocking=non_blocking) for f in fields(self)}
        )

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: _maybe(getattr(self, f.name), "pin_memory") for f in fields(self)})

    def __len__(self) -> int:
        return self.batch_size


def _maybe(x, method: str, *args, **kwargs):
    """``x.method(...)``, or None for an absent optional field."""
    return None if x is None else getattr(x, method)(*args, **kwargs)

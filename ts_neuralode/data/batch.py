"""The batch container: the one place that documents what a batch of irregular series holds.

Shapes: ``B`` series in the batch, ``T`` time points, ``D`` channels. Times and values are in the
*normalised* units of the DataModule (see its scalers); the DataModule maps predictions back.

Two layouts share this container:

* union grid (the Latent ODE convention): ``times`` is ``[T]``, the sorted union of every time at which
  any series in the batch has a point; ``time_mask[b, t]`` says whether series ``b`` has a point there.
* per-series padded grid (for the solver's ``[B, T]`` mode): ``times`` is ``[B, T]``; row ``b`` holds
  series ``b``'s own strictly increasing times followed by padding; ``time_mask`` is False on padding
  (padded times repeat the row's last real time, so every row stays non-decreasing).

A batch may carry its covariates, :class:`CovariateBatch`: ``u(t)`` at any model time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

_B = TypeVar("_B", "Batch", "CovariateBatch")


@dataclass
class CovariateBatch:
    """``u(t)`` of a batch: its covariates, known-future and past columns interpolated between knots and calendar
    phases, at any model time (how they are read and scaled: :mod:`ts_neuralode.data.covariates`).

    Attributes:
        knots: ``[B, K]`` model times, sorted per row (padding repeats the row's last knot).
        values: ``[B, K, C]`` scaled column values at the knots.  linear: ``[C]`` bool, linear (else constant).
        phase: ``[B, P]`` calendar phases (cycles) at model time 0.  freq: ``[P]`` cycles per model time unit.
        static: ``[B, S]`` encoded static covariates (``S = 0``: none); they condition the initial state.
    """

    knots: Tensor
    values: Tensor
    linear: Tensor
    phase: Tensor
    freq: Tensor
    static: Tensor | None = None

    @property
    def dim(self) -> int:
        return self.values.shape[-1] + 2 * self.phase.shape[-1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CovariateBatch:
        return _each_field(self, "to", device, non_blocking=non_blocking)

    def pin_memory(self) -> CovariateBatch:
        return _each_field(self, "pin_memory")

    def repeat(self, n: int) -> CovariateBatch:
        """The covariates of ``n`` stacked copies of the batch (sample-major rows ``s * B + b``)."""
        if n == 1:
            return self
        return replace(
            self,
            knots=self.knots.repeat(n, 1),
            values=self.values.repeat(n, 1, 1),
            phase=self.phase.repeat(n, 1),
            static=None if self.static is None else self.static.repeat(n, 1),
        )

    def __call__(self, t: Tensor) -> Tensor:
        """``u`` at model times ``t`` ``[B]`` or ``[B, T]`` -> ``[B, C_u]`` or ``[B, T, C_u]``."""
        squeeze = t.dim() == 1
        if t.dim() == 0:
            t, squeeze = t.expand(self.knots.shape[0]), True
        tt = (t.unsqueeze(1) if squeeze else t).to(self.knots.dtype)
        parts = []
        if self.values.shape[-1]:
            K = self.knots.shape[1]
            i0 = (torch.searchsorted(self.knots, tt.contiguous(), right=True) - 1).clamp(0, K - 1)
            i1 = (i0 + 1).clamp(max=K - 1)
            k0, k1 = self.knots.gather(1, i0), self.knots.gather(1, i1)
            w = torch.where(k1 > k0, (tt - k0) / (k1 - k0).clamp_min(1e-12), torch.zeros_like(tt)).clamp(0, 1)
            C = self.values.shape[-1]
            v0 = self.values.gather(1, i0.unsqueeze(-1).expand(*i0.shape, C))
            v1 = self.values.gather(1, i1.unsqueeze(-1).expand(*i1.shape, C))
            parts.append(torch.where(self.linear, v0 + w.unsqueeze(-1) * (v1 - v0), v0))
        if self.phase.shape[-1]:
            ang = 2 * torch.pi * (self.phase.unsqueeze(1) + tt.unsqueeze(-1) * self.freq)
            parts.append(torch.stack([torch.sin(ang), torch.cos(ang)], -1).flatten(-2))
        out = torch.cat(parts, -1).to(t.dtype)
        return out.squeeze(1) if squeeze else out


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
            (:class:`~ts_neuralode.data.batch.CovariateBatch`), or None.
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
        return _each_field(self, "to", device, non_blocking=non_blocking)

    def pin_memory(self) -> Batch:
        return _each_field(self, "pin_memory")

    def __len__(self) -> int:
        return self.batch_size


def _each_field(batch: _B, method: str, *args, **kwargs) -> _B:
    """A copy of the dataclass ``batch`` with ``field.method(...)`` for each field (a covariate batch's own
    ``method``; None stays None: an absent optional field)."""
    return type(batch)(
        **{
            f.name: None if (x := getattr(batch, f.name)) is None else getattr(x, method)(*args, **kwargs)
            for f in fields(batch)
        }
    )


def rows_batch(table: Any, rows: list[np.ndarray], n_context: list[int], channels: np.ndarray | None = None) -> Batch:
    """A padded batch in raw times and values (float64) of a SeriesTable's rows: batch row ``r`` holds the table rows
    ``rows[r]`` (one series, in time order), the first ``n_context[r]`` of them observed (``obs_mask``) and the rest
    the targets (``target_mask``); only ``channels`` (default all) are read. Padding repeats the row's last time.
    ``series_idx`` is the batch row's position; ``cutoff`` the last observed time."""
    B, T, D = len(rows), max(len(idx) for idx in rows), table.num_channels
    keep = np.ones(D, dtype=bool) if channels is None else np.isin(np.arange(D), channels)
    times, values = np.zeros((B, T)), np.zeros((B, T, D))
    obs, target, valid = np.zeros((B, T, D)), np.zeros((B, T, D)), np.zeros((B, T), dtype=bool)
    for r, (idx, c) in enumerate(zip(rows, n_context, strict=True)):
        n = len(idx)
        times[r, :n], times[r, n:] = table.times[idx], table.times[idx[-1]]
        m = table.mask[idx] & keep
        values[r, :n] = np.where(m, table.values[idx], 0.0)
        obs[r, :c], target[r, c:n] = m[:c], m[c:]
        valid[r, :n] = True
    v = torch.from_numpy(values)
    return Batch(
        times=torch.from_numpy(times),
        values=v,
        obs_mask=torch.from_numpy(obs),
        target_mask=torch.from_numpy(target),
        time_mask=torch.from_numpy(valid),
        series_idx=torch.arange(B, dtype=torch.long),
        cutoff=torch.from_numpy(np.array([times[r, c - 1] for r, c in enumerate(n_context)])),
    )

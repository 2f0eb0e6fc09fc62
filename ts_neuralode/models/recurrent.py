"""The recurrent pass shared by ODE-RNN, GRU-ODE-Bayes and the latent ODE encoder.

One loop over a grid: evolve the state from the previous grid time to the next with the model's
evolution, then apply the model's update where something is observed (rows with nothing observed keep
their state bit for bit). After the last index at which any series of the batch is observed, nothing is
left to update, so the rest of the grid is reached with **one** evolution call instead of a step per
point: extrapolation horizons cost one solve, however many query times they hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ts_neuralode.data.batch import Batch
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.base import (
    Forecast,
    Grid,
    NeuralModel,
    check_positive,
    gather_queries,
    gaussian_nll,
    step_mask,
)
from ts_neuralode.models.evolution import ODEEvolution, StepCarry
from ts_neuralode.models.nets import shares_spectral_weights
from ts_neuralode.models.observation_pass import Evolve, ObservedGrid, Update, observation_pass

#: False: the filtering models solve interval by interval as before the one-solve pass (for A/B measurements:
#: scripts/many_series_profile.py)
USE_JUMPS = True


def recurrent_pass(
    evolve: Evolve,
    h0: Tensor,
    grid: ObservedGrid,
    update: Update,
    *,
    record: bool = True,
    hold: bool = False,
    stop_at_observations: bool = False,
    solve_jumps=None,
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Run evolve/update over a grid.

    Args:
        evolve: ``(h [B, H], t [2] | [B, 2] | [K] | [B, K], t_mask [B, *] | None) -> [B, *, H]``.
        h0: ``[B, H]`` state at ``grid.times[..., 0]`` before the update there.
        grid: the times, the valid positions, the values and the observation mask (:class:`ObservedGrid`).
        update: ``(h, x_i, m_i) -> h_new``; only applied to rows with an observation at step i.
        record: also return the per-position states.
        hold: keep each row at ``h0`` until its first observation (the state then does not depend on
            how many unobserved grid points precede it — used by the latent ODE encoder).
        stop_at_observations: (with ``record``, without ``hold``) solve from observation to observation and read
            the grid times in between off each solve's dense output
            (:func:`ts_neuralode.models.observation_pass.observation_pass`: for ODE evolutions only).
        solve_jumps: (with ``stop_at_observations``) the evolution's one-solve path with the updates as jumps
            (:meth:`ts_neuralode.models.evolution.ODEEvolution.solve_jumps`), tried first.

    Returns:
        ``(pre [B, N, H], post [B, N, H], last [B, H])``: states before and after the update at each
        position (None unless ``record``), and the state at the last grid position.
    """
    if stop_at_observations and record and not hold:
        return observation_pass(evolve, h0, grid, update, solve_jumps)
    times, valid, x, m = grid
    B, N, _ = x.shape
    has_obs = m.sum(-1) > 0  # [B, N]
    any_obs = has_obs.any(0)
    last_obs = int(torch.nonzero(any_obs)[-1]) if bool(any_obs.any()) else -1
    shared = times.dim() == 1
    pre: list[Tensor] = []
    post: list[Tensor] = []
    h = h0
    started = has_obs[:, 0] if hold else None
    for i in range(0, last_obs + 1):
        if i > 0:
            t, tm = (times[i - 1 : i + 1], None) if shared else step_mask(times, valid, i)
            h = evolve(h, t, tm)[:, -1]
            if hold:
                h = torch.where(started.unsqueeze(-1), h, h0)
                started = started | has_obs[:, i]
        if record:
            pre.append(h)
        obs_i = has_obs[:, i]
        h = torch.where(obs_i.unsqueeze(-1), update(h, x[:, i], m[:, i]), h)
        if record:
            post.append(h)
    start = max(last_obs, 0)
    # Nothing observed at all (last_obs < 0): the states are the evolution of h0 over the whole grid.
    if start < N - 1 or last_obs < 0:
        tail_t = times[..., start:]
        tail_mask = None
        if not shared:
            tail_mask = valid[:, start:].clone()
            tail_mask[:, 0] = True
            # Coinciding times (a padded row) are carried, not stepped: mask everything after them.
            tail_mask &= (
                torch.cat([torch.ones_like(tail_mask[:, :1]), tail_t[:, 1:] != tail_t[:, :-1]], 1).cummin(1).values
            )
        tail = evolve(h, tail_t, tail_mask)
        if record:
            if last_obs < 0:
                pre.append(tail[:, 0])
                post.append(tail[:, 0])
            pre.extend(tail[:, 1:].unbind(1))
            post.extend(tail[:, 1:].unbind(1))
        h = tail[:, -1]
    if not record:
        return None, None, h
    return torch.stack(pre, 1), torch.stack(post, 1), h


class GRUUpdate(nn.Module):
    """Masked GRU update from ``[x ⊙ m, m]``: the ODE-RNN / latent-ODE-encoder observation step."""

    def __init__(self, input_dim: int, state_dim: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(2 * input_dim, state_dim)

    def forward(self, h: Tensor, x: Tensor, m: Tensor) -> Tensor:
        return self.cell(torch.cat([x * m, m], dim=-1), h)


class FilteringModel(NeuralModel):
    """Base of the filtering models (ODE-RNN, GRU-ODE-Bayes): a state evolved between observations,
    updated at each, and read out as a Gaussian *before* the update at every grid time (so a prediction
    at an observed time never sees that observation).

    Options: ``loss``, ``min_std`` (the std floor) and those of :class:`~ts_neuralode.models.base.NeuralModel`. It
    builds ``self.h0`` ([H] parameter) and ``self.static_proj``; subclasses build ``self.evolution`` and ``self.head``
    and implement ``readout`` and ``update``; ``extra_loss`` adds terms that need the post-update states.
    Loss: masked Gaussian NLL (``loss="nll"``) or MSE (``loss="mse"``) of the pre-update predictions at
    every known value (observed or target), divided by their number.
    """

    def __init__(self, loss: str = "nll", min_std: float = 1e-3, **options: Any) -> None:
        super().__init__(**options)
        if loss not in ("nll", "mse"):
            raise ConfigError(f"loss={loss!r} is not supported; pass loss='nll' or loss='mse'")
        check_positive(min_std=min_std)
        self.loss_kind = loss
        self.min_std = float(min_std)
        self.h0 = nn.Parameter(torch.zeros(self.latent_dim))
        self.static_proj = nn.Linear(self.static_dim, self.latent_dim) if self.static_dim else None

    def zero_mean_output(self) -> None:
        """The mean half of the read-out (``head``'s last layer: ``[mean, std]`` outputs) set to 0."""
        last = self.head[-1]
        with torch.no_grad():
            last.weight[: self.input_dim].zero_()
            last.bias[: self.input_dim].zero_()

    def readout(self, h: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, h: Tensor, x: Tensor, m: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_loss(self, post: Tensor, grid: Grid, scored: Tensor) -> dict[str, Tensor]:
        return {}

    def _run(self, grid: Grid) -> tuple[Tensor, Tensor]:
        x = grid.values * grid.obs_mask
        h0 = self.h0.expand(x.shape[0], -1)
        inputs = grid.inputs
        if inputs.static is not None:  # static covariates condition the initial state
            h0 = h0 + self.static_proj(inputs.static)
        carry = StepCarry()  # one trajectory cut at the updates: steps carry across intervals
        evolve = lambda h, t, tm: self._evolve(self.evolution, h, t, tm, inputs, carry)  # noqa: E731
        ode = isinstance(self.evolution, ODEEvolution)
        pre, post, _ = recurrent_pass(
            evolve,
            h0,
            ObservedGrid(grid.times, grid.valid, x, grid.obs_mask),
            self.update,
            stop_at_observations=ode,
            solve_jumps=(lambda *a: self._solve_jumps(inputs, *a)) if ode and USE_JUMPS else None,
        )
        return pre, post

    def _solve_jumps(self, inputs, h0: Tensor, t: Tensor, t_mask: Tensor, jump_at: Tensor, jump):
        """The pass as one solve with the updates as jumps (:meth:`ODEEvolution.solve_jumps`); counts evaluations."""
        out = self.evolution.solve_jumps(
            h0, t, t_mask, jump_at, jump, control=inputs.control, max_steps=inputs.max_steps
        )
        if out is not None:
            self.last_nfe += self.evolution.last_nfe
        return out

    @shares_spectral_weights
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        self.last_nfe = 0.0
        grid = self._grid(batch, None)
        pre, post = self._run(grid)
        return self._scored(grid, post, *self.readout(pre))

    @shares_spectral_weights
    def loss_and_predict(self, batch: Batch, num_samples: int = 1) -> tuple[Tensor, dict[str, Tensor], Forecast]:
        """``loss(batch)`` and ``predict(batch, num_samples)`` from ONE pass: both read the pre-update states on the
        batch's own grid, so the validation step runs the recurrent pass once instead of twice (same values)."""
        check_positive(num_samples=num_samples)
        self.last_nfe = 0.0
        grid = self._grid(batch, None)
        pre, post = self._run(grid)
        mean, std = self.readout(pre)
        loss, logs = self._scored(grid, post, mean, std)
        return loss, logs, self._gaussian_forecast(mean, std, batch.times, num_samples)

    def _scored(self, grid: Grid, post: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its logged terms from the read-out ``mean``/``std`` of the pre-update states."""
        scored = self._targets_only(
            torch.maximum(grid.obs_mask, grid.target_mask) if self.score_context else grid.target_mask
        )
        n = scored.sum().clamp_min(1.0)
        sq = ((mean - grid.values) ** 2 * scored).sum() / n
        nll = gaussian_nll(grid.values, mean, std, scored) / n
        loss = nll if self.loss_kind == "nll" else sq
        logs = {"mse": sq.detach(), "nll": nll.detach()}
        for name, term in (self.extra_loss(post, grid, scored) if self.score_context else {}).items():
            loss = loss + term
            logs[name] = term.detach()
        return loss, logs

    @shares_spectral_weights
    def forecast(
        self, batch: Batch, query_times: Tensor, num_samples: int = 1, *, max_steps: int | None = None
    ) -> Forecast:
        """Gaussian forecast at the queries; ``num_samples > 1`` also draws sample paths from it. ``max_steps``: the
        step budget of every ODE solve (None: the evolution's own)."""
        check_positive(num_samples=num_samples)
        self.last_nfe = 0.0
        grid = self._grid(batch, query_times, max_steps)
        pre, _ = self._run(grid)
        mean, std = self.readout(gather_queries(pre, grid.query_idx))
        return self._gaussian_forecast(mean, std, query_times, num_samples)

    @staticmethod
    def _gaussian_forecast(mean: Tensor, std: Tensor, query_times: Tensor, num_samples: int) -> Forecast:
        if num_samples == 1:
            samples = mean.unsqueeze(0)
        else:
            samples = mean + std * torch.randn(num_samples, *mean.shape, dtype=mean.dtype, device=mean.device)
        return Forecast(mean=mean, samples=samples, std=std, times=query_times)

"""The recurrent pass of the filtering models with an ODE evolution: the solver stops at observations only.

A filtering model (ODE-RNN, GRU-ODE-Bayes) reads its prediction at every grid time off the state *before* that
time's update, and only an observation changes the state by a jump. Between two observations the state follows
one ODE trajectory, so the grid times in between (held-out targets, query times) are outputs of one solve — the
solver's dense output — rather than places where the solve restarts. Restarting costs a fresh first evaluation
(``f(t0, y0)``, not reusable across a stop) and a step cut short at every stop: on the 5,000-series sine set
(interpolation, half the points observed) the controller proposed steps ~5× the grid spacing, so every stop was a
step of its own, and half the stops had nothing to update (results/many_series.md). Stopping at the observations
only halves the number of solves and of field evaluations there.

Same model: the states agree with the stop-everywhere pass (:func:`ts_neuralode.models.recurrent.recurrent_pass`)
within the solver's tolerance (exactly, for a fixed-step method that steps once per output interval), and a
prediction no longer depends on which other query times share its grid. Only for ODE evolutions: a neural flow
is not a semigroup (``F(s, F(t, h)) ≠ F(s + t, h)``), so for a flow the two passes are different models.

One solve. With an adaptive method (no control, no adjoint) the whole pass is one solve with the updates as jumps
(:func:`ts_neuralode.solvers.odeint_jumps` through :meth:`ODEEvolution.solve_jumps`): every row steps through its own
observations, so the batch no longer waits for its slowest row at every interval (on the 5,000-series set: 213
batch-level steps a pass where the busiest row needed 80; results/many_series.md). Same states as the
interval-by-interval layout below, within the solver's tolerance; that layout remains for the other evolutions.

Layout. Every row's *stops* are its observed grid positions and its first position. Iteration
``j`` solves every row from its stop ``j - 1`` to its stop ``j`` in one call on a ``[B, G]`` grid (``G - 1`` the
largest gap in grid positions of that iteration; each row's positions in between are outputs, the rest is
padding under ``t_mask``; a row with fewer stops does not move), then applies the update where the stop is
observed. The stretch after each row's last observation (a forecast's query times) is one more solve for all rows
together. The per-position states are scattered back into ``[B, N, H]`` once at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

Evolve = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Update = Callable[[Tensor, Tensor, Tensor], Tensor]


class ObservedGrid(NamedTuple):
    """The grid a recurrent pass runs over: ``times`` ``[N]`` or ``[B, N]`` (increasing or decreasing; padding repeats
    the row's last time), ``valid`` ``[B, N]`` bool (False on padding), ``x`` / ``m`` ``[B, N, D]`` the values and
    the observation mask (0/1) on the grid."""

    times: Tensor
    valid: Tensor
    x: Tensor
    m: Tensor

    def flipped(self) -> ObservedGrid:
        """The grid reversed in time (for backwards encoders): padding comes first and is stepped over."""
        return ObservedGrid(self.times.flip(-1), self.valid.flip(-1), self.x.flip(1), self.m.flip(1))


#: ``(h0 [B, H], t [B, N], t_mask [B, N], jump_at [B, N], jump) -> (pre [B, N, H], last [B, H]) | None``
SolveJumps = Callable[
    [Tensor, Tensor, Tensor, Tensor, Callable[[Tensor, Tensor, Tensor], Tensor]], tuple[Tensor, Tensor] | None
]


def observation_pass(
    evolve: Evolve, h0: Tensor, grid: ObservedGrid, update: Update, solve_jumps: SolveJumps | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``recurrent_pass(..., record=True)`` with solves from observation to observation (module docstring).

    Args and returns as :func:`ts_neuralode.models.recurrent.recurrent_pass` (the grid's ``valid``: real points
    first, padding after); returns ``(pre [B, N, H], post [B, N, H], last [B, H])``. Padded positions hold the row's
    final state (as there). ``solve_jumps``: the evolution's one-solve path
    (:meth:`ts_neuralode.models.evolution.ODEEvolution.solve_jumps`, module docstring); where it returns None the pass
    solves interval by interval with ``evolve``.
    """
    times, valid, x, m = grid
    B, N, D = x.shape
    dev = x.device
    tt = times.unsqueeze(0).expand(B, N) if times.dim() == 1 else times
    has_obs = (m.sum(-1) > 0) & valid  # [B, N]
    if solve_jumps is not None:
        one_solve = _jump_pass(solve_jumps, h0, ObservedGrid(tt, valid, x, m), update, has_obs)
        if one_solve is not None:
            return one_solve
    ar = torch.arange(N, device=dev)
    n_valid = valid.long().sum(1)
    last_pos = (n_valid - 1).clamp_min(0)  # [B]
    is_stop = has_obs | (ar == 0)  # the stretch after a row's last observation is the joint tail solve below
    n_stop = is_stop.long().sum(1)
    K = int(n_stop.max())
    # stop positions of each row, in order; a row with fewer stops repeats its last one (it then stands still)
    spos = torch.where(is_stop, ar, N).sort(1).values[:, :K]
    spos = torch.where(spos < N, spos, spos.gather(1, (n_stop - 1).unsqueeze(1)))
    stop_real = torch.arange(K, device=dev) < n_stop.unsqueeze(1)  # [B, K]

    obs0 = has_obs[:, 0]
    h = torch.where(obs0.unsqueeze(-1), update(h0, x[:, 0], m[:, 0]), h0)
    first = ar[:1].expand(B, 1)
    pre_idx, pre_val, post_idx, post_val = [first], [h0.unsqueeze(1)], [first], [h.unsqueeze(1)]
    if K > 1:
        gaps = spos[:, 1:] - spos[:, :-1]  # [B, K-1]
        widths = (gaps.max(0).values + 1).tolist()  # grid points per iteration (the one host read of the layout)
        # everything an iteration reads, gathered once for all iterations (fewer small ops per observation)
        obs_at = has_obs.gather(1, spos) & stop_real  # [B, K]
        x_at = x.gather(1, spos.unsqueeze(-1).expand(B, K, D))
        m_at = m.gather(1, spos.unsqueeze(-1).expand(B, K, D))
        offsets: dict[int, Tensor] = {}
        for j in range(1, K):
            a, b, gap, G = spos[:, j - 1 : j], spos[:, j : j + 1], gaps[:, j - 1 : j], widths[j - 1]
            off = offsets.get(G)
            if off is None:
                off = offsets[G] = torch.arange(G, device=dev)
            idx = torch.minimum(a + off, b)  # [B, G]
            t_mask = off <= gap
            out = evolve(h, tt.gather(1, idx), t_mask)  # [B, G, H]; padding repeats the row's stop-j state
            h_end = out[:, -1]
            # the states before the update at the positions after stop j-1 up to stop j (padding: dummy slot N)
            keep = t_mask[:, 1:]
            pos = torch.where(keep, idx[:, 1:], N)
            pre_idx.append(pos)
            pre_val.append(out[:, 1:])
            h = torch.where(obs_at[:, j : j + 1], update(h_end, x_at[:, j], m_at[:, j]), h_end)
            # after the update: the in-between positions keep their state, stop j holds the updated one
            post_idx.append(pos)
            if G > 2:  # rows whose stop j lies before the last column: their stop state sits at column gap
                at_stop = (off[1:] == gap) & keep
                post_val.append(torch.where(at_stop.unsqueeze(-1), h.unsqueeze(1), out[:, 1:]))
            else:
                post_val.append(h.unsqueeze(1))
    # The tail: from each row's last observation to its last real position, one solve for every row at once (the
    # query times of a forecast; rows whose last point is observed stand still). Solving it in the iteration where
    # a row runs out of observations instead would cost one long solve per distinct observation count.
    a = spos[:, K - 1]
    gap = last_pos - a
    G = int(gap.max()) + 1
    if G > 1:
        off = torch.arange(G, device=dev)
        idx = torch.minimum(a.unsqueeze(1) + off, last_pos.unsqueeze(1))
        t_mask = off <= gap.unsqueeze(1)
        out = evolve(h, tt.gather(1, idx), t_mask)
        h = out[:, -1]
        pos = torch.where(t_mask[:, 1:], idx[:, 1:], N)
        pre_idx.append(pos)
        pre_val.append(out[:, 1:])
        post_idx.append(pos)
        post_val.append(out[:, 1:])  # nothing observed there: no update
    return _scatter(pre_idx, pre_val, h, N), _scatter(post_idx, post_val, h, N), h


def _jump_pass(
    solve_jumps: SolveJumps, h0: Tensor, grid: ObservedGrid, update: Update, has_obs: Tensor
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The pass as one solve with the updates as jumps (:func:`ts_neuralode.solvers.odeint_jumps`): every row steps
    through its own observations in one loop, so a batch-level step is no longer paid for by every row at every
    interval of the slowest row (module docstring of :mod:`ts_neuralode.solvers.jumps`). Same states as the
    interval-by-interval pass below, to rounding. ``grid.times``: ``[B, N]``."""
    tt, valid, x, m = grid
    B, N, D = x.shape
    post_idx: list[Tensor] = []
    post_val: list[Tensor] = []

    def jump(h: Tensor, at: Tensor, pos: Tensor) -> Tensor:
        g = pos.view(B, 1, 1).expand(B, 1, D)
        h_new = update(h, x.gather(1, g).squeeze(1), m.gather(1, g).squeeze(1))
        post_idx.append(torch.where(at, pos, N).unsqueeze(1))  # rows that did not jump write the dummy slot N
        post_val.append(h_new.unsqueeze(1))
        return h_new

    out = solve_jumps(h0, tt, valid, has_obs, jump)
    if out is None:
        return None
    pre, last = out
    pre = torch.where(valid.unsqueeze(-1), pre, last.unsqueeze(1))  # padding holds the final state
    post = pre if not post_idx else _scatter_into(pre, torch.cat(post_idx, 1), torch.cat(post_val, 1), N)
    return pre, post, last


def _scatter_into(base: Tensor, idx: Tensor, val: Tensor, N: int) -> Tensor:
    """``base [B, N, H]`` with ``val`` rows written at their ``idx`` positions (index N: a dummy slot, dropped)."""
    B, _, H = base.shape
    ext = torch.cat([base, base[:, :1]], 1)
    return ext.scatter(1, idx.unsqueeze(-1).expand(-1, -1, H), val)[:, :N]


def _scatter(idx: list[Tensor], val: list[Tensor], fill: Tensor, N: int) -> Tensor:
    """``[B, N, H]``: each ``val`` row at its ``idx`` positions (index N is a dummy slot, dropped); positions not
    written (padding) hold ``fill [B, H]``."""
    i = torch.cat(idx, 1)
    v = torch.cat(val, 1)
    B, _, H = v.shape
    base = fill.unsqueeze(1).expand(B, N + 1, H)
    return base.scatter(1, i.unsqueeze(-1).expand(-1, -1, H), v)[:, :N]

"""One adaptive solve through a grid with state jumps: :func:`odeint_jumps`.

A filtering model (ODE-RNN, GRU-ODE-Bayes) follows an ODE between observations and jumps at each one (its update).
Solving observation interval by observation interval makes every interval a solve of the whole batch that lasts as
long as its slowest row: on the 5,000-series sine set a batch of 50 rows needed ~4.2 batch-level steps per interval
where a row needed ~1.4 (different gaps, one row's rejected step), 213 batch-level steps per pass where the busiest
row attempted 80 (results/many_series.md). Here every row runs through its own grid in one loop: a row that reaches
one of its jump times gets its jump (the caller's function, applied where the row landed) and steps on towards its
next one while the other rows are mid-interval, so the loop lasts as long as the busiest row's own step count.

Each row's trajectory is the one the interval-by-interval solves take (same steps, to rounding): a segment ends
exactly on the jump time (the step that reaches it is cut short), the step size is carried across the jump (as
``stats.next_dt`` → ``first_step`` carries it between solves, with the same "a step cut short to land says nothing
against the step it was cut from" rule), the PI controller's memory restarts after a jump (as a new solve's does),
and the first stage after a jump is a fresh evaluation at the new state (every iteration in which some row jumped
evaluates the field once more for the batch and keeps it for those rows). ``max_steps`` bounds each row's attempts
between two jumps, as it bounds a solve.

The grid times are outputs as in :func:`~ts_neuralode.solvers.core.solve_adaptive` (dense output of the recorded
steps, never a shortened step): ``ys[:, n]`` is the state at ``t[:, n]`` *before* a jump there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .controller import SAFETY
from .core import _accept, _first_step, _StepControl, _steps_exceeded
from .dense import Outputs
from .failures import _raise_failures
from .odeint import _normalise_time, _wrap
from .options import ODEOptions
from .records import SolverOptions, SolverStats
from .rk_step import Func
from .tableaus import METHODS

#: ``jump(y [B, D], at [B] bool, pos [B] long) -> [B, D]``: the states after the jump of the rows ``at`` (which
#: reached grid position ``pos`` of their row); the other rows' entries are ignored
Jump = Callable[[Tensor, Tensor, Tensor], Tensor]


class JumpSolution(NamedTuple):
    """ys: [B, N, D] the states at the grid times before the jump there (``ys[:, 0] == y0``); y_end: [B, D] each
    row's state at its last real time after its last jump; stats: per-sample statistics."""

    ys: Tensor
    y_end: Tensor
    stats: SolverStats


def odeint_jumps(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    jump_at: Tensor,
    jump: Jump,
    options: ODEOptions,
    *,
    t_mask: Tensor | None = None,
    first_step: Tensor | None = None,
    max_steps: int | None = None,
    check_inputs: bool = True,
) -> JumpSolution:
    """Solve dy/dt = func(t, y) through each row's grid ``t [B, N]`` (or a shared ``[N]``), jumping where
    ``jump_at [B, N]`` is True: on reaching ``t[b, n]`` the state of row ``b`` becomes ``jump(y, at, pos)[b]``
    (position 0 included: the jump is applied to ``y0`` before the first step). Adaptive methods, no adjoint.

    ``t_mask``, ``first_step`` (a ``[B]`` tensor: ``stats.next_dt`` of an earlier solve), ``max_steps`` and
    ``check_inputs`` as in :func:`~ts_neuralode.solvers.odeint`, but a row may repeat a time (a position after a jump
    at the same time reads the state after it); ``max_steps`` bounds every row's attempted steps between two jumps.
    Rows must all run forwards or all backwards.
    """
    tab = METHODS[options.method]
    if not tab.adaptive or options.adjoint:
        raise ValueError(
            f"odeint_jumps needs an adaptive method without the adjoint (got method={options.method!r}, "
            f"adjoint={options.adjoint}); solve interval by interval with odeint instead"
        )
    if not isinstance(y0, Tensor) or y0.dim() != 2 or not y0.is_floating_point():
        raise ValueError(f"y0 must be a floating-point tensor [B, D], got {getattr(y0, 'shape', type(y0).__name__)}")
    tq, sign = _normalise_time(y0, t, t_mask, False)
    if isinstance(sign, Tensor):
        raise ValueError("odeint_jumps: every row must run in the same direction (all forwards or all backwards)")
    B, N = tq.shape
    if check_inputs:
        _check_grid(tq, t_mask)
    if tuple(jump_at.shape) != (B, N):
        raise ValueError(f"jump_at must be a bool tensor [B, N] = [{B}, {N}], got {tuple(jump_at.shape)}")
    if first_step is not None and (
        not isinstance(first_step, Tensor)
        or first_step.shape != (B,)
        or (check_inputs and not bool(((first_step > 0) & torch.isfinite(first_step)).all()))
    ):
        raise ValueError(f"first_step must be None or a [B] = [{B}] tensor of finite steps > 0 (stats.next_dt)")
    at = jump_at.to(device=y0.device, dtype=torch.bool)
    if t_mask is not None:
        at = at & t_mask.to(device=y0.device, dtype=torch.bool)
    return _solve_jumps(
        _wrap(func, sign),
        tab,
        y0,
        tq,
        at,
        jump,
        SolverOptions.of(options, first_step, max_steps),
        sign=sign,
        real=None if t_mask is None else t_mask.to(device=y0.device, dtype=torch.bool),
    )


def _check_grid(tq: Tensor, t_mask: Tensor | None) -> None:
    """The value checks of ``odeint``'s time grid, but equal neighbours allowed (a jump, then a reading at the same
    time after it): finite, monotone in each row, padding only after the real times."""
    if not bool(torch.isfinite(tq).all()):
        raise ValueError("t contains NaN/inf: pass finite times")
    if t_mask is not None:
        m = t_mask.to(device=tq.device, dtype=torch.bool)
        if not bool(m[:, 0].all()) or bool((m[:, 1:] & ~m[:, :-1]).any()):
            raise ValueError("t_mask must be True at t[:, 0] and have its padding (False) only after the real times")
    if tq.shape[1] > 1 and bool((tq[:, 1:] < tq[:, :-1]).any()):
        rows = torch.nonzero((tq[:, 1:] < tq[:, :-1]).any(1)).flatten()[:5].tolist()
        raise ValueError(f"t must be monotone in each row (equal neighbours allowed); row(s) {rows} are not: sort them")


def _segments(tq: Tensor, at: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's jump times after position 0 in order, then its end: (times [B, K+1], positions [B, K+1] (N after
    the last jump), jumps per row [B])."""
    B, N = tq.shape
    ar = torch.arange(N, device=tq.device)
    stop = at.clone()
    stop[:, 0] = False
    n_jumps = stop.sum(1)
    K = int(n_jumps.max()) if B else 0
    pos = torch.where(stop, ar, N).sort(1).values[:, :K]
    pos = torch.cat([pos, torch.full((B, 1), N, dtype=pos.dtype, device=pos.device)], 1)  # [B, K+1]
    times = torch.cat([tq, tq[:, -1:]], 1).gather(1, pos)  # position N reads the row's end
    return times, pos, n_jumps


def _solve_jumps(
    func: Func,
    tab,
    y0: Tensor,
    tq: Tensor,
    at: Tensor,
    jump: Jump,
    opts: SolverOptions,
    *,
    sign: float,
    real: Tensor | None,
) -> JumpSolution:
    """The loop of :func:`odeint_jumps` in forward time τ (``tq`` increasing per row, padding filled). It follows
    :func:`~ts_neuralode.solvers.core.solve_adaptive` step for step (that loop's comments hold here); what differs is
    each row's segment end ``seg_end`` (its next jump time, or its end) and the jump after a step that lands on it."""
    B, N = tq.shape
    dev, dtype = y0.device, y0.dtype
    rtol, atol, max_steps, first_step = opts.rtol, opts.atol, opts.max_steps, opts.first_step
    # real grid times equal to the one before them (duplicates in a row): read after the earlier position's jump
    tie = tq[:, 1:] == tq[:, :-1]
    if real is not None:
        tie &= real[:, 1:]
    ties = (torch.nonzero(tie.any(0)).flatten() + 1).tolist()
    posts: list | None = [] if ties else None  # (positions [B, 1], states after the jump [B, 1, D]) per jump
    y_pre0 = y0
    if bool(at[:, 0].any()):
        zero = torch.zeros(B, dtype=torch.long, device=dev)
        y_jump = jump(y0, at[:, 0], zero)
        y0 = torch.where(at[:, :1], y_jump, y0)
        if posts is not None:
            posts.append((torch.where(at[:, 0], zero, N).unsqueeze(1), y_jump.unsqueeze(1)))
    seg_t, seg_pos, n_jumps = _segments(tq, at)
    ptr = torch.zeros(B, 1, dtype=torch.long, device=dev)  # each row's current segment
    seg_end = seg_t[:, 0]
    t0 = tq[:, 0]
    t_end = tq[:, -1].clone()  # a failed sample gets its end moved to where it stopped (freezes it)
    t = t0
    f0, dt, nfe_init = _first_step(func, tab, t0, y0, first_step, rtol, atol)
    # a row continues another solve from its first jump on, or from the start with first_step given (a first segment
    # of length 0 counts as carried too: its zero-length step must leave the step size as it was)
    step = _StepControl(func, tab, rtol, atol, dt, carried=(seg_t[:, 0] <= t0) | isinstance(first_step, Tensor))
    n_att = torch.zeros(B, dtype=torch.long, device=dev)
    n_acc = torch.zeros_like(n_att)
    n_jmp = torch.zeros_like(n_att)
    seg_start_att = torch.zeros_like(n_att)  # n_att when the row's current segment began (the max_steps bound)
    failed = nonfinite = None  # [B] masks, made at the first failure
    eps = torch.finfo(dtype).eps
    # the smallest allowed step of each segment: 10 eps of its times' magnitude (as a solve of that one interval has it)
    seg_from = torch.cat([t0.unsqueeze(1), seg_t[:, :-1]], 1)
    seg_tiny = torch.maximum(seg_from.abs(), seg_t.abs()).clamp_(min=eps).mul_(10 * eps)  # [B, K+1]
    tiny = seg_tiny[:, 0]
    active = t < t_end
    y, k0 = y0, f0
    outputs = Outputs(
        tab, y_pre0, tq, active, flush=not (torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad))
    )
    it = 0
    any_active = bool(active.any())
    while any_active:
        it += 1
        if it > max_steps and bool(((n_att - seg_start_att) >= max_steps).logical_and_(active).any()):
            raise _steps_exceeded(tab, max_steps, active, t, sign)
        y1, ks, dt_use, ratio, accept, rejected, reached, t_new = step.attempt(t, y, k0, seg_end, active)
        with torch.no_grad():
            n_att += active
            n_acc += accept
            active = t_new < t_end
            jumped = reached.logical_and_(ptr.squeeze(1) < n_jumps)
            covered = t_new >= outputs.next_out
            # a rejected step below the smallest allowed one fails its row; tested here, in the one host sync,
            # because with many rows some row rejects a step in most iterations
            under = rejected & (step.dt < tiny)
            any_active, any_covered, any_rejected, any_jumped, any_under = (
                torch.stack((active, covered, rejected, jumped, under)).any(1).tolist()  # the one host sync per step
            )
            if any_under:  # rare path: the rows stop where they are and fail after the loop
                nonfinite = (
                    under & ~torch.isfinite(ratio)
                    if nonfinite is None
                    else nonfinite | (under & ~torch.isfinite(ratio))
                )
                failed = under if failed is None else failed | under
                t_end = torch.where(under, t, t_end)
                seg_end = torch.minimum(seg_end, t_end)
                active = active & ~under
                any_active = bool(active.any())
        if any_covered:
            outputs.record(t, t_new, dt_use, y, ks)
        y, k0 = _accept(func, tab, accept, any_rejected, y, y1, ks, k0, t_new)
        if any_jumped:
            pos = seg_pos.gather(1, ptr).squeeze(1).clamp_(max=N - 1)  # rows past their last jump: any valid index
            jc = jumped.unsqueeze(1)
            y_jump = jump(y, jumped, pos)
            if posts is not None:
                posts.append((torch.where(jumped, pos, N).unsqueeze(1), y_jump.unsqueeze(1)))
            y = torch.where(jc, y_jump, y)
            k0 = torch.where(jc, func(t_new, y), k0)  # a fresh first stage after the jump (no FSAL across it)
            with torch.no_grad():
                step.prev_term = torch.where(jumped, SAFETY, step.prev_term)
                step.carried |= jumped
                n_jmp += jumped
                seg_start_att = torch.where(jumped, n_att, seg_start_att)
                ptr += jc
                seg_end = seg_t.gather(1, ptr).squeeze(1)
                tiny = seg_tiny.gather(1, ptr).squeeze(1)
        t = t_new
    _raise_failures(tab, failed, nonfinite, t, sign)
    per_step = tab.stages - 1 if tab.fsal else tab.stages
    nfe = n_att.mul(per_step).add_(n_jmp).add_(nfe_init)
    stats = SolverStats(n_f_evals=nfe, n_accepted=n_acc, n_rejected=n_att.sub(n_acc), next_dt=step.dt)
    ys, _ = outputs.result(t)
    if ties:
        ys = _after_earlier_jumps(ys, tie, at, posts, ties)
    return JumpSolution(ys, y, stats)


def _after_earlier_jumps(ys: Tensor, tie: Tensor, at: Tensor, posts: list, cols: list[int]) -> Tensor:
    """``ys`` with the outputs at a real grid time equal to the one before it (``tie [B, N-1]``, columns ``cols``)
    read after the jump there: the dense output at a jump time is the state before the jump, but a later position
    at the same time comes after it (as the interval-by-interval solves have it)."""
    B, N, D = ys.shape
    post = ys
    if posts:
        idx = torch.cat([p for p, _ in posts], 1)
        post = torch.cat([ys, ys[:, :1]], 1).scatter(
            1, idx.unsqueeze(-1).expand(-1, -1, D), torch.cat([v for _, v in posts], 1)
        )
        post = post[:, :N]
    fixed: dict[int, Tensor] = {}
    for n in cols:
        before = fixed.get(n - 1, ys[:, n - 1])
        after = torch.where(at[:, n - 1 : n], post[:, n - 1], before)
        fixed[n] = torch.where(tie[:, n - 1 : n], after, ys[:, n])
    cols_t = torch.tensor(cols, device=ys.device)
    return ys.index_copy(1, cols_t, torch.stack([fixed[n] for n in cols], 1))


__all__ = ["odeint_jumps", "JumpSolution", "Jump"]

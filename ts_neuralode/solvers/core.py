"""The shared explicit Runge–Kutta core: one step function, an adaptive loop and a fixed-step loop (the dense
output lives in ``dense.py``, the step-size controller in ``controller.py``).

Conventions inside the core (``odeint`` normalises inputs once so the core sees one form):

* time runs forwards: ``tq`` is ``[B, T]``, strictly increasing in each row's real part; padded entries
  are filled with the row's last real time (so they read back the last real output);
* every sample has its own time ``t [B]``, step ``dt [B]`` and status — samples step independently and
  an easy sample does not pay for a hard one (it finishes early and its ``dt`` is frozen to 0);
* output times never shorten steps: every accepted step that covers an output time is recorded (start,
  length, start state and stacked stages) and after the loop all outputs of all samples are evaluated
  at once (``searchsorted`` + one ``mm`` to polynomial coefficients + Horner on gathered rows).

Performance notes (CPU, small MLP fields: the loop overhead, not the field, dominates at batch ≤ 256):

* stage inputs are one ``mm`` + ``addcmul`` each (tableau rows cached as tensors per dtype/device), not a
  chain of scalar adds; the stage times are one ``addcmul``; without a gradient graph the stages are written
  into one preallocated [S, B, D] block (with one, stacked); that block is what a step records;
* failure bookkeeping (smallest allowed step, failed / non-finite masks) is built at the first rejection only;
* the step-size controller (:class:`~ts_neuralode.solvers.controller.PIController`) works on detached tensors: no
autograd nodes for it (smaller graph, and
  gradients do not flow through step-size selection, as in diffrax);
* a solve can continue another: ``stats.next_dt`` (each sample's last controller proposal) passed back as
  ``first_step`` skips the initial-step search (recurrent models carry it across observation intervals), and a
  one-interval solve takes :func:`solve_interval` (no output grid, no recorded steps, no dense output);
* one host synchronisation per step (``.tolist()`` on a 3-element tensor) decides "is anyone still
  running", "was any step rejected" and "did this step cover an output time" (only such steps are kept —
  this keeps memory flat in step count when no gradient graph is being built).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .controller import PIController, error_ratio, initial_step
from .dense import Outputs, _assemble, _stack_records
from .failures import _classify_rejections, _fail, _raise_failures
from .records import SolverOptions, SolverStats, StepCheckpoint, StepRecord
from .rk_step import Func, rk_step
from .tableaus import Tableau


def _first_step(
    func: Func, tab: Tableau, t0: Tensor, y0: Tensor, first_step: float | Tensor | None, rtol: float, atol: float
) -> tuple[Tensor, Tensor, int]:
    """The first stage ``f(t0, y0)``, the first step size per sample and the evaluations spent on them: searched
    (``first_step=None``, one more evaluation), carried from an earlier solve (a tensor: no search), or given."""
    f0 = func(t0, y0)
    if first_step is None:
        with torch.no_grad():
            return f0, initial_step(func, t0, y0.detach(), f0.detach(), tab.order, rtol, atol), 2
    if isinstance(first_step, Tensor):
        return f0, first_step.to(dtype=y0.dtype, device=y0.device), 1
    return f0, torch.full((y0.shape[0],), float(first_step), dtype=y0.dtype, device=y0.device), 1


def _steps_exceeded(tab: Tableau, max_steps: int, active: Tensor, t: Tensor, sign):
    return _fail(
        tab,
        f"max_steps={max_steps} exceeded",
        active,
        t,
        sign,
        "raise max_steps, loosen rtol/atol, or check the dynamics for stiffness",
        max_steps=max_steps,
    )


class _StepControl:
    """The step-size control of one adaptive solve: each sample's next step ``dt [B]``, the PI controller's memory
    ``prev_term [B]`` (of the last accepted step) and :meth:`attempt`, the step every adaptive loop takes first in an
    iteration.

    ``carried``: whether the solve continues another (a first step carried over, or a jump): False, True, or a ``[B]``
    mask of the samples that do. For those, an accepted step cut short to land on its stop says nothing against the
    step it was cut from, so it does not shrink their next step. Finished samples keep their last proposal (the
    ``next_dt`` a following solve starts from).
    """

    def __init__(self, func: Func, tab: Tableau, rtol: float, atol: float, dt: Tensor, carried: bool | Tensor):
        self.func, self.tab, self.rtol, self.atol = func, tab, rtol, atol
        self.controller = PIController.for_tableau(tab)
        self.prev_term = self.controller.initial_term(dt.shape[0], dt.dtype, dt.device)
        self.dt, self.carried = dt, carried

    def attempt(self, t: Tensor, y: Tensor, k0: Tensor, t_stop: Tensor, active: Tensor):
        """One step of every sample from ``t`` towards ``t_stop`` [B] (cut short to land on it), tested against the
        tolerances; ``dt`` and ``prev_term`` move on (where ``active``).

        Returns ``(y1, ks, dt_use, ratio, accept, rejected, reached, t_new)``: the step's end state and stacked stages,
        the step length tried, the error ratio, the ``active`` samples whose step was accepted / rejected, those whose
        accepted step reached ``t_stop`` (None unless ``carried``), and where each sample stands after the step.
        """
        dt, controller = self.dt, self.controller
        rem = t_stop - t
        dt_use = torch.minimum(dt, rem)  # finished samples: rem = 0 → frozen, their updates are no-ops
        y1, ks, err = rk_step(self.func, self.tab, t, y, dt_use, k0)
        with torch.no_grad():
            ratio = error_ratio(err, y.detach(), y1.detach(), self.rtol, self.atol)
            accept = (ratio <= 1.0).logical_and_(active)
            landed = dt >= rem
            # land exactly on t_stop (t + rem may round below it)
            t_new = torch.where(accept, torch.where(landed, t_stop, t + dt_use), t)
            fac = controller.factor(ratio, self.prev_term)
            self.prev_term = controller.after_accept(ratio, accept, self.prev_term)
            dt_next = dt_use * fac
            reached = None
            carried = self.carried
            if carried is not False:  # True, or a [B] mask of the samples it holds for
                reached = landed & accept
                cut_short = reached if carried is True else reached & carried
                dt_next = torch.maximum(dt_next, torch.where(cut_short, dt, 0.0))
            self.dt = torch.where(active, dt_next, dt)
            rejected = active ^ accept  # accept ⊂ active
        return y1, ks, dt_use, ratio, accept, rejected, reached, t_new


def solve_adaptive(
    func: Func,
    tab: Tableau,
    y0: Tensor,
    tq: Tensor,
    opts: SolverOptions,
    *,
    sign=1.0,
    checkpoints: list[StepCheckpoint] | None = None,
):
    """Adaptive per-sample integration of y0 [B, D] over the rows of tq [B, T] (forward time), with the tolerances,
    step budget and first step of ``opts``.

    Returns (ys [B, T, D], stats, records of the steps that covered output times). When a list is passed
    as ``checkpoints``, every iteration appends a :class:`StepCheckpoint` to it — what the interpolated adjoint
    needs to recompute each accepted step. Step sizes come from the :class:`PIController`.

    One long loop on purpose (as diffrax's ``diffeqsolve``): every per-step decision (accept, land on t_end,
    record, flush, classify a rejection) shares the loop's state and the one host sync per step; the comments
    say why each choice was made.
    """
    B, T = tq.shape
    dev = y0.device
    rtol, atol, max_steps, first_step = opts.rtol, opts.atol, opts.max_steps, opts.first_step
    tq = tq.contiguous()  # a shared grid arrives as an expanded view; searchsorted wants rows in memory
    t0 = tq[:, 0]
    t_end = tq[:, -1].clone()  # a failed sample gets its end moved to where it stopped (freezes it)
    t = t0
    f0, dt, nfe_init = _first_step(func, tab, t0, y0, first_step, rtol, atol)
    step = _StepControl(func, tab, rtol, atol, dt, carried=isinstance(first_step, Tensor))
    att_hist, acc_hist = [], []  # per-step bool masks, summed once at the end (not 2 ops per step)
    # failure bookkeeping (the smallest step, failed / non-finite masks) is built at the first rejection
    tiny = failed = nonfinite = None
    active = t < t_end
    y, k0 = y0, f0
    # Without a gradient graph the recorded steps are flushed into outputs (:class:`Outputs`). The interpolated
    # adjoint's forward (no graph, ``checkpoints`` given) flushes too: its backward recomputes every step from the
    # checkpoints, the records only serve the outputs.
    outputs = Outputs(
        tab, y0, tq, active, flush=not (torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad))
    )
    # One output after t0 (a recurrent model's observation interval): every sample ends exactly on it, so the
    # final state is that output — no steps recorded, no dense output.
    two_point = T == 2
    it = 0
    any_active = bool(active.any())
    while any_active:
        if it >= max_steps:
            raise _steps_exceeded(tab, max_steps, active, t, sign)
        it += 1
        y1, ks, dt_use, ratio, accept, rejected, _, t_new = step.attempt(t, y, k0, t_end, active)
        # (from here on masks only: nothing that a gradient graph could hold)
        att_hist.append(active)
        acc_hist.append(accept)
        if len(att_hist) == 64:  # fold the history now and then: memory stays flat in the step count
            att_hist = [torch.stack(att_hist).sum(0)]
            acc_hist = [torch.stack(acc_hist).sum(0)]
        active = t_new < t_end
        covered = t_new >= outputs.next_out
        # the one host sync per step
        any_active, any_covered, any_rejected = torch.stack((active, covered, rejected)).any(1).tolist()
        if any_rejected:  # rare path: classify rejections (non-finite? step-size underflow?)
            tiny, failed, nonfinite, t_end, active, any_active = _classify_rejections(
                rejected, ratio, step.dt, t, t0, t_end, active, any_active, tiny, failed, nonfinite
            )
        if checkpoints is not None:
            checkpoints.append(StepCheckpoint(t, t_new, torch.where(accept, dt_use, torch.zeros_like(dt_use)), y))
        if any_covered and not two_point:
            outputs.record(t, t_new, dt_use, y, ks)
        y, k0 = _accept(func, tab, accept, any_rejected, y, y1, ks, k0, t_new)
        t = t_new
    _raise_failures(tab, failed, nonfinite, t, sign)
    per_step = tab.stages - 1 if tab.fsal else tab.stages
    if att_hist:
        n_att = torch.stack(att_hist).sum(0)
        n_acc = torch.stack(acc_hist).sum(0)
    else:
        n_att = n_acc = torch.zeros(B, dtype=torch.long, device=dev)
    stats = SolverStats(
        n_f_evals=nfe_init + per_step * n_att, n_accepted=n_acc, n_rejected=n_att - n_acc, next_dt=step.dt
    )
    if two_point:
        return torch.stack((y0, y), 1), stats, None
    ys, records = outputs.result(t)
    return ys, stats, records


def solve_interval(
    func: Func,
    tab: Tableau,
    y0: Tensor,
    t0: Tensor,
    t1: Tensor,
    opts: SolverOptions,
    *,
    sign=1.0,
    all_active: bool = False,
):
    """The two-point path: y(t1) from y0 [B, D] at t0 [B], adaptive per sample, forward time (t1 >= t0; a sample
    with t1 == t0 does not move), with the tolerances, step budget and first step of ``opts``. Returns
    (y1 [B, D], stats).

    :func:`solve_adaptive` with one output time, minus what one output time does not need — a recurrent model
    restarts a solve at every observation, so this runs ~100 times per forward with ~1 step each and its setup
    counts as much as its loop (results/speed.md, "Recurrent intervals"): no output grid (``tq``, next output,
    "covered" test), no step records or dense output, statistics counted in place rather than kept per step, and
    the final state returned as is (no [B, 2, D] stack). ``all_active``: the caller vouches t1 > t0 for every
    sample (a shared, checked grid), which saves the host sync that would ask.
    """
    B = y0.shape[0]
    dev = y0.device
    rtol, atol, max_steps, first_step = opts.rtol, opts.atol, opts.max_steps, opts.first_step
    t_end = t1.clone()  # a failed sample gets its end moved to where it stopped (freezes it)
    t = t0
    f0, dt, nfe_init = _first_step(func, tab, t0, y0, first_step, rtol, atol)
    step = _StepControl(func, tab, rtol, atol, dt, carried=isinstance(first_step, Tensor))
    n_att = torch.zeros(B, dtype=torch.long, device=dev)
    n_acc = torch.zeros_like(n_att)
    tiny = failed = nonfinite = None
    active = t < t_end
    any_active = True if all_active else bool(active.any())
    y, k0 = y0, f0
    it = 0
    while any_active:
        if it >= max_steps:
            raise _steps_exceeded(tab, max_steps, active, t, sign)
        it += 1
        y1, ks, _, ratio, accept, rejected, _, t_new = step.attempt(t, y, k0, t_end, active)
        n_att += active
        n_acc += accept
        active = t_new < t_end
        any_active, any_rejected = torch.stack((active, rejected)).any(1).tolist()  # the one host sync
        if any_rejected:  # rare path: classify rejections (non-finite? step-size underflow?)
            tiny, failed, nonfinite, t_end, active, any_active = _classify_rejections(
                rejected, ratio, step.dt, t, t0, t_end, active, any_active, tiny, failed, nonfinite
            )
        y, k0 = _accept(func, tab, accept, any_rejected, y, y1, ks, k0, t_new)
        t = t_new
    _raise_failures(tab, failed, nonfinite, t, sign)
    per_step = tab.stages - 1 if tab.fsal else tab.stages
    stats = SolverStats(
        n_f_evals=n_att.mul(per_step).add_(nfe_init), n_accepted=n_acc, n_rejected=n_att.sub(n_acc), next_dt=step.dt
    )
    return y, stats


def _accept(
    func: Func,
    tab: Tableau,
    accept: Tensor,
    any_rejected: bool,
    y: Tensor,
    y1: Tensor,
    ks: Tensor,
    k0: Tensor,
    t_new: Tensor,
) -> tuple[Tensor, Tensor]:
    """The state and first stage after a step: ``y1`` where the step was accepted, ``y`` where it was rejected; the
    next first stage from the FSAL tableau's last stage, else one evaluation of ``func`` at the new state."""
    if any_rejected:
        acc_c = accept.unsqueeze(-1)
        y = torch.where(acc_c, y1, y)
        k0 = torch.where(acc_c, ks[-1], k0) if tab.fsal else None
    else:  # nobody rejected: finished samples stepped with dt = 0, so y1 == y for them — no masking
        y, k0 = y1, ks[-1]
    if not tab.fsal:
        k0 = func(t_new, y)
    return y, k0


def _check_finite(tab: Tableau, ys: Tensor, tq: Tensor, sign):
    bad = ~torch.isfinite(ys).all(-1)  # [B, T]
    if bool(bad.any()):
        failed = bad.any(1)
        last_ok = (bad.float().argmax(1) - 1).clamp(min=0)  # last output time with a finite state
        t_reached = tq.gather(1, last_ok.unsqueeze(1)).squeeze(1)
        raise _fail(
            tab,
            "state became non-finite (NaN/inf)",
            failed,
            t_reached,
            sign,
            "use a smaller step_size or an adaptive method, or check the vector field for blow-up",
        )


def solve_fixed(
    func: Func,
    tab: Tableau,
    y0: Tensor,
    tq: Tensor,
    *,
    step_size: float | None,
    max_steps: int,
    sign=1.0,
    checkpoints: list[StepCheckpoint] | None = None,
):
    """Fixed-step integration. ``step_size=None``: the steps are the output intervals of each row.
    Otherwise steps of ``step_size`` from each row's start (last one shortened), outputs by dense output.
    """
    B, T = tq.shape
    dev = y0.device
    t0, t_end = tq[:, 0], tq[:, -1]
    y = y0
    recs = []
    if step_size is None:
        if max_steps < T - 1:
            raise _fail(
                tab,
                f"max_steps={max_steps} exceeded ({T - 1} output intervals)",
                torch.ones(B, dtype=torch.bool, device=dev),
                t0,
                sign,
                "raise max_steps or pass fewer output times",
                max_steps=max_steps,
            )
        outs = [y0]
        n_steps = torch.zeros(B, dtype=torch.long, device=dev)
        for i in range(T - 1):
            t, dt = tq[:, i], tq[:, i + 1] - tq[:, i]
            y1, ks, _ = rk_step(func, tab, t, y, dt, func(t, y))
            if checkpoints is not None:
                checkpoints.append(StepCheckpoint(t, tq[:, i + 1], dt, y))
            y = y1
            outs.append(y)
            n_steps += dt > 0
        ys = torch.stack(outs, 1)
    else:
        span = t_end - t0
        n_b = torch.ceil(span / step_size * (1 - 1e-12)).long()
        n = int(n_b.max()) if B else 0
        if n > max_steps:
            raise _fail(
                tab,
                f"max_steps={max_steps} exceeded (needs {n} steps of {step_size:g})",
                n_b > max_steps,
                t0,
                sign,
                "raise max_steps or use a larger step_size",
                max_steps=max_steps,
                needed_steps=n,
                step_size=step_size,
            )
        for i in range(n):
            t = torch.minimum(t0 + i * step_size, t_end)
            t_stop = torch.where(n_b > i + 1, t0 + (i + 1) * step_size, t_end)
            dt = t_stop - t
            y1, ks, _ = rk_step(func, tab, t, y, dt, func(t, y))
            if T > 2:  # two points: every row's last step ends on its output, y is it (no dense output)
                recs.append(StepRecord(t, t_stop, dt, y, ks))
            if checkpoints is not None:
                checkpoints.append(StepCheckpoint(t, t_stop, dt, y))
            y = y1
        n_steps = n_b
        ys = torch.stack((y0, y), 1) if T == 2 else _assemble(tab, y0, tq, _stack_records(recs) if recs else None)
    _check_finite(tab, ys, tq, sign)
    stats = SolverStats(
        n_f_evals=tab.stages * n_steps, n_accepted=n_steps.clone(), n_rejected=torch.zeros_like(n_steps)
    )
    return ys, stats, None


def run_solver(f, tab, y0, tq, sign, opts: SolverOptions, checkpoints: list[StepCheckpoint] | None = None):
    if tab.adaptive:
        return solve_adaptive(f, tab, y0, tq, opts, sign=sign, checkpoints=checkpoints)
    return solve_fixed(
        f, tab, y0, tq, step_size=opts.step_size, max_steps=opts.max_steps, sign=sign, checkpoints=checkpoints
    )

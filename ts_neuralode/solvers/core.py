"""The shared explicit Runge–Kutta core: one step function, an adaptive loop, a fixed-step loop and the
vectorised dense-output evaluation.

Conventions inside the core (``odeint`` normalises inputs once so the core sees one form):

* time runs forwards: ``tq`` is ``[B, T]``, strictly increasing in each row's real part; padded entries
  are filled with the row's last real time (so they read back the last real output);
* every sample has its own time ``t [B]``, step ``dt [B]`` and status — samples step independently and
  an easy sample does not pay for a hard one (it finishes early and its ``dt`` is frozen to 0);
* output times never shorten steps: every accepted step that covers an output time is recorded (start,
  length, start state and stacked stages) and after the loop all outputs of all samples are evaluated
  at once (``searchsorted`` + one gather + one small matmul).

Performance notes (CPU, small MLP fields: the loop overhead, not the field, dominates at batch ≤ 256):

* tableau coefficients are Python floats → ``torch.add(.., alpha=)``/``addcmul`` take them as scalars,
  no per-step tensor creation;
* the step-size controller works on detached tensors: no autograd nodes for it (smaller graph, and
  gradients do not flow through step-size selection, as in diffrax);
* one host synchronisation per step (``.tolist()`` on a 2-element tensor) decides both "is anyone still
  running" and "did this step cover an output time" (only such steps are kept — this keeps memory flat
  in step count when no gradient graph is being built).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .errors import SolverError
from .tableaus import Tableau

Func = Callable[[Tensor, Tensor], Tensor]

SAFETY = 0.9
FACTOR_MIN = 0.2
FACTOR_MAX = 10.0
# PI controller gains (multiplied by 1/q, q = error-estimator order + 1): h_new = h·safety·r_n^(-β1)·r_{n-1}^(β2)
FLUSH_EVERY = 32  # no-grad solves: recorded steps turned into outputs (and freed) every this many
BETA1 = 1.0
BETA2 = 0.1


@dataclass
class SolverStats:
    """Per-sample statistics (LongTensors ``[B]``).

    ``n_f_evals`` counts evaluations of the vector field a sample took part in while it was still
    integrating (batched evaluations count once per sample). After a backward pass through the adjoint,
    ``backward`` holds ``{"n_f_evals": int, "n_steps": int, "n_rejected": int}`` for the batch-joint
    backward solve (one vector-Jacobian product of the augmented field = one evaluation).
    """

    n_f_evals: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    backward: dict = field(default_factory=dict)


@dataclass
class Records:
    """Data of recorded steps, each tensor stacked along dim 1 (steps)."""

    t_start: Tensor  # [B, N]
    t_stop: Tensor  # [B, N]  (== t_start for a sample that did not advance in that iteration)
    dt: Tensor  # [B, N]
    y_start: Tensor  # [B, N, D]
    k: Tensor  # [B, N, S, D]


def _combine(ks: list[Tensor], coeffs) -> Tensor | None:
    """Σ_j coeffs[j]·ks[j], skipping zero coefficients (Python-float coefficients, no new tensors)."""
    acc = None
    for k, a in zip(ks, coeffs):
        if a == 0.0:
            continue
        acc = k * a if acc is None else torch.add(acc, k, alpha=a)
    return acc


def rk_step(func: Func, tab: Tableau, t: Tensor, y: Tensor, dt: Tensor, k0: Tensor):
    """One explicit RK step for every sample (own ``t``/``dt`` per sample).

    t, dt: [B]; y, k0: [B, D] (k0 = f(t, y)). Returns (y1, stages, err) with err None for fixed methods.
    """
    dtc = dt.unsqueeze(-1)
    ks = [k0]
    yi = y
    for i in range(1, tab.stages):
        comb = _combine(ks, tab.a[i])
        yi = y if comb is None else torch.addcmul(y, dtc, comb)
        ks.append(func(torch.add(t, dt, alpha=tab.c[i]), yi))
    if tab.fsal:
        y1 = yi  # the last row of a FSAL tableau is b: the last stage input is the new state
    else:
        y1 = torch.addcmul(y, dtc, _combine(ks, tab.b))
    err = None
    if tab.e is not None:
        err = dtc * _combine(ks, tab.e)
    return y1, ks, err


def error_ratio(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> Tensor:
    """RMS over channels of err / (atol + rtol·max(|y0|, |y1|)); non-finite → inf. Shapes [B, D] → [B].

    (vector_norm / sqrt(D) instead of square/mean/sqrt: 2 ops fewer per step.)
    """
    scale = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
    r = torch.linalg.vector_norm(err / scale, dim=-1).mul_(err.shape[-1] ** -0.5)
    return torch.nan_to_num_(r, nan=math.inf, posinf=math.inf)


def initial_step(func: Func, t0: Tensor, y0: Tensor, f0: Tensor, order: int, rtol: float, atol: float):
    """Hairer's automatic initial step, per sample (one extra evaluation). All inputs detached."""
    scale = y0.abs() * rtol + atol
    d0 = (y0 / scale).square().mean(-1).sqrt()
    d1 = (f0 / scale).square().mean(-1).sqrt()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.nan_to_num(h0, nan=1e-6, posinf=1e-6)
    y1 = torch.addcmul(y0, h0.unsqueeze(-1), f0)
    f1 = func(t0 + h0, y1)
    d2 = ((f1 - f0) / scale).square().mean(-1).sqrt() / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(
        dmax <= 1e-15,
        torch.clamp(h0 * 1e-3, min=1e-6),
        (0.01 / dmax).pow(1.0 / (order + 1)),
    )
    h = torch.minimum(100 * h0, h1)
    return torch.nan_to_num(h, nan=1e-6, posinf=1e-6)


def _fail(tab: Tableau, what: str, failed: Tensor, t: Tensor, sign, hint: str) -> SolverError:
    n = int(failed.sum())
    tt = (t * sign)[failed] if isinstance(sign, Tensor) else t[failed] * sign
    lo, hi = float(tt.min()), float(tt.max())
    where = f"t={lo:.6g}" if lo == hi else f"t in [{lo:.6g}, {hi:.6g}]"
    err = SolverError(
        f"{tab.name}: {what} for {n} of {t.shape[0]} sample(s), stopped at {where}; {hint}"
    )
    err.method = tab.name
    err.failed = failed
    err.t_reached = t * sign
    return err


def interpolate(tab: Tableau, rec: Records, tq: Tensor) -> Tensor:
    """Evaluate the dense output at query times ``tq [B, Tq]`` (each inside a recorded step) → [B, Tq, D].

    The stages of the N recorded steps are first turned into polynomial coefficients (one matmul over
    the stage axis: [P, S] @ [B, N, S, D]); the outputs are then a weighted sum of those coefficients. For
    few steps the weights are a one-hot [B, Tq, N·(P+1)] matrix and the sum is one ``bmm`` — much cheaper
    on CPU than gathering [B, Tq, S, D] stage blocks (measured ~5× at B=256, Tq=50, N=3).
    """
    B, N = rec.t_stop.shape
    D = rec.k.shape[-1]
    Tq = tq.shape[1]
    # first recorded step of each sample that ends at or after the query: the step that covers it
    idx = torch.searchsorted(rec.t_stop, tq.contiguous(), side="left").clamp_(max=N - 1)
    ts = rec.t_start.gather(1, idx)
    dt = rec.dt.gather(1, idx)
    pos = dt > 0
    theta = torch.where(pos, (tq - ts) / torch.where(pos, dt, torch.ones_like(dt)), torch.zeros_like(dt))
    P = len(tab.interp[0])
    W = torch.tensor(tab.interp, dtype=rec.k.dtype, device=rec.k.device).t()  # [P, S]
    coef = (W @ rec.k) * rec.dt.unsqueeze(-1).unsqueeze(-1)  # [B, N, P, D]
    coef = torch.cat([rec.y_start.unsqueeze(2), coef], 2)  # [B, N, P+1, D] (power 0 = step start)
    powers = torch.arange(0, P + 1, device=tq.device, dtype=theta.dtype)
    pw = theta.unsqueeze(-1).pow(powers).to(coef.dtype)  # [B, Tq, P+1]
    if N <= 32:
        onehot = torch.nn.functional.one_hot(idx, N).to(coef.dtype)  # [B, Tq, N]
        w = (onehot.unsqueeze(-1) * pw.unsqueeze(2)).reshape(B, Tq, N * (P + 1))
        return torch.bmm(w, coef.reshape(B, N * (P + 1), D))
    bidx = torch.arange(B, device=tq.device).unsqueeze(1)
    return (pw.unsqueeze(-2) @ coef[bidx, idx]).squeeze(-2)


def _stack_records(recs: list) -> Records:
    ts, te, dts, ys, ks = zip(*recs)
    return Records(
        torch.stack(ts, 1), torch.stack(te, 1), torch.stack(dts, 1), torch.stack(ys, 1), torch.stack(ks, 1)
    )


def solve_adaptive(
    func: Func,
    tab: Tableau,
    y0: Tensor,
    tq: Tensor,
    *,
    rtol: float,
    atol: float,
    max_steps: int,
    first_step: float | None,
    sign=1.0,
    checkpoints: list | None = None,
):
    """Adaptive per-sample integration of y0 [B, D] over the rows of tq [B, T] (forward time).

    Returns (ys [B, T, D], stats, records of the steps that covered output times). When a list is passed
    as ``checkpoints``, every iteration appends (t [B], t_new [B], dt_taken [B] (0 where not accepted),
    y_start [B, D]) to it — what the interpolated adjoint needs to recompute each accepted step.
    """
    B, T = tq.shape
    dev, dtype = y0.device, y0.dtype
    t0 = tq[:, 0]
    t_end = tq[:, -1].clone()  # a failed sample gets its end moved to where it stopped (freezes it)
    t = t0
    f0 = func(t, y0)
    nfe_init = 1
    if first_step is None:
        with torch.no_grad():
            dt = initial_step(func, t0, y0.detach(), f0.detach(), tab.order, rtol, atol)
        nfe_init += 1
    else:
        dt = torch.full((B,), float(first_step), dtype=dtype, device=dev)

    q = min(tab.order, tab.error_order) + 1
    beta1, beta2 = BETA1 / q, BETA2 / q
    eps = torch.finfo(dtype).eps
    tiny = 10 * eps * torch.maximum(t0.abs(), t_end.abs()).clamp_(min=eps)

    # SAFETY·r_{n-1}^β2 of the last accepted step. Accepted ratios are ≤ 1, so this is ≤ SAFETY and the
    # same PI formula also shrinks rejected steps (r > 1) — no separate reject branch (fewer ops per step).
    prev_term = torch.full((B,), SAFETY, dtype=dtype, device=dev)
    att_hist, acc_hist = [], []  # per-step bool masks, summed once at the end (not 2 ops per step)
    failed = torch.zeros(B, dtype=torch.bool, device=dev)
    nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
    active = t < t_end
    inf_col = torch.full((B, 1), math.inf, dtype=dtype, device=dev)
    tq_ext = torch.cat([tq, inf_col], 1)
    next_out = torch.where(active, tq_ext[:, 1], inf_col[:, 0])

    y, k0 = y0, f0
    recs = []
    # Without a gradient graph, recorded steps are turned into outputs every FLUSH_EVERY records and
    # dropped: memory stays flat in the number of steps (with per-sample steps nearly every iteration
    # covers some sample's output, so keeping them all would grow up to B·T records).
    flush = not (torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad)) and checkpoints is None
    out_buf = y0.unsqueeze(1).expand(B, T - 1, -1) if (flush and T > 1) else None
    t_flushed = t0
    it = 0
    any_active = bool(active.any())
    while any_active:
        if it >= max_steps:
            raise _fail(
                tab, f"max_steps={max_steps} exceeded", active, t, sign,
                "raise max_steps, loosen rtol/atol, or check the dynamics for stiffness",
            )
        it += 1
        rem = t_end - t
        dt_use = torch.minimum(dt, rem)  # finished samples: rem = 0 → frozen, their updates are no-ops
        y1, ks, err = rk_step(func, tab, t, y, dt_use, k0)
        with torch.no_grad():
            ratio = error_ratio(err.detach(), y.detach(), y1.detach(), rtol, atol)
            accept = (ratio <= 1.0) & active
            # land exactly on t_end (t + rem may round below it)
            t_new = torch.where(accept, torch.where(dt >= rem, t_end, t + dt_use), t)
            fac = ratio.pow(-beta1).mul_(prev_term).clamp_(FACTOR_MIN, FACTOR_MAX)
            prev_term = torch.where(accept, ratio.clamp(min=1e-4).pow_(beta2).mul_(SAFETY), prev_term)
            dt = dt_use * fac
            att_hist.append(active)
            acc_hist.append(accept)
            if len(att_hist) == 64:  # fold the history now and then: memory stays flat in the step count
                att_hist = [torch.stack(att_hist).sum(0)]
                acc_hist = [torch.stack(acc_hist).sum(0)]
            rejected = active ^ accept  # accept ⊂ active
            active = t_new < t_end
            covered = t_new >= next_out
            flags = torch.stack((active, covered, rejected)).any(1).tolist()  # the one host sync per step
            if flags[2]:  # rare path: classify rejections (non-finite? step-size underflow?)
                nonfinite = torch.where(rejected, ~torch.isfinite(ratio), nonfinite)
                under = rejected & (dt < tiny)
                if bool(under.any()):
                    failed |= under
                    t_end = torch.where(under, t, t_end)
                    active &= ~under
                    flags[0] = bool(active.any())
        if checkpoints is not None:
            checkpoints.append((t, t_new, torch.where(accept, dt_use, torch.zeros_like(dt_use)), y))
        if flags[1]:
            recs.append((t, t_new, dt_use, y, torch.stack(ks, 1)))
            cnt = (tq <= t_new.unsqueeze(1)).sum(1, keepdim=True)
            next_out = tq_ext.gather(1, cnt).squeeze(1)
            if out_buf is not None and len(recs) >= FLUSH_EVERY:
                out_buf, t_flushed = _flush(tab, recs, tq[:, 1:], out_buf, t_flushed, t_new)
        if flags[2]:
            acc_c = accept.unsqueeze(-1)
            y = torch.where(acc_c, y1, y)
            k0 = torch.where(acc_c, ks[-1], k0) if tab.fsal else None
        else:
            # nobody rejected: finished samples stepped with dt = 0, so y1 == y for them — no masking
            y, k0 = y1, ks[-1]
        if not tab.fsal:
            k0 = func(t_new, y)
        t = t_new
        any_active = flags[0]
    if bool(failed.any()):
        if bool((failed & nonfinite).any()):
            raise _fail(
                tab, "state or derivative became non-finite (NaN/inf)", failed, t, sign,
                "check the vector field for overflow/blow-up, lower the learning rate, or normalise time",
            )
        raise _fail(
            tab, "step size underflow", failed, t, sign,
            "the solution likely blows up or is too stiff here; shorten the time span or loosen rtol/atol",
        )
    per_step = tab.stages - 1 if tab.fsal else tab.stages
    if att_hist:
        n_att = torch.stack(att_hist).sum(0)
        n_acc = torch.stack(acc_hist).sum(0)
    else:
        n_att = n_acc = torch.zeros(B, dtype=torch.long, device=dev)
    stats = SolverStats(n_f_evals=nfe_init + per_step * n_att, n_accepted=n_acc, n_rejected=n_att - n_acc)
    if out_buf is not None:
        if recs:
            out_buf, _ = _flush(tab, recs, tq[:, 1:], out_buf, t_flushed, t)
        return torch.cat([y0.unsqueeze(1), out_buf], 1), stats, None
    records = _stack_records(recs) if recs else None
    ys = _assemble(tab, y0, tq, records)
    return ys, stats, records


def _flush(tab, recs, q, out_buf, t_from, t_to):
    """Write the outputs q ∈ (t_from, t_to] (per sample) from the recorded steps into out_buf; clear recs."""
    vals = interpolate(tab, _stack_records(recs), q)
    m = (q > t_from.unsqueeze(1)) & (q <= t_to.unsqueeze(1))
    recs.clear()
    return torch.where(m.unsqueeze(-1), vals, out_buf), t_to


def _assemble(tab: Tableau, y0: Tensor, tq: Tensor, records: Records | None) -> Tensor:
    if tq.shape[1] == 1:
        return y0.unsqueeze(1)
    if records is None:  # no sample advanced (all spans empty)
        return y0.unsqueeze(1).expand(-1, tq.shape[1], -1)
    rest = interpolate(tab, records, tq[:, 1:])
    return torch.cat([y0.unsqueeze(1), rest], 1)


def _check_finite(tab: Tableau, ys: Tensor, tq: Tensor, sign):
    bad = ~torch.isfinite(ys).all(-1)  # [B, T]
    if bool(bad.any()):
        failed = bad.any(1)
        last_ok = (bad.float().argmax(1) - 1).clamp(min=0)  # last output time with a finite state
        t_reached = tq.gather(1, last_ok.unsqueeze(1)).squeeze(1)
        raise _fail(
            tab, "state became non-finite (NaN/inf)", failed, t_reached, sign,
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
    checkpoints: list | None = None,
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
        if T - 1 > max_steps:
            raise _fail(tab, f"max_steps={max_steps} exceeded ({T - 1} output intervals)",
                        torch.ones(B, dtype=torch.bool, device=dev), t0, sign,
                        "raise max_steps or pass fewer output times")
        outs = [y0]
        n_steps = torch.zeros(B, dtype=torch.long, device=dev)
        for i in range(T - 1):
            t, dt = tq[:, i], tq[:, i + 1] - tq[:, i]
            y1, ks, _ = rk_step(func, tab, t, y, dt, func(t, y))
            if checkpoints is not None:
                checkpoints.append((t, tq[:, i + 1], dt, y))
            y = y1
            outs.append(y)
            n_steps += dt > 0
        ys = torch.stack(outs, 1)
    else:
        span = t_end - t0
        n_b = torch.ceil(span / step_size * (1 - 1e-12)).long()
        n = int(n_b.max()) if B else 0
        if n > max_steps:
            raise _fail(tab, f"max_steps={max_steps} exceeded (needs {n} steps of {step_size:g})",
                        n_b > max_steps, t0, sign, "raise max_steps or use a larger step_size")
        for i in range(n):
            t = torch.minimum(t0 + i * step_size, t_end)
            t_stop = torch.where(n_b > i + 1, t0 + (i + 1) * step_size, t_end)
            dt = t_stop - t
            y1, ks, _ = rk_step(func, tab, t, y, dt, func(t, y))
            recs.append((t, t_stop, dt, y, torch.stack(ks, 1)))
            if checkpoints is not None:
                checkpoints.append((t, t_stop, dt, y))
            y = y1
        n_steps = n_b
        ys = _assemble(tab, y0, tq, _stack_records(recs) if recs else None)
    _check_finite(tab, ys, tq, sign)
    stats = SolverStats(
        n_f_evals=tab.stages * n_steps, n_accepted=n_steps.clone(), n_rejected=torch.zeros_like(n_steps)
    )
    return ys, stats, None


def run_solver(f, tab, y0, tq, sign, opts, checkpoints=None):
    if tab.adaptive:
        return solve_adaptive(
            f, tab, y0, tq, rtol=opts["rtol"], atol=opts["atol"], max_steps=opts["max_steps"],
            first_step=opts["first_step"], sign=sign, checkpoints=checkpoints,
        )
    return solve_fixed(f, tab, y0, tq, step_size=opts["step_size"], max_steps=opts["max_steps"], sign=sign,
                       checkpoints=checkpoints)

"""Adjoint gradients: one ``torch.autograd.Function`` whose backward runs once over the whole time span.

Two modes (``adjoint_mode``):

* ``"backsolve"`` — the continuous adjoint of Chen et al.: the augmented system
  ``(y, a, a_θ)`` with ``dy/dt = f``, ``da/dt = −aᵀ∂f/∂y``, ``da_θ/dt = −aᵀ∂f/∂θ`` is integrated backwards
  from the last output time, re-integrating ``y`` (nothing of the forward is kept: memory O(1) in the
  number of steps; ``y`` may drift on unstable dynamics). One batch-joint step size; the step controller
  is started once (one initial-step selection) and carried across output times: at each output time the
  step is clipped to land on it, ``∂L/∂y(t_i)`` is added to ``a`` and the controller goes on with the step
  size it had proposed. ``seminorm=True`` measures the error only on ``(y, a)``, not on ``a_θ``.
* ``"interpolate"`` — ``y`` is read from the forward pass instead of re-integrated: the forward keeps the
  start state of every step (memory O(steps·B·D), no activations), and the backward walks the forward's
  accepted steps in reverse, per sample. On each step the stages are recomputed from the stored exact
  start state and the adjoint is propagated through that RK step and through the dense-output
  interpolant of the output times inside the step (so output times never split a step and all outputs
  of a step enter at once). This is the adjoint scheme that is consistent with the forward RK method
  (Hager 2000; Sanz-Serna 2016): its gradient is the exact gradient of the computed solution — the same
  numbers as backpropagating through the solver — at the forward's own step sizes, so it needs no error
  control of its own (``seminorm`` does not apply) and costs one evaluation + one vector–Jacobian product
  per forward stage.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .controller import PIController, error_ratio, initial_step
from .core import run_solver
from .errors import SolverError
from .failures import _fail
from .records import SolverOptions, StepCheckpoint
from .rk_step import rk_step


class _Spec:
    """Everything the autograd.Function needs that is not a differentiable tensor input."""

    def __init__(self, f, tab, tq, sign, opts: SolverOptions, mode, seminorm, params):
        self.f, self.tab, self.tq, self.sign, self.opts = f, tab, tq, sign, opts
        self.mode, self.seminorm, self.params = mode, seminorm, params
        self.stats = None
        self.ys = None
        self.chk: list[StepCheckpoint] | None = None


class _OdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            chk: list | None = [] if spec.mode == "interpolate" else None
            ys, stats, _ = run_solver(spec.f, spec.tab, y0, spec.tq, spec.sign, spec.opts, checkpoints=chk)
        spec.ys, spec.stats, spec.chk = ys, stats, chk
        ctx.spec = spec
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        spec = ctx.spec
        if spec.mode == "interpolate":
            gy0, gp, info = _backward_interpolate(spec, g)
        else:
            gy0, gp, info = _backward_backsolve(spec, g)
        spec.stats.backward.update(info)
        spec.chk = None  # free the checkpoints
        return (None, gy0, *gp)


def odeint_adjoint(f, tab, y0, tq, sign, params, opts, *, mode: str, seminorm: bool):
    spec = _Spec(f, tab, tq, sign, opts, mode, seminorm, tuple(params))
    ys = _OdeintAdjoint.apply(spec, y0, *params)
    return ys, spec.stats


def _vjp_params(grads, params, acc):
    for i, (gr, _p) in enumerate(zip(grads, params, strict=True)):
        if gr is not None:
            acc[i] = acc[i] + gr
    return acc


# ---------------------------------------------------------------------------------------------------
def _backward_interpolate(spec: _Spec, g: Tensor):
    """Walk the forward's iterations in reverse; per iteration recompute the RK step from its stored start
    state and pull the adjoint (plus the output cotangents of the outputs inside the step) through it."""
    tab, f, tq, params = spec.tab, spec.f, spec.tq, spec.params
    chk = spec.chk
    B, T, D = g.shape
    S = tab.stages
    pgrads = [torch.zeros_like(p) for p in params]
    if not chk or T == 1:
        info = dict(
            n_f_evals=torch.zeros(B, dtype=torch.long, device=g.device), n_steps=0, n_rejected=0, mode="interpolate"
        )
        return g.sum(1), pgrads, info
    N = len(chk)
    t_start = torch.stack([c.t_start for c in chk], 1)  # [B, N]
    t_stop = torch.stack([c.t_stop for c in chk], 1)
    dts = torch.stack([c.dt for c in chk], 1)
    q, gq = tq[:, 1:], g[:, 1:]
    # the step that covers each output: the same rule as the forward's dense output
    idx = torch.searchsorted(t_stop, q.contiguous(), side="left").clamp_(max=N - 1)  # [B, T-1]
    ts, dt = t_start.gather(1, idx), dts.gather(1, idx)
    pos = dt > 0
    theta = torch.where(pos, (q - ts) / torch.where(pos, dt, torch.ones_like(dt)), torch.zeros_like(dt))
    P = len(tab.interp[0])
    W = torch.tensor(tab.interp, dtype=g.dtype, device=g.device)  # [S, P]
    powers = torch.arange(1, P + 1, dtype=g.dtype, device=g.device)
    w = (theta.unsqueeze(-1).pow(powers) @ W.t()) * dt.unsqueeze(-1)  # [B, T-1, S]: d y(q)/d k_s
    # group the (sample, output) pairs by step so each backward step picks its slice (one host sync)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=N).tolist()
    offs = [0]
    for c in counts:
        offs.append(offs[-1] + c)
    b_of = torch.arange(B, device=g.device).repeat_interleave(T - 1)[order]
    g_f = gq.reshape(-1, D)[order]
    contrib = w.reshape(-1, S)[order].unsqueeze(-1) * g_f.unsqueeze(1)  # [M, S, D]

    a = torch.zeros(B, D, dtype=g.dtype, device=g.device)
    n_eval = torch.zeros(B, dtype=torch.long, device=g.device)
    for n in range(N - 1, -1, -1):
        t_n, _, dt_n, y_n = chk[n]  # a StepCheckpoint
        lo, hi = offs[n], offs[n + 1]
        with torch.enable_grad():
            yn = y_n.detach().requires_grad_(True)
            y1, K, _ = rk_step(f, tab, t_n, yn, dt_n, f(t_n, yn))
            obj = (y1 * a).sum()
            if hi > lo:
                H = torch.zeros(B, S, D, dtype=g.dtype, device=g.device).index_add_(0, b_of[lo:hi], contrib[lo:hi])
                obj = obj + (K.transpose(0, 1) * H).sum()
            grads = torch.autograd.grad(obj, (yn, *params), allow_unused=True)
        a = grads[0]
        if hi > lo:
            a = a.index_add(0, b_of[lo:hi], g_f[lo:hi])  # y(q) = y_n + Σ_s w_s k_s: direct y_n term
        pgrads = _vjp_params(grads[1:], params, pgrads)
        n_eval += (dt_n > 0) * S
    gy0 = a + g[:, 0]
    info = dict(n_f_evals=n_eval, n_steps=N, n_rejected=0, mode="interpolate")
    return gy0, pgrads, info


# ---------------------------------------------------------------------------------------------------
class AdjointDynamics:
    """The augmented system of the backsolve adjoint, in σ = −τ, on one packed row ``z [1, M]`` = (y, a, a_θ…):
    ``dz/dσ = −(f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ)`` at τ = −σ.

    With per-sample grids, ``mask [B, 1]`` (set per output interval) freezes the samples whose span does not
    cover the interval: their y and a do not move. ``n_evals`` counts evaluations (one vector-Jacobian product
    each).
    """

    def __init__(self, f, params: tuple, B: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
        self.f, self.params, self.B, self.D = f, params, B, D
        self.BD = B * D
        self.dtype, self.device = dtype, device
        self.mask: Tensor | None = None
        self.n_evals = 0

    def __call__(self, sigma: Tensor, zz: Tensor) -> Tensor:
        self.n_evals += 1
        B, D, BD, m = self.B, self.D, self.BD, self.mask
        y = zz[0, :BD].view(B, D)
        a = zz[0, BD : 2 * BD].view(B, D)
        if m is not None:
            a = a * m
        with torch.enable_grad():
            y_ = y.detach().requires_grad_(True)
            fy = self.f((-sigma).expand(B), y_)
            vj = torch.autograd.grad(fy, (y_, *self.params), grad_outputs=a, allow_unused=True)
        dy = fy.detach()
        if m is not None:
            dy = dy * m
        parts = [-dy.reshape(-1), vj[0].reshape(-1)]  # dσ = −dτ: (−f, +aᵀJ, +aᵀf_θ)
        for v, p in zip(vj[1:], self.params, strict=True):
            parts.append(
                v.reshape(-1) if v is not None else torch.zeros(p.numel(), dtype=self.dtype, device=self.device)
            )
        return torch.cat(parts).unsqueeze(0)


class OutputCotangents:
    """Adds ``∂L/∂y(t_i)`` to the adjoint ``a`` when the backward solve reaches output time ``t_i``: a per-sample
    pointer to the next output (from the last one down), several at one time for a row's padded duplicates."""

    def __init__(self, g: Tensor, tq: Tensor, BD: int) -> None:
        self.g, self.tq, self.BD = g, tq, BD
        B, T, _ = g.shape
        self.rows = torch.arange(B, device=g.device)
        self.ptr = torch.full((B,), T - 1, dtype=torch.long, device=g.device)

    def add(self, zz: Tensor, tau: float) -> Tensor:
        B, BD = self.g.shape[0], self.BD
        a = zz[0, BD : 2 * BD].view(B, -1)
        jump = torch.zeros_like(a)
        while True:  # padded duplicates of a row's last time: several outputs at one time
            p = self.ptr.clamp(min=0)
            hit = (self.ptr >= 0) & (self.tq.gather(1, p.unsqueeze(1)).squeeze(1) == tau)
            if not bool(hit.any()):
                break
            jump = jump + torch.where(hit.unsqueeze(1), self.g[self.rows, p], torch.zeros_like(a))
            self.ptr = self.ptr - hit.long()
        zz = zz.clone()
        zz[0, BD : 2 * BD] += jump.reshape(-1)
        return zz


def _backward_backsolve(spec: _Spec, g: Tensor):
    """Continuous adjoint, integrated backwards once over the span with a batch-joint step size.

    Works in σ = −τ so that the backward solve runs forwards and reuses the forward core (rk_step,
    error_ratio, initial_step, the :class:`PIController`). The augmented state is packed into one [1, M] row:
    (y, a, a_θ...), see :class:`AdjointDynamics`. This is one orchestrator (~100 lines): the step loop, its
    error control and the output-time bookkeeping share the controller's state, and splitting them would pass
    that state around for no gain in clarity.
    """
    tab, tq, params, opts = spec.tab, spec.tq, spec.params, spec.opts
    ys = spec.ys
    B, T, D = g.shape
    dev, dtype = g.device, g.dtype
    BD = B * D
    sizes = [p.numel() for p in params]
    t0_b, tend_b = tq[:, 0], tq[:, -1]
    shared = bool((tq == tq[:1]).all())
    stops = torch.unique(tq).tolist()  # ascending τ; walked from the top
    # state: y at each sample's own end time (frozen by the mask until the backward reaches it)
    y_init = ys[:, -1]
    z = torch.cat([y_init.reshape(-1), torch.zeros(BD + sum(sizes), dtype=dtype, device=dev)]).unsqueeze(0)
    aug = AdjointDynamics(spec.f, params, B, D, dtype, dev)
    cotangents = OutputCotangents(g, tq, BD)

    def failure(what: str, hint: str, **facts) -> SolverError:
        """The backward's failure: every sample stops at the current ``pos`` (one batch-joint step)."""
        everyone = torch.ones(B, dtype=torch.bool, device=dev)
        at = torch.full((B,), -pos, dtype=dtype, device=dev)
        return _fail(tab, f"adjoint backward: {what}", everyone, at, spec.sign, hint, **facts)

    def set_mask(tau_mid: float):
        if not shared:
            aug.mask = ((tau_mid > t0_b) & (tau_mid < tend_b)).to(dtype).unsqueeze(1)

    rtol, atol = opts.rtol, opts.atol
    controller = PIController.for_tableau(tab)
    tau = stops[-1]
    z = cotangents.add(z, tau)
    si = len(stops) - 2
    pos = -tau  # the backward time in Python floats: float32 sums of steps would leave a sliver before a stop
    sig = torch.full((1,), pos, dtype=dtype, device=dev)
    n_acc = n_rej = 0
    if si >= 0:
        set_mask(0.5 * (stops[si] + tau))
        k0 = aug(sig, z)
        prev_term = controller.initial_term_scalar()
        if tab.adaptive:
            dt = float(initial_step(aug, sig, z.detach(), k0.detach(), tab.order, rtol, atol)[0])
        else:
            dt = opts.step_size if opts.step_size is not None else math.inf
        eps = torch.finfo(dtype).eps
        span = max(abs(stops[0]), abs(stops[-1]), eps)
        max_steps = opts.max_steps
    while si >= 0:
        target = -stops[si]
        rem = target - pos
        hit = dt * (1 + 1e-9) >= rem  # a step that lands within rounding of the stop takes it
        dt_use = rem if hit else dt
        dtt = torch.full((1,), dt_use, dtype=dtype, device=dev)
        z1, K, err = rk_step(aug, tab, sig, z, dtt, k0)
        if err is not None:
            ratio = error_ratio(err[:, : 2 * BD], z[:, : 2 * BD], z1[:, : 2 * BD], rtol, atol)
            if not spec.seminorm and err.shape[1] > 2 * BD:
                ratio = torch.maximum(ratio, error_ratio(err[:, 2 * BD :], z[:, 2 * BD :], z1[:, 2 * BD :], rtol, atol))
            r = float(ratio[0])
        else:
            r = 0.0
        accept = r <= 1.0
        if n_acc + n_rej >= max_steps:
            raise failure(
                f"max_steps={max_steps} exceeded",
                "raise max_steps or loosen rtol/atol; adjoint_mode='interpolate' follows the forward's steps",
                max_steps=max_steps,
            )
        fac = controller.factor_scalar(r, prev_term) if tab.adaptive else 1.0
        if accept:
            n_acc += 1
            z = z1
            if tab.adaptive:
                prev_term = controller.after_accept_scalar(r)
            if hit:
                pos = target
                sig = torch.full((1,), pos, dtype=dtype, device=dev)
                z = cotangents.add(z, stops[si])
                si -= 1
                if si >= 0:
                    set_mask(0.5 * (stops[si] + stops[si + 1]))
                    k0 = aug(sig, z)  # the jump changed a: re-evaluate the first stage
                # the controller keeps its own proposal across the output time (not the clipped length)
            else:
                pos = pos + dt_use
                sig = torch.full((1,), pos, dtype=dtype, device=dev)
                dt = dt_use * fac
                k0 = K[-1] if tab.fsal else aug(sig, z)
        else:
            n_rej += 1
            dt = dt_use * fac
            if dt < 10 * eps * span:
                what = "non-finite adjoint state" if not math.isfinite(r) else "step size underflow"
                raise failure(what, "loosen rtol/atol or use adjoint_mode='interpolate' (no re-integration of y)")
    gy0 = z[0, BD : 2 * BD].view(B, D).clone()
    pg, off = [], 2 * BD
    for p, n in zip(params, sizes, strict=True):
        pg.append(z[0, off : off + n].view_as(p).clone())
        off += n
    info = dict(
        n_f_evals=torch.full((B,), aug.n_evals, dtype=torch.long, device=dev),
        n_steps=n_acc + n_rej,
        n_rejected=n_rej,
        mode="backsolve",
    )
    return gy0, pg, info

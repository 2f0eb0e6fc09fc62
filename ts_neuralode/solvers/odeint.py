"""Public entry point :func:`odeint`: argument checks, one normalisation of time, dispatch to the core."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .adjoint import odeint_adjoint
from .core import run_solver, solve_interval
from .options import ADJOINT_MODES, DEFAULTS, ODEOptions
from .records import SolverOptions, SolverStats
from .tableaus import METHODS

__all__ = ["odeint", "Solution", "ADJOINT_MODES"]


@dataclass
class Solution:
    """ys: [B, T, D] solution at the requested times (``ys[:, 0] == y0``); stats: per-sample statistics."""

    ys: Tensor
    stats: SolverStats


def _normalise_time(y0: Tensor, t: Tensor, t_mask: Tensor | None, check: bool = True):
    """Check t / t_mask and return (tq [B, T] increasing with padding filled, sign, mask).

    ``sign`` is 1.0, -1.0 (every row backwards) or a [B] tensor (mixed directions); the core integrates in
    τ = sign·t so that it only ever sees increasing time.
    """
    B = y0.shape[0]
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    if t.dim() not in (1, 2):
        raise ValueError(f"t must be [T] (shared) or [B, T] (per sample), got shape {tuple(t.shape)}")
    if t.shape[-1] < 1:
        raise ValueError("t is empty: pass at least the initial time t[..., 0]")
    t = t.to(device=y0.device, dtype=y0.dtype)
    if t.dim() == 1 and t_mask is None and not check:  # the caller vouches for t: only its direction is read
        T = t.shape[0]
        up = T == 1 or bool(t[-1] > t[0])
        return (t if up else -t).unsqueeze(0).expand(B, T), 1.0 if up else -1.0
    if t.dim() == 1 and t_mask is None:
        # shared grid (the common case): check the one row, then broadcast it (a view, no copy)
        T = t.shape[0]
        d = t[1:] - t[:-1]
        ok, up, down = (
            torch.stack((torch.isfinite(t).all(), (d > 0).all(), (d < 0).all())).tolist()
            if T > 1
            else (bool(torch.isfinite(t).all()), True, False)
        )
        if not ok:
            raise ValueError("t contains NaN/inf: pass finite times")
        if not (up or down):
            raise ValueError(
                "t must be strictly increasing or strictly decreasing in each row; row(s) [0] are not "
                "(sort the times and drop duplicates, or mark padding with t_mask)"
            )
        sign = 1.0 if up else -1.0
        return (t if up else -t).unsqueeze(0).expand(B, T), sign
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(B, -1)
    elif t.shape[0] != B:
        raise ValueError(f"t is [B, T] with B={t.shape[0]} but y0 has batch {B}: give one time row per sample")
    T = t.shape[1]
    if not check and (t_mask is None or (isinstance(t_mask, Tensor) and t_mask.shape == (B, T))):
        # the caller vouches for t and t_mask (a recurrent model's grid, checked once): fill the padding and read
        # the direction with one host sync, none of the value checks below (a recurrent pass's solve per interval)
        m = None if t_mask is None else t_mask.to(device=y0.device, dtype=torch.bool)
        last = t[:, -1:] if m is None else t.gather(1, (m.sum(1) - 1).clamp_min(0).unsqueeze(1))
        if m is not None:
            t = torch.where(m, t, last)
        d = last.squeeze(1) - t[:, 0]
        lo, hi = torch.stack((d.min(), d.max())).tolist()
        if lo >= 0 or hi <= 0:
            sign = 1.0 if lo >= 0 else -1.0
            return (t if sign > 0 else -t).contiguous(), sign
        # rows in both directions: the general path below
    if t_mask is not None:
        if not isinstance(t_mask, Tensor) or t_mask.shape != (B, T):
            shape = tuple(t_mask.shape) if isinstance(t_mask, Tensor) else type(t_mask).__name__
            raise ValueError(f"t_mask must be a bool tensor [B, T] = [{B}, {T}], got {shape}")
        m = t_mask.to(device=y0.device, dtype=torch.bool)
        if not bool(m[:, 0].all()):
            raise ValueError("t_mask[:, 0] must be True: the first time of each row is the initial time")
        if T > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
            rows = torch.nonzero((m[:, 1:] & ~m[:, :-1]).any(1)).flatten()[:5].tolist()
            raise ValueError(
                f"t_mask has padding in the middle of row(s) {rows}: put all real times first and pad only at the end"
            )
        n_valid = m.sum(1)
        last = t.gather(1, (n_valid - 1).unsqueeze(1))
        t = torch.where(m, t, last)  # padded entries read back the row's last real output
    else:
        m = None
        last = t[:, -1:]
    if not bool(torch.isfinite(t).all()):
        raise ValueError("t contains NaN/inf (in its real part): pass finite times")
    sign_row = torch.sign(last.squeeze(1) - t[:, 0])
    sign_row = torch.where(sign_row == 0, torch.ones_like(sign_row), sign_row)
    if T > 1:
        d = (t[:, 1:] - t[:, :-1]) * sign_row.unsqueeze(1)
        valid_pair = m[:, 1:] if m is not None else torch.ones_like(d, dtype=torch.bool)
        bad = valid_pair & ~(d > 0)
        if bool(bad.any()):
            rows = torch.nonzero(bad.any(1)).flatten()[:5].tolist()
            raise ValueError(
                f"t must be strictly increasing or strictly decreasing in each row; row(s) {rows} are not "
                "(sort the times and drop duplicates, or mark padding with t_mask)"
            )
    if bool((sign_row > 0).all()):
        sign = 1.0
    elif bool((sign_row < 0).all()):
        sign = -1.0
    else:
        sign = sign_row
    tq = t * (sign.unsqueeze(1) if isinstance(sign, Tensor) else sign)
    return tq.contiguous(), sign


def _interval_unchecked(y0: Tensor, t: Tensor, t_mask: Tensor | None):
    """(τ0 [B], τ1 [B], sign, all_active) of one interval whose times the caller checked already (a recurrent
    model's grid), with one host sync; None when the rows run in both directions (the general path then)."""
    B = y0.shape[0]
    t = t.to(device=y0.device, dtype=y0.dtype)
    if t.dim() == 1 and t_mask is None:  # a shared grid: two numbers
        a, b = t.tolist()
        sign = 1.0 if b >= a else -1.0
        return (
            torch.full((B,), sign * a, dtype=y0.dtype, device=y0.device),
            torch.full((B,), sign * b, dtype=y0.dtype, device=y0.device),
            sign,
            a != b,
        )
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(B, 2)
    if t.shape[0] != B or (t_mask is not None and t_mask.shape != (B, 2)):
        return None  # let the general path say what is wrong
    t0 = t[:, 0]
    t1 = t[:, 1] if t_mask is None else torch.where(t_mask[:, 1].to(device=y0.device, dtype=torch.bool), t[:, 1], t0)
    d = t1 - t0
    lo, hi = torch.stack((d.min(), d.max())).tolist()
    if lo >= 0:
        return t0, t1, 1.0, lo > 0
    if hi <= 0:
        return -t0, -t1, -1.0, hi < 0
    return None


def _wrap(func, sign):
    if isinstance(sign, float) and sign == 1.0:
        return func
    if isinstance(sign, float):
        return lambda tau, y: -func(-tau, y)
    s_col = sign.unsqueeze(1)
    return lambda tau, y: s_col * func(sign * tau, y)


#: False sends one-interval solves through the general adaptive loop as before the two-point path (for A/B
#: measurements: scripts/speed.py --sections interval)
TWO_POINT_PATH = True
_UNSET: Any = object()  # a keyword not given: the options object's (or ODEOptions') value


def odeint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    options: ODEOptions | None = None,
    *,
    method: str = _UNSET,
    rtol: float = _UNSET,
    atol: float = _UNSET,
    step_size: float | None = _UNSET,
    t_mask: Tensor | None = None,
    adjoint: bool = _UNSET,
    adjoint_params: Iterable[Tensor] | None = None,
    adjoint_mode: str = _UNSET,
    seminorm: bool = _UNSET,
    max_steps: int = _UNSET,
    first_step: float | Tensor | None = None,
    check_inputs: bool = True,
) -> Solution:
    """Solve dy/dt = func(t, y) for a batch of initial values, each sample with its own step size.

    Args:
        func: ``func(t [B], y [B, D]) -> [B, D]``; ``t`` holds each sample's own current time.
        y0: ``[B, D]`` initial states at ``t[..., 0]``.
        t: ``[T]`` shared or ``[B, T]`` per-sample output times, strictly monotone (decreasing = backwards).
        options: an :class:`~ts_neuralode.solvers.options.ODEOptions` (method, rtol, atol, step_size, adjoint,
            adjoint_mode, seminorm, max_steps: defaults and their meaning are declared there, once). The same
            names as keywords replace its fields (``odeint(f, y0, t, method="rk4")`` needs no options object).
        t_mask: ``[B, T]`` bool, True = real time; padding only after the real times of a row. Outputs at
            padded positions repeat the row's last real output.
        adjoint_params: with ``adjoint``: the tensors to differentiate (default ``func.parameters()``).
        first_step: initial step size of adaptive methods (default: Hairer's automatic choice): a number, or a
            ``[B]`` tensor of per-sample steps (e.g. ``stats.next_dt`` of the solve this one continues).
        check_inputs: False skips the checks that read the values of ``t`` (finite, strictly monotone; a shared
            grid) and of a tensor ``first_step`` (finite, > 0) — for callers whose grid was checked once already
            (a recurrent model stepping through it interval by interval). ``y0``, shapes and options are
            checked anyway.

    Returns:
        :class:`Solution` with ``ys [B, T, D]`` and per-sample ``stats``.

    Raises:
        ValueError: invalid arguments (the message says what to change).
        SolverError: max_steps exceeded, step-size underflow or non-finite state (method, time reached and
            number of failed samples in the message).
    """
    given = {
        k: v
        for k, v in (
            ("method", method),
            ("rtol", rtol),
            ("atol", atol),
            ("step_size", step_size),
            ("adjoint", adjoint),
            ("adjoint_mode", adjoint_mode),
            ("seminorm", seminorm),
            ("max_steps", max_steps),
        )
        if v is not _UNSET
    }
    if options is None:
        opt = ODEOptions(**given) if given else DEFAULTS
    elif not isinstance(options, ODEOptions):
        raise ValueError(
            f"options must be an ODEOptions, got {type(options).__name__}; pass solver options as "
            "ODEOptions(method=..., rtol=...) or as keywords"
        )
    elif any(getattr(options, k) != v for k, v in given.items()):
        opt = replace(options, **given)
    else:  # nothing changed (a model passes its own max_steps on every call): no new, re-checked options object
        opt = options
    tab = METHODS[opt.method]
    if not isinstance(y0, Tensor) or y0.dim() != 2:
        shape = tuple(y0.shape) if isinstance(y0, Tensor) else type(y0).__name__
        raise ValueError(f"y0 must be a tensor [B, D] (batch, channels), got {shape}; use y0[None] for one sample")
    if not y0.is_floating_point():
        raise ValueError(f"y0 must be a floating-point tensor, got {y0.dtype}")
    if not bool(torch.isfinite(y0).all()):  # always: a NaN/inf state from upstream is told apart from a solver failure
        raise ValueError("y0 contains NaN/inf: pass a finite initial state")
    if isinstance(first_step, Tensor):
        if first_step.shape != (y0.shape[0],) or (
            check_inputs and not bool(((first_step > 0) & torch.isfinite(first_step)).all())
        ):
            raise ValueError(
                f"first_step as a tensor must be [B] = [{y0.shape[0]}] with finite entries > 0, got "
                f"shape {tuple(first_step.shape)}; pass a number or stats.next_dt of a solve of this "
                "batch"
            )
    elif first_step is not None and (not isinstance(first_step, (int, float)) or not first_step > 0):
        raise ValueError(f"first_step must be a number > 0, got {first_step!r}")

    opts = SolverOptions.of(opt, first_step)
    if TWO_POINT_PATH and tab.adaptive and not opt.adjoint and isinstance(t, Tensor) and t.shape[-1] == 2:
        # one interval (a recurrent model's step from one observation to the next): the two-point path
        times = None if check_inputs else _interval_unchecked(y0, t, t_mask)
        if times is None:
            tq, sign = _normalise_time(y0, t, t_mask, check_inputs)
            times = tq[:, 0], tq[:, 1], sign, False
        tau0, tau1, sign, all_active = times
        y1, stats = solve_interval(_wrap(func, sign), tab, y0, tau0, tau1, opts, sign=sign, all_active=all_active)
        return Solution(torch.stack((y0, y1), 1), stats)

    tq, sign = _normalise_time(y0, t, t_mask, check_inputs)
    f = _wrap(func, sign)

    if opt.adjoint:
        if adjoint_params is None:
            if not isinstance(func, nn.Module):
                raise ValueError(
                    "adjoint=True with a plain function: pass adjoint_params (the tensors to differentiate)"
                )
            adjoint_params = list(func.parameters())
        params = tuple(p for p in adjoint_params if isinstance(p, Tensor) and p.requires_grad)
        ys, stats = odeint_adjoint(f, tab, y0, tq, sign, params, opts, mode=opt.adjoint_mode, seminorm=opt.seminorm)
        return Solution(ys, stats)

    ys, stats, _ = run_solver(f, tab, y0, tq, sign, opts)
    return Solution(ys, stats)

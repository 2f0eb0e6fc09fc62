"""One explicit Runge–Kutta step for a batch of samples, each with its own time and step size: the kernel every
solver of the package (adaptive, fixed-step, the adjoint's backward solve) advances with."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .dense import coef_tensor
from .tableaus import Tableau

Func = Callable[[Tensor, Tensor], Tensor]


def rk_step(func: Func, tab: Tableau, t: Tensor, y: Tensor, dt: Tensor, k0: Tensor):
    """One explicit RK step for every sample (own ``t``/``dt`` per sample).

    t, dt: [B]; y, k0: [B, D] (k0 = f(t, y)). Returns (y1, K, err): K [S, B, D] the stacked stages,
    err [B, D] the local error estimate (None for fixed-step methods).

    Stage inputs are ``y + dt·(a_i @ K[:i])``: one ``mm`` + one ``addcmul`` per stage whatever the number of
    earlier stages (the tableau rows are cached tensors); the stage times are one ``addcmul`` ([S, B]).
    Without a gradient graph the stages are written into one preallocated [S, B, D] block (one ``copy_`` per
    stage instead of a growing ``stack``); with one they are stacked (an in-place write into a block that an
    earlier ``mm`` saved for backward would break autograd).
    """
    B, D = y.shape
    dtc = dt.unsqueeze(-1)
    if tab.stages == 1:  # Euler: y + dt·k0, no stage stack or mm (a recurrent model's interval is one such step)
        return torch.addcmul(y, dtc, k0, value=tab.b[0]), k0.unsqueeze(0), None
    S = tab.stages
    rows = coef_tensor(tab, "a", y.dtype, y.device)
    # every stage's time in one addcmul, unbound once (a view per stage without an indexing op each)
    tc = torch.addcmul(t, coef_tensor(tab, "c", y.dtype, y.device), dt).unbind(0)
    graph = torch.is_grad_enabled() and (y.requires_grad or k0.requires_grad or dt.requires_grad)
    if graph:
        ks = [k0]
    else:  # the block, its [S, B·D] view for the mm and its per-stage views, each made once
        K = y.new_empty(S, B, D)
        Kv = K.view(S, B * D)
        Ks = K.unbind(0)
        Ks[0].copy_(k0)
    yi = y
    for i in range(1, S):
        if i == 1:
            yi = torch.addcmul(y, dtc, k0, value=tab.a[1][0])
        else:
            prev = torch.stack(ks).view(i, B * D) if graph else Kv[:i]
            yi = torch.addcmul(y, dtc, torch.mm(rows[i], prev).view(B, D))
        ki = func(tc[i], yi)
        if graph:
            ks.append(ki)
        else:
            Ks[i].copy_(ki)
    if graph:
        K = torch.stack(ks)
        Kv = K.view(S, B * D)
    if tab.fsal:
        y1 = yi  # the last row of a FSAL tableau is b: the last stage input is the new state
    else:
        b = coef_tensor(tab, "b", y.dtype, y.device)
        y1 = torch.addcmul(y, dtc, torch.mm(b, Kv).view(B, D))
    err = None
    if tab.e is not None:  # only the step controller reads it: no autograd graph for it
        with torch.no_grad():
            err = dtc * torch.mm(coef_tensor(tab, "e", y.dtype, y.device), Kv).view(B, D)
    return y1, K, err


__all__ = ["Func", "rk_step"]

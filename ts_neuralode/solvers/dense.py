"""Dense output: the stages of recorded steps turned into values at any time inside them, all outputs at once.

The tableau's interpolant (:attr:`Tableau.interp`, power × stage) maps the stacked stages of a step to
polynomial coefficients in θ = (t − t_start)/dt; :func:`interpolate` evaluates every query of every sample in
one pass (``searchsorted`` + one ``mm`` + Horner on gathered rows), so output times never shorten steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tableaus import Tableau


@dataclass
class Records:
    """Data of recorded steps, each tensor stacked along dim 1 (steps)."""

    t_start: Tensor  # [B, N]
    t_stop: Tensor  # [B, N]  (== t_start for a sample that did not advance in that iteration)
    dt: Tensor  # [B, N]
    y_start: Tensor  # [N, B, D]
    k: Tensor  # [S, N, B, D]  (stage-major: the dense output's coefficients are one mm away)


_COEF_CACHE: dict = {}
#: no-graph dense output: query rows per chunk × D (≈ 512 KiB of float32: the chunk and its gather buffer stay in L2)
CHUNK_ELEMS = 1 << 17


def coef_tensor(tab: Tableau, what: str, dtype: torch.dtype, device: torch.device):
    """The tableau's coefficients as small tensors, built once per (method, dtype, device).

    ``"a"``: list of stage rows ``[1, i]``; ``"b"``, ``"e"``: ``[1, S]``; ``"c"``: ``[S, 1]``; ``"interp"``: ``[P, S]``
    (power × stage).
    They feed one ``mm`` over the stacked stages instead of a chain of scalar adds (fewer ops per step).
    """
    key = (tab.name, what, dtype, device)
    out = _COEF_CACHE.get(key)
    if out is None:
        if what == "a":
            out = [torch.tensor([row[:i]], dtype=dtype, device=device) for i, row in enumerate(tab.a)]
        elif what in ("b", "e"):
            out = torch.tensor([getattr(tab, what)], dtype=dtype, device=device)
        elif what == "c":  # [S, 1]: the stage times t + c·dt of every sample in one addcmul
            out = torch.tensor(tab.c, dtype=dtype, device=device).unsqueeze(1)
        else:
            out = torch.tensor(tab.interp, dtype=dtype, device=device).t().contiguous()
        _COEF_CACHE[key] = out
    return out


def interpolate(tab: Tableau, rec: Records, tq: Tensor) -> Tensor:
    """Evaluate the dense output at query times ``tq [B, Tq]`` (each inside a recorded step) → [B, Tq, D].

    The stages of all N recorded steps become polynomial coefficients in one ``mm`` over the stage axis
    ([P, S] @ [S, N·B·D]); each query then gathers the P coefficient rows of its step (``index_select``
    on [N·B, D], never a [B, Tq, S, D] block) and sums them by Horner's rule in θ. Measured on W's shapes
    (B=256, Tq=49, N=3, dopri5, 1 thread): 0.56 ms against 1.07 ms for a one-hot ``bmm``, memory
    O(B·Tq·D) whatever N.
    """
    B, N = rec.t_stop.shape
    S, _, _, D = rec.k.shape
    Tq = tq.shape[1]
    # first recorded step of each sample that ends at or after the query: the step that covers it
    idx = torch.searchsorted(rec.t_stop, tq.contiguous(), side="left").clamp_(max=N - 1)
    ts = rec.t_start.gather(1, idx)
    dt = rec.dt.gather(1, idx)
    # dt == 0 only for a record in which the sample did not move; then tq == ts and θ = 0
    theta = ((tq - ts) / dt.clamp(min=torch.finfo(dt.dtype).tiny)).reshape(B * Tq, 1).to(rec.k.dtype)
    flat = (idx * B + torch.arange(B, device=tq.device).unsqueeze(1)).reshape(-1)  # row in [N·B]
    W = coef_tensor(tab, "interp", rec.k.dtype, rec.k.device)  # [P, S]
    P = W.shape[0]
    coef = torch.mm(W, rec.k.reshape(S, N * B * D)).view(P, N * B, D)
    y_start = rec.y_start.reshape(N * B, D)
    if torch.is_grad_enabled() and (coef.requires_grad or y_start.requires_grad):
        coef = coef * rec.dt.t().reshape(1, N * B, 1).to(coef.dtype)
        if N <= 32:
            # one-hot weights [B, Tq, N·(P+1)] and one bmm: its backward is one bmm, where the gathers'
            # backward would be P+1 index_adds and 2(P+1) products of [B·Tq, D] temporaries
            c = torch.cat([y_start.unsqueeze(0), coef], 0).view(P + 1, N, B, D)
            c = c.permute(2, 1, 0, 3).reshape(B, N * (P + 1), D)
            pw = theta.view(B, Tq, 1).pow(torch.arange(P + 1, device=tq.device, dtype=theta.dtype))
            onehot = torch.nn.functional.one_hot(idx, N).to(c.dtype)  # [B, Tq, N]
            return torch.bmm((onehot.unsqueeze(-1) * pw.unsqueeze(2)).reshape(B, Tq, N * (P + 1)), c)
        out = coef[P - 1].index_select(0, flat)
        for p in range(P - 2, -1, -1):
            out = torch.addcmul(coef[p].index_select(0, flat), theta, out)
        out = torch.addcmul(y_start.index_select(0, flat), theta, out)
    else:
        # no graph: Horner in place, in chunks of query rows whose output and one gather buffer stay in cache
        # (the whole [B·Tq, D] output is written once, not 2P+1 times); the step length multiplies the last
        # Horner factor (θ·dt, one per query) instead of every coefficient row
        thd = theta * dt.reshape(B * Tq, 1).to(theta.dtype)
        out = torch.empty(B * Tq, D, dtype=coef.dtype, device=coef.device)
        step = max(1, CHUNK_ELEMS // D)
        buf = torch.empty(min(step, B * Tq), D, dtype=coef.dtype, device=coef.device)
        for s in range(0, B * Tq, step):
            rows, th, o = flat[s : s + step], theta[s : s + step], out[s : s + step]
            b = buf[: rows.shape[0]]
            torch.index_select(coef[P - 1], 0, rows, out=o)
            for p in range(P - 2, -1, -1):
                o.mul_(th).add_(torch.index_select(coef[p], 0, rows, out=b))
            o.mul_(thd[s : s + step]).add_(torch.index_select(y_start, 0, rows, out=b))
    return out.view(B, Tq, D)

"""Known-future covariates as a control of the evolution: ``dh/dt = f(t, h, u(t))``.

``u`` is a :class:`~ts_neuralode.data.batch.CovariateBatch` (callable: ``u(t [B]) -> [B, C]``, interpolated
between each series' own covariate samples). A model sets it from the batch (``ForecastModel._grid``) and
passes it to every evolution call; an evolution built with ``control_dim = C > 0`` uses it:

* **ODE** (:class:`~ts_neuralode.models.evolution.ODEEvolution`): the vector field reads ``u`` at the solver's
  own stage times, so the solution is the true controlled ODE. A piecewise-constant column makes the field
  discontinuous, and a solver reads ``u`` only at its stage times: a pulse shorter than a step could fall between
  them and be ignored, and a step across a change would carry the later input backwards through its dense output.
  So the evolution stops at every change time (:func:`solve_piecewise`: one solve per constant piece, each piece's
  constant value held at both its ends; the flows restart there the same way). Fields: :class:`ControlledMLPField`
  (``MLP([h, u])``) and
  :class:`ControlledGRUField` (the GRU-ODE gates also read ``u``: ``z = σ(U_z h + W_z u)`` …).
* **Flow** (:func:`controlled_flow`): a flow ``F(Δt, x)`` is the solution map of an *autonomous* system, so a
  time-varying input cannot enter it exactly. Our equivalent: the flow is conditioned on ``u`` held constant —
  it acts on the state augmented with ``u`` (``x = [h, u]``, built with ``dim = H + C``; the first ``H`` outputs
  are the new ``h``) — and it is **restarted at every covariate knot** the evolution crosses (the state at a
  knot is carried into the next segment, which is conditioned on the new ``u``). Each segment uses ``u`` at
  its midpoint. Limits (README "Covariates"): exact in form only for piecewise-constant columns (one flow per
  constant piece, as an ODE with that constant input would be); linear columns and calendar features are held
  at each segment's midpoint value, so between knots a flow sees a constant ``u`` (a long horizon with no knot
  — calendar features only — is one segment); ``h ↦ F(t, [h, u])[:H]`` is not guaranteed invertible (the flow
  is invertible on the augmented state); restarts cost one flow call per knot crossed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ts_neuralode.models.nets import mlp


class ControlledMLPField(nn.Module):
    """``f(t, h, u) = MLP([h, u])`` (tanh by default)."""

    def __init__(
        self, dim: int, control_dim: int, hidden_dim: int = 64, num_layers: int = 2, activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.net = mlp(dim + control_dim, dim, hidden_dim, num_layers, activation)

    def forward(self, t: Tensor, y: Tensor, u: Tensor) -> Tensor:
        return self.net(torch.cat([y, u], dim=-1))


class ControlledGRUField(nn.Module):
    """GRU-ODE dynamics driven by ``u``: ``dh/dt = (1 − z) ⊙ (g − h)``, ``z = σ(U_z h + W_z u)``,
    ``r = σ(U_r h + W_r u)``, ``g = tanh(U_h (r ⊙ h) + W_h u)``."""

    def __init__(self, dim: int, control_dim: int) -> None:
        super().__init__()
        self.lin_zr = nn.Linear(dim, 2 * dim)
        self.lin_h = nn.Linear(dim, dim)
        self.lin_u = nn.Linear(control_dim, 3 * dim, bias=False)

    def forward(self, t: Tensor, h: Tensor, u: Tensor) -> Tensor:
        uz, ur, uh = self.lin_u(u).chunk(3, dim=-1)
        z, r = torch.sigmoid(self.lin_zr(h) + torch.cat([uz, ur], dim=-1)).chunk(2, dim=-1)
        g = torch.tanh(self.lin_h(r * h) + uh)
        return (1 - z) * (g - h)


def controlled_field(field: nn.Module, control) -> Callable:
    """The solver's ``func(t [B], y [B, H])`` of a controlled field and the rows' ``u``."""
    return lambda t, y: field(t, y, control(t.expand(y.shape[0]) if t.dim() == 0 else t))


def controlled_flow(flow: nn.Module, h0: Tensor, t: Tensor, control, dim: int) -> Tensor:
    """``h`` at times ``t`` ``[B, T]`` (padding already replaced by the last real time) from ``h0`` ``[..., B, H]``
    at ``t[:, 0]``, by ``flow`` on ``[h, u]`` restarted at the covariate knots in between (module docstring)."""
    B, T = t.shape
    fwd = bool((t[:, -1] >= t[:, 0]).all())
    d = 1.0 if fwd else -1.0
    tau, knots = d * t, d * control.knots  # along the direction of travel
    lo, hi = tau[:, 0], tau.max(1).values
    inside = (knots > lo.unsqueeze(1)) & (knots < hi.unsqueeze(1))  # [B, K]
    cols = torch.nonzero(inside.any(0)).flatten().tolist()
    if not fwd:
        cols = cols[::-1]

    def step(x: Tensor, start: Tensor, end: Tensor) -> Tensor:
        """``F(end − start, [x, u(mid)])[:H]``; start/end ``[B]`` or ``[B, T]`` (x ``[..., B, (T,) H]``)."""
        u = control((start + end) / 2)
        u = u.expand(*x.shape[:-1], u.shape[-1])
        return flow((end - start).unsqueeze(-1), torch.cat([x, u], dim=-1))[..., :dim]

    bounds, states = [t[:, 0]], [h0]
    for k in cols:
        active = inside[:, k]
        p = torch.where(active, control.knots[:, k], bounds[-1])
        x = step(states[-1], bounds[-1], p)
        states.append(torch.where(active.unsqueeze(-1), x, states[-1]))
        bounds.append(p)
    P = torch.stack(bounds, 1)  # [B, J]: nondecreasing along the direction of travel
    j = ((d * P).unsqueeze(1) <= tau.unsqueeze(2)).sum(-1).clamp_min(1) - 1  # [B, T]: last boundary at or before
    start = P.gather(1, j)
    H = torch.stack(states, -2)  # [..., B, J, H]
    x = H.gather(
        -2, j.unsqueeze(-1).expand(*H.shape[:-3], B, T, dim) if H.dim() > 3 else j.unsqueeze(-1).expand(B, T, dim)
    )
    return step(x, start, t)


def change_times(control, tau0: Tensor, tau1: Tensor, sign: Tensor) -> list[Tensor] | None:
    """Per row, the change times (model time) of ``control``'s piecewise-constant columns strictly inside the span
    from ``tau0`` to ``tau1`` (``τ = sign · t``, increasing), sorted along the direction of travel; None when the
    control has no piecewise-constant column or no row crosses a change."""
    held = held_columns(control)
    if held is None or not bool(held.any()):
        return None
    tau_k = sign.unsqueeze(1) * control.knots.to(tau0.dtype)  # [B, K]
    inside = (tau_k > tau0.unsqueeze(1)) & (tau_k < tau1.unsqueeze(1))
    if not bool(inside.any()):
        return None
    return [torch.unique(tau_k[b][inside[b]]) for b in range(tau_k.shape[0])]  # sorted ascending in τ


def held_columns(control) -> Tensor | None:
    """``[C_u]`` bool: the control channels that are piecewise constant (``constant`` columns; calendar features
    and ``linear`` columns are continuous)."""
    values = getattr(control, "values", None)
    if values is None or not values.shape[-1]:
        return None
    n_cal = control.dim - values.shape[-1]
    return torch.cat([~control.linear.to(torch.bool), torch.zeros(n_cal, dtype=torch.bool, device=values.device)])


class _HeldControl:
    """``control`` on one piece between change times: the piecewise-constant channels read at the piece's midpoint
    ``mid`` ``[B]`` (the constant value of that piece, also at its two ends, where ``control(t)`` itself would
    already read the next piece's value at a piece's far end), the others at ``t``."""

    def __init__(self, control, mid: Tensor, held: Tensor) -> None:
        self.control, self.held = control, held
        self.at_mid = control(mid)  # [B, C_u]

    def __call__(self, t: Tensor) -> Tensor:
        u = self.control(t)
        mid = self.at_mid if u.dim() == 2 else self.at_mid.unsqueeze(1).expand_as(u)
        return torch.where(self.held, mid, u)


def solve_piecewise(
    solve, h0: Tensor, t: Tensor, t_mask: Tensor | None, control, pieces: list[Tensor], sign: Tensor
) -> Tensor:
    """``h`` at times ``t`` ``[B, T]`` from ``h0`` ``[B, H]``, solving from one change time of the control's
    piecewise-constant channels to the next (``pieces``: per row, from :func:`change_times`): every change is where
    a solve ends and the next begins, so the solver never steps over a short pulse (it would read ``u`` only at its
    stage times) and no step straddles a change (whose dense output would carry the later input backwards in time).
    ``solve(h [B, H], grid [B, L], mask [B, L], control) -> [B, L, H]`` is one ODE solve; the query times of each
    row inside a piece are that solve's output times."""
    B, T = t.shape
    dev = t.device
    mask = torch.ones(B, T, dtype=torch.bool, device=dev) if t_mask is None else t_mask
    n_real = mask.sum(1)
    tau = sign.unsqueeze(1) * t  # increasing along each row's real points
    tau_end = tau.gather(1, (n_real - 1).unsqueeze(1)).squeeze(1)
    held = held_columns(control)
    out = h0.new_zeros(B, T, h0.shape[-1])
    out[:, 0] = h0
    h, start = h0, tau[:, 0].clone()
    tau_l, real_l = tau.tolist(), mask.tolist()
    start_l = start.tolist()
    for j in range(max(len(p) for p in pieces) + 1):
        ends = [float(p[j]) if j < len(p) else tau_end_b for p, tau_end_b in zip(pieces, tau_end.tolist(), strict=True)]
        rows: list[list] = []
        where: list[list] = []
        for b in range(B):
            s, e = start_l[b], ends[b]
            if not e > s:
                rows.append([s])
                where.append([])
                continue
            idx = [i for i in range(1, T) if real_l[b][i] and s < tau_l[b][i] < e]
            rows.append([s] + [tau_l[b][i] for i in idx] + [e])
            where.append(idx + [i for i in range(1, T) if real_l[b][i] and tau_l[b][i] == e])
        L = max(len(r) for r in rows)
        grid = torch.tensor([r + [r[-1]] * (L - len(r)) for r in rows], dtype=t.dtype, device=dev)
        gmask = torch.tensor([[k < len(r) for k in range(L)] for r in rows], device=dev)
        mid = torch.tensor([(r[0] + r[-1]) / 2 for r in rows], dtype=t.dtype, device=dev)
        active = torch.tensor([len(r) > 1 for r in rows], device=dev)
        if not bool(active.any()):
            break
        seg = control if held is None else _HeldControl(control, sign * mid, held)
        ys = solve(h, sign.unsqueeze(1) * grid, gmask if L > 1 else None, seg)  # [B, L, H]
        for b in range(B):
            n = len(rows[b])
            if n > 1:
                inner = where[b]
                k = list(range(1, n - 1)) + [n - 1] * (len(inner) - (n - 2))
                if inner:
                    out[b, inner] = ys[b, k]
        last = (torch.tensor([len(r) for r in rows], device=dev) - 1).clamp_min(0)
        h = torch.where(active.unsqueeze(1), ys[torch.arange(B, device=dev), last], h)
        start_l = [e if len(r) > 1 else s for r, e, s in zip(rows, ends, start_l, strict=True)]
    # padded query times repeat the row's last real output (the solver's convention)
    pad = ~mask
    if bool(pad.any()):
        last_real = out[torch.arange(B, device=dev), n_real - 1]
        out = torch.where(pad.unsqueeze(-1), last_real.unsqueeze(1).expand_as(out), out)
    return out


__all__ = [
    "ControlledMLPField",
    "ControlledGRUField",
    "controlled_field",
    "controlled_flow",
    "change_times",
    "solve_piecewise",
]

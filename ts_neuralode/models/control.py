"""Known-future covariates as a control of the evolution: ``dh/dt = f(t, h, u(t))``.

``u`` is a :class:`~ts_neuralode.data.covariates.CovariateBatch` (callable: ``u(t [B]) -> [B, C]``, interpolated
between each series' own covariate samples). A model sets it from the batch (``ForecastModel._grid``) and
passes it to every evolution call; an evolution built with ``control_dim = C > 0`` uses it:

* **ODE** (:class:`~ts_neuralode.models.evolution.ODEEvolution`): the vector field reads ``u`` at the solver's
  own stage times, so the solution is the true controlled ODE (the adaptive solver sees ``u``'s kinks and steps
  through them; a piecewise constant ``u`` makes the field discontinuous, which an adaptive method handles by
  shrinking the step there). Fields: :class:`ControlledMLPField` (``MLP([h, u])``) and
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

import torch
from torch import Tensor, nn

from ts_neuralode.models.nets import mlp


class ControlledMLPField(nn.Module):
    """``f(t, h, u) = MLP([h, u])`` (tanh by default)."""

    def __init__(self, dim: int, control_dim: int, hidden_dim: int = 64, num_layers: int = 2,
                 activation: str = "tanh") -> None:
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


def controlled_field(field: nn.Module, control) -> "callable":
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
    x = H.gather(-2, j.unsqueeze(-1).expand(*H.shape[:-3], B, T, dim) if H.dim() > 3 else
                 j.unsqueeze(-1).expand(B, T, dim))
    return step(x, start, t)


__all__ = ["ControlledMLPField", "ControlledGRUField", "controlled_field", "controlled_flow"]

"""The evolution interface: the continuous-time part of every model, ODE or flow, behind one call.

```python
evo = make_evolution("ode", 20, method="dopri5")          # or "resnet_flow", "gru_flow", "coupling_flow"
out = evo(h0, t)                                           # h0 [B, H]; t [T] or [B, T] -> out [B, T, H]
out = evo(z0, t)                                           # z0 [S, B, H] (S samples share t) -> [S, B, T, H]
out = evo(h0, t, control=u, max_steps=500, carry=carry)    # a call's covariates, step budget, StepCarry
evo.last_nfe                                               # mean function evaluations (0 for flows)
```

``t[..., 0]`` is the time of ``h0`` and ``out[:, 0] == h0``. Times may decrease (backwards evolution, as in
the ODE-RNN encoder). With a per-sample grid ``t [B, T]`` an optional ``t_mask [B, T]`` (True = real point,
padding only after the real points of a row) marks padding; outputs at padded positions repeat the
row's last real output (the solver's convention, kept by the flows too). ``h0`` may carry leading sample
dimensions ``[..., B, H]`` that share the times of their row (the latent ODE's posterior samples): the ODE
folds them into its batch; a flow broadcasts over them, so its time embeddings are computed once per
time row instead of once per sample (3× less embedding work with 3 IWAE samples).

* :class:`ODEEvolution` integrates a vector field with :func:`ts_neuralode.solvers.odeint` (any method,
  tolerances, fixed step, adjoint); with a piecewise-constant control it solves piece by piece, stopping at every
  change time (:func:`ts_neuralode.models.control.solve_piecewise`). Fields: ``"mlp"`` (autonomous MLP with tanh,
  ``hidden_dim`` ×
  ``num_layers``) or ``"gru"`` (GRU-ODE-Bayes: ``dh/dt = (1 − z) ⊙ (g − h)``, ``z = σ(U_z h)``, ``r = σ(U_r h)``,
  ``g = tanh(U_h (r ⊙ h))`` — no input between observations), or any module ``field(t [B], y [B, H])``.
* :class:`FlowEvolution` evaluates a neural flow in closed form, ``out[:, i] = F(t_i − t_0, h0)``, for all
  times in ONE batched call.

Both are built from one :class:`~ts_neuralode.models.evolution_config.EvolutionConfig` (each uses the options
that apply to it), so switching ODE ↔ flow is its one option ``kind``: ``EvolutionConfig(kind).build(dim)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ts_neuralode.errors import ConfigError
from ts_neuralode.models.control import (
    ControlledGRUField,
    ControlledMLPField,
    change_times,
    controlled_field,
    controlled_flow,
    solve_piecewise,
)
from ts_neuralode.models.evolution_config import EVOLUTION_CLASSES, EVOLUTION_KINDS, VECTOR_FIELDS, EvolutionConfig
from ts_neuralode.models.flows import Flow, make_flow
from ts_neuralode.models.nets import check_positive_int, mlp
from ts_neuralode.solvers import ADAPTIVE_METHODS, SolverStats, odeint, odeint_jumps

#: what an evolution built outside a model uses for the config's "the model's default" (None) options
BUILD_DEFAULTS = {"hidden_dim": 64, "vector_field": "mlp"}


class StepCarry:
    """The per-sample step an adaptive ODE solve of a recurrent pass ended with, for the pass's next solve to start
    from (``evolution(h, t, carry=carry)``): the pass's consecutive observation intervals are one trajectory cut
    at the updates (no initial-step search, no step regrown from scratch, inputs checked once by the model). One per
    pass, made by the pass; the evolution keeps none, so two passes on one model at once each carry their own. No
    effect on flows (nothing to carry) or on a solve piece by piece under a changing control."""

    __slots__ = ("next_dt",)

    def __init__(self) -> None:
        self.next_dt: Tensor | None = None  # [B] the step the last solve ended with (None: none yet)


class Evolution(nn.Module):
    """Base class. ``forward(h0 [..., B, H], t [T] | [B, T], t_mask [B, T] | None, control=None, *, max_steps=None,
    carry=None) -> [..., B, T, H]``: the call's covariate ``control`` (:mod:`ts_neuralode.models.control`), step
    budget ``max_steps`` of an ODE solve (None: ``config.max_steps``) and recurrent pass's :class:`StepCarry` are
    arguments; nothing of a call is kept on the module but its statistics (``last_nfe``, ``last_stats``)."""

    def __init__(self, dim: int, control_dim: int = 0) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.control_dim = int(control_dim)
        self.last_nfe: float = 0.0  # function evaluations of the last forward, mean over samples

    def _check(self, h0: Tensor, t: Tensor, t_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if h0.dim() < 2 or h0.shape[-1] != self.dim:
            raise ValueError(
                f"evolution state h0 must be [B, {self.dim}] (or [..., B, {self.dim}]), got {tuple(h0.shape)}"
            )
        if not torch.is_tensor(t) or t.dim() not in (1, 2) or t.shape[-1] < 1:
            raise ValueError(f"evolution times must be a [T] or [B, T] tensor, got {getattr(t, 'shape', t)}")
        if t.dim() == 2 and t.shape[0] != h0.shape[-2]:
            raise ValueError(f"evolution times [B, T] have B={t.shape[0]} but h0 has B={h0.shape[-2]}")
        t = t.to(dtype=h0.dtype, device=h0.device)
        if t_mask is not None:
            shape = (h0.shape[-2], t.shape[-1])
            if tuple(t_mask.shape) != shape:
                raise ValueError(f"evolution t_mask must be [B, T] = {list(shape)}, got {tuple(t_mask.shape)}")
            t_mask = t_mask.to(device=h0.device, dtype=torch.bool)
        return t, t_mask

    def forward(
        self,
        h0: Tensor,
        t: Tensor,
        t_mask: Tensor | None = None,
        control=None,
        *,
        max_steps: int | None = None,
        carry: StepCarry | None = None,
    ) -> Tensor:
        """Checks the call (shapes, times, control) once for every kind, then :meth:`_evolve` does the kind's work."""
        t, t_mask = self._check(h0, t, t_mask)
        return self._evolve(h0, t, t_mask, self._control(control), max_steps, carry)

    def _evolve(
        self, h0: Tensor, t: Tensor, t_mask: Tensor | None, control, max_steps: int | None, carry: StepCarry | None
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _control(self, control):
        """The control ``u`` an evolution built with ``control_dim`` needs (:mod:`ts_neuralode.models.control`)."""
        if self.control_dim and control is None:
            raise ValueError(
                f"this evolution was built for a control of {self.control_dim} channels (known-future "
                "covariates) but none was given"
            )
        if control is not None and control.dim != self.control_dim:
            raise ValueError(f"control has {control.dim} channels but the evolution was built for {self.control_dim}")
        return control if self.control_dim else None


# --------------------------------------------------------------------------------------------- ODE


class MLPField(nn.Module):
    """Autonomous vector field ``f(t, y) = MLP(y)`` (``t`` [B] ignored), tanh by default."""

    def __init__(self, dim: int, hidden_dim: int = 64, num_layers: int = 2, activation: str = "tanh") -> None:
        super().__init__()
        self.net = mlp(dim, dim, hidden_dim, num_layers, activation)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.net(y)


class GRUODEField(nn.Module):
    """GRU-ODE-Bayes field between observations: ``dh/dt = (1 − z) ⊙ (g − h)`` with ``z = σ(U_z h)``,
    ``r = σ(U_r h)``, ``g = tanh(U_h (r ⊙ h))`` (biases included; ``t`` [B] ignored)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin_zr = nn.Linear(dim, 2 * dim)  # U_z and U_r in one matmul
        self.lin_h = nn.Linear(dim, dim)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        z, r = torch.sigmoid(self.lin_zr(h)).chunk(2, dim=-1)
        g = torch.tanh(self.lin_h(r * h))
        return (1 - z) * (g - h)


def make_vector_field(
    vector_field: str, dim: int, *, hidden_dim: int = 64, num_layers: int = 2, activation: str = "tanh"
) -> nn.Module:
    if vector_field == "mlp":
        return MLPField(dim, hidden_dim, num_layers, activation)
    if vector_field == "gru":
        return GRUODEField(dim)
    raise ConfigError(f"vector_field={vector_field!r} is not supported; choose one of {', '.join(VECTOR_FIELDS)}")


def make_controlled_field(config: EvolutionConfig, dim: int, control_dim: int) -> nn.Module:
    """The config's field (``mlp`` or ``gru``) reading a control ``u`` of ``control_dim`` channels."""
    if config.vector_field == "gru":
        return ControlledGRUField(dim, control_dim)
    return ControlledMLPField(dim, control_dim, config.hidden_dim, config.num_layers, config.activation)


class ODEEvolution(Evolution):
    """Vector field integrated by :func:`ts_neuralode.solvers.odeint`.

    Args:
        dim: state size H.
        config: the :class:`EvolutionConfig` (its solver options and, for the ``"mlp"``/``"gru"`` field,
            ``vector_field``, ``hidden_dim``, ``num_layers``, ``activation``; flow options are unused).
        field: an ``nn.Module`` ``field(t [B], y [B, H]) -> [B, H]`` instead of the config's field.

    After a forward, ``last_nfe`` is the mean number of field evaluations per sample and ``last_stats``
    the solver's per-sample :class:`SolverStats`.
    """

    def __init__(
        self, dim: int, config: EvolutionConfig | None = None, field: nn.Module | None = None, control_dim: int = 0
    ) -> None:
        super().__init__(dim, control_dim)
        self.config = config = (config or EvolutionConfig()).resolve(**BUILD_DEFAULTS)
        if field is None and control_dim:
            field = make_controlled_field(config, dim, control_dim)
        if field is None:
            field = make_vector_field(
                config.vector_field,
                dim,
                hidden_dim=config.hidden_dim,
                num_layers=config.num_layers,
                activation=config.activation,
            )
        self.field = field
        self.last_stats: SolverStats | None = None
        self._solver_options = (config, config.solver_options())  # (the config it was built from, options)

    def _evolve(
        self, h0: Tensor, t: Tensor, t_mask: Tensor | None, control, max_steps: int | None, carry: StepCarry | None
    ) -> Tensor:
        if h0.dim() > 2:  # leading sample dims: one solve over all of them, each row's grid repeated
            lead, (B, H) = h0.shape[:-2], h0.shape[-2:]
            n = math.prod(lead)
            out = self.forward(
                h0.reshape(n * B, H),
                t if t.dim() == 1 else t.repeat(n, 1),
                None if t_mask is None else t_mask.repeat(n, 1),
                None if control is None else control.repeat(n),
                max_steps=max_steps,
                carry=carry,
            )
            return out.reshape(*lead, B, out.shape[-2], H)
        if t.shape[-1] == 1:  # nothing to integrate
            self.last_nfe, self.last_stats = 0.0, None
            return h0.unsqueeze(1)
        c = self.config
        if self._solver_options[0] is not c:  # built once per config: a recurrent pass solves per interval
            self._solver_options = (c, c.solver_options())
        steps = c.max_steps if max_steps is None else max_steps
        if control is not None:
            pieced = self._solve_piecewise(h0, t, t_mask, control, steps)
            if pieced is not None:
                return pieced
        func = self.field if control is None else controlled_field(self.field, control)
        last = None if carry is None else carry.next_dt
        first = last if last is not None and last.shape[0] == h0.shape[0] else None
        sol = odeint(
            func,
            h0,
            t,
            self._solver_options[1],
            t_mask=t_mask,
            first_step=first,
            max_steps=steps,
            adjoint_params=list(self.field.parameters()) if c.adjoint else None,
            check_inputs=carry is None,  # a recurrent pass steps through its grid, checked once by the model
        )
        if carry is not None:
            carry.next_dt = sol.stats.next_dt
        self.last_stats = sol.stats
        self.last_nfe = float(sol.stats.n_f_evals.float().mean().item())
        return sol.ys

    def solve_jumps(
        self, h0: Tensor, t: Tensor, t_mask: Tensor | None, jump_at: Tensor, jump, *, control=None, max_steps=None
    ) -> tuple[Tensor, Tensor] | None:
        """One adaptive solve through the grid ``t [B, N]`` with the state jumping by ``jump`` where ``jump_at``
        (:func:`ts_neuralode.solvers.odeint_jumps`): ``(states before the jumps [B, N, H], final state [B, H])``, or
        None where this evolution solves piece by piece (a fixed-step method, the adjoint, a control): the caller
        then solves interval by interval. The grid was checked by the model (no value checks here)."""
        c = self.config
        if control is not None or c.adjoint or c.method not in ADAPTIVE_METHODS or h0.dim() != 2:
            return None
        if self._solver_options[0] is not c:
            self._solver_options = (c, c.solver_options())
        sol = odeint_jumps(
            self.field,
            h0,
            t.to(dtype=h0.dtype, device=h0.device),
            jump_at,
            jump,
            self._solver_options[1],
            t_mask=t_mask,
            max_steps=c.max_steps if max_steps is None else max_steps,
            check_inputs=False,
        )
        self.last_stats = sol.stats
        self.last_nfe = float(sol.stats.n_f_evals.float().mean().item())
        return sol.ys, sol.y_end

    def _solve_piecewise(self, h0: Tensor, t: Tensor, t_mask: Tensor | None, control, max_steps: int) -> Tensor | None:
        """With a piecewise-constant control that changes inside the span: one solve per constant piece
        (:func:`ts_neuralode.models.control.solve_piecewise`, each allowed ``max_steps``), so every change time is
        a stop of the solver; None when nothing changes inside the span (the one-solve path)."""
        B = h0.shape[0]
        tt = t if t.dim() == 2 else t.unsqueeze(0).expand(B, -1)
        n_real = tt.shape[1] if t_mask is None else t_mask.long().sum(1)
        last = tt[:, -1] if t_mask is None else tt.gather(1, (n_real - 1).unsqueeze(1)).squeeze(1)
        sign = torch.where(last >= tt[:, 0], torch.ones_like(last), -torch.ones_like(last))
        pieces = change_times(control, sign * tt[:, 0], sign * last, sign)
        if pieces is None:
            return None
        c, nfe = self.config, []

        def solve(h: Tensor, grid: Tensor, mask: Tensor | None, piece_control) -> Tensor:
            sol = odeint(
                controlled_field(self.field, piece_control),
                h,
                grid,
                self._solver_options[1],
                t_mask=mask,
                max_steps=max_steps,
                adjoint_params=list(self.field.parameters()) if c.adjoint else None,
            )
            nfe.append(sol.stats.n_f_evals.float())
            self.last_stats = sol.stats
            return sol.ys

        ys = solve_piecewise(solve, h0, tt, t_mask, control, pieces, sign)
        self.last_nfe = float(torch.stack(nfe).sum(0).mean().item())
        return ys


# -------------------------------------------------------------------------------------------- flow


class FlowEvolution(Evolution):
    """Closed-form evolution ``out[:, i] = F(t_i − t_0, h0)`` by a neural flow (no solver, ``last_nfe = 0``).

    Args:
        dim: state size H.
        config: the :class:`EvolutionConfig` (``kind`` a flow; ``flow_layers``, ``hidden_dim``, ``num_layers``,
            ``activation``, ``time_embedding``, ``time_embedding_features``, ``time_input_features``, ``coeff``: see
            :func:`ts_neuralode.models.flows.make_flow`; solver options are unused).
        flow: a ready :class:`Flow` (overrides the config's flow options).
    """

    def __init__(
        self, dim: int, config: EvolutionConfig | None = None, flow: Flow | None = None, control_dim: int = 0
    ) -> None:
        super().__init__(dim, control_dim)
        self.config = config = (config or EvolutionConfig(kind="resnet_flow")).resolve(**BUILD_DEFAULTS)
        if flow is None:  # with a control the flow acts on [h, u] (ts_neuralode.models.control)
            flow = make_flow(
                config.kind,
                dim + self.control_dim,
                flow_layers=config.flow_layers,
                hidden_dim=config.hidden_dim,
                num_layers=config.num_layers,
                activation=config.activation,
                time_embedding=config.time_embedding,
                time_embedding_features=config.time_embedding_features,
                coeff=config.coeff,
                time_input_features=config.time_input_features,
                rotation_pairs=config.rotation_pairs,
            )
        elif flow.dim != dim + self.control_dim:
            raise ConfigError(f"flow has dim={flow.dim} but the evolution was built for dim={dim + self.control_dim}")
        self.kind = config.kind
        self.flow = flow

    def _evolve(
        self, h0: Tensor, t: Tensor, t_mask: Tensor | None, control, max_steps: int | None, carry: StepCarry | None
    ) -> Tensor:
        """``max_steps`` and ``carry`` are accepted for the common interface; a flow has no solver."""
        B, T = h0.shape[-2], t.shape[-1]
        if t.dim() == 1:
            t = t.unsqueeze(0)  # [1, T], broadcast over the batch below
        if t_mask is not None:
            # padded times -> the row's last real time, so padding repeats the last real output
            t = t.expand(B, T)
            last = (t_mask.long().sum(dim=1).clamp(min=1) - 1).unsqueeze(1)  # [B, 1]
            t = torch.where(t_mask, t, t.gather(1, last))
        self.last_nfe = 0.0
        if T == 1:
            return h0.unsqueeze(-2)
        if control is not None:
            return controlled_flow(self.flow, h0, t.expand(B, T), control, self.dim)
        # F(0, h0) = h0 exactly, so index 0 is h0 itself and only the T - 1 later times are computed
        # (half the work for the two-point calls of recurrent encoders). A shared grid stays [1, T-1, 1]
        # and leading sample dims are broadcast: time embeddings are computed once per time row.
        dt = (t[:, 1:] - t[:, :1]).unsqueeze(-1)  # [B or 1, T-1, 1]
        x = h0.unsqueeze(-2).expand(*h0.shape[:-1], T - 1, self.dim)
        return torch.cat([h0.unsqueeze(-2), self.flow(dt, x)], dim=-2)

    def inverse(self, y: Tensor, t: Tensor, t0: Tensor | float = 0.0, **kwargs) -> Tensor:
        """Recover ``h0`` from states ``y [B, T, H]`` at times ``t`` (``[T]``/``[B, T]``) evolved from ``t0``."""
        if self.control_dim:
            raise ConfigError(
                "inverse is not defined for a flow driven by covariates (it is invertible on [h, u] "
                "only, piece by piece); invert the flow itself: evolution.flow.inverse"
            )
        if not torch.is_tensor(t0):
            t0 = torch.tensor(float(t0))
        t0 = t0.to(y)
        dt = t.to(y) - (t0.unsqueeze(-1) if t0.dim() == 1 else t0)
        return self.flow.inverse(dt.unsqueeze(-1), y, **kwargs)


# ---------------------------------------------------------------------------------------- factory


def make_evolution(kind: str, dim: int, **options) -> Evolution:
    """``EvolutionConfig(kind, **options).build(dim)``: ``kind`` ∈ {"ode", "resnet_flow", "gru_flow",
    "coupling_flow"}, options as the :class:`EvolutionConfig` fields (validated whatever the kind)."""
    check_positive_int(dim, "dim")
    return EvolutionConfig(kind=kind, **options).build(dim)


EVOLUTION_CLASSES.update(ode=ODEEvolution, flow=FlowEvolution)  # what EvolutionConfig.build makes


__all__ = [
    "Evolution",
    "StepCarry",
    "ODEEvolution",
    "FlowEvolution",
    "MLPField",
    "GRUODEField",
    "make_vector_field",
    "make_evolution",
    "EvolutionConfig",
    "EVOLUTION_KINDS",
    "VECTOR_FIELDS",
]

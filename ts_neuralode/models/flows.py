"""Neural flows (Biloš et al. 2021): closed-form solution curves ``F(t, x)`` with ``F(0, x) = x``.

Every flow is invertible in ``x`` for fixed ``t`` (under the conditions stated per flow) and batched:
``x`` is ``[..., D]`` (e.g. ``[B, T, D]`` or ``[B, D]``) and ``t`` is ``[..., 1]`` broadcastable to it (``[B, T, 1]``,
``[T, 1]``; a ``t`` without the trailing 1, i.e. ``x.shape[:-1]`` or ``[T]`` against ``[B, T, D]``, is accepted
too). A whole trajectory at T times is therefore ONE call — no loop over time.

Layers
------
* :class:`ResNetFlowLayer` — ``F(t, x) = x + φ(t) ⊙ g(t, x)``, ``g`` an MLP on ``[x, t]`` whose every linear layer
  is spectrally normalised to ``coeff`` (0.9) and whose activations are 1-Lipschitz, so
  ``Lip_x(g) <= coeff^(num_layers+1) < 1`` globally. Invertible wherever ``|φ(t)| <= 1``.
* :class:`GRUFlowLayer` — ``F(t, h) = h + φ(t) ⊙ z ⊙ (c − h)`` with ``z = 2/5·σ(W_z[h, t])``,
  ``r = 4/5·σ(W_r[h, t])``, ``c = tanh(W_c[r ⊙ h, t])``, the three maps spectrally normalised. The theorem of
  the paper gives ``Lip_h(z ⊙ (c − h)) < 1`` for hidden states in ``(−1, 1)^D`` (the GRU regime); then it is
  invertible wherever ``|φ(t)| <= 1``. For ``φ in [0, 1]`` the map keeps ``(−1, 1)^D`` invariant (convex
  combination of ``h`` and ``c``).
* :class:`CouplingFlowLayer` — affine coupling: ``y_A = x_A ⊙ exp(u(t, x_B) ⊙ φ_u(t)) + v(t, x_B) ⊙ φ_v(t)``,
  ``y_B = x_B``; the split alternates between layers (even / odd channels); with one channel the networks
  see only ``t``. Always invertible, closed-form inverse.

Residual layers (ResNet, GRU) are inverted by the fixed-point iteration ``x ← y − φ(t) ⊙ g(t, x)``, a
contraction with rate ``|φ|·Lip(g) < 1``. Invertibility of the ResNet and GRU flows needs ``|φ| <= 1``: use a
bounded embedding (``tanh`` or ``fourier_bounded``); with an unbounded one (``linear``, ``log``, ``fourier``)
the forward map is still defined and ``F(0, x) = x`` still holds, but invertibility is only guaranteed
where ``|φ(t)| < 1 / Lip(g)`` (see :attr:`Flow.guaranteed_invertible`).

Defaults. Every flow option's default (time embedding, its features, ``coeff``, ``flow_layers``, ``num_layers``,
``activation``) is :class:`~ts_neuralode.models.evolution_config.EvolutionConfig`'s, declared there once. The
time embedding defaults to the unbounded ``fourier``: measured (results/flows_periodic.md), ``fourier_bounded``
fits sinusoids 10–100× worse (its |φ| <= 1/2 caps how far a layer can move the state), at the price of
invertibility being guaranteed only where ``|φ(t)| < 1 / Lip(g)``; ask for ``fourier_bounded`` or ``tanh``
where the inverse must exist everywhere.

Stacks
------
:class:`ResNetFlow`, :class:`GRUFlow`, :class:`CouplingFlow` compose ``flow_layers`` layers,
``F = F_L ∘ … ∘ F_1`` (each layer with its own time embedding); the inverse runs through the stack backwards.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ts_neuralode.core.signatures import keyword_options
from ts_neuralode.errors import ConfigError, check_choice
from ts_neuralode.models.evolution_config import EvolutionConfig
from ts_neuralode.models.nets import SpectralNormLinear, check_positive_int, fast_tanh, make_activation, mlp
from ts_neuralode.models.rotation_flow import RotationFlowLayer
from ts_neuralode.models.time_embedding import make_time_embedding

#: the flow options' defaults are declared once, as the fields of :class:`EvolutionConfig` (measured choices:
#: results/flows_periodic.md); the constructors below read them from there
_D = EvolutionConfig


def broadcast_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a ``[..., 1]`` tensor in ``x``'s dtype/device whose leading shape broadcasts to
    ``x.shape[:-1]`` (see the module docstring). It is NOT expanded: a time grid shared by the batch
    (``[1, T, 1]`` against ``[B, T, D]``) stays small, so time embeddings are computed once per time, not
    once per sample; :func:`expand_time` materialises it where a network needs ``[x, t]``."""
    if not torch.is_tensor(t):
        t = torch.tensor(float(t))
    t = t.to(dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.reshape(1)
    elif t.shape == x.shape[:-1] or t.shape[-1] != 1:
        t = t.unsqueeze(-1)  # [B, T] / [T] / [B] without the trailing 1
    try:
        ok = torch.broadcast_shapes(t.shape[:-1], x.shape[:-1]) == x.shape[:-1]
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"flow time of shape {tuple(t.shape)} does not broadcast to the state {tuple(x.shape)}; "
            "pass t as [..., 1] matching x [..., D] (e.g. [B, T, 1] for [B, T, D])"
        )
    return t


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """``t`` (from :func:`broadcast_time`) expanded to ``[*x.shape[:-1], 1]``."""
    return t.expand(*x.shape[:-1], 1)


class TimeInput(nn.Module):
    """An unconstrained path from ``t`` into a residual flow's network: ``W [sin(a t), cos(a t)]`` with ``K``
    trainable angular frequencies ``a`` (log-uniform over [0.5, 8] radians per time unit at initialisation) and
    an ordinary (not spectrally normalised) linear map ``W`` to ``out_dim`` pre-activations. It adds nothing to
    ``Lip_x`` of the network, so the flow's invertibility is what it was; it lifts the bound ``|∂g/∂t| < coeff^L``
    that a spectrally normalised input layer puts on the time dependence (see ``time_input_features`` in
    :class:`~ts_neuralode.models.evolution_config.EvolutionConfig`)."""

    def __init__(self, num_features: int, out_dim: int) -> None:
        super().__init__()
        k = check_positive_int(num_features, "time_input_features")
        self.freq = nn.Parameter(torch.empty(k).uniform_(math.log(0.5), math.log(8.0)).exp())
        self.linear = nn.Linear(2 * k, out_dim, bias=False)

    def forward(self, t: Tensor) -> Tensor:
        a = t * self.freq  # [..., 1] * [K]
        return self.linear(torch.cat([torch.sin(a), torch.cos(a)], dim=-1))


class Flow(nn.Module):
    """Base class: ``forward(t, x) -> y`` and ``inverse(t, y) -> x``, both ``[..., D]``."""

    dim: int

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, t: Tensor | float, y: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def guaranteed_invertible(self) -> bool:
        """True when the construction guarantees invertibility for every ``t`` (see module docstring)."""
        return True


class ResidualFlowLayer(Flow):
    """``F(t, x) = x + φ(t) ⊙ g(t, x)`` with ``Lip_x(g) < 1``; subclasses define :meth:`residual` (``g``) and
    ``build(dim, spectral, **net_options) -> width``, which makes its networks (see ``__init__``)."""

    build: Callable[..., int]

    def __init__(
        self,
        dim: int,
        *,
        time_embedding: str = _D.time_embedding,
        time_embedding_features: int = _D.time_embedding_features,
        time_input_features: int = _D.time_input_features,
        coeff: float = _D.coeff,
        n_power_iterations: int = 3,
        **net_options: Any,
    ) -> None:
        """The options every residual layer takes; ``net_options`` (a subclass's own) go to its :meth:`build`, which
        makes ``g``'s networks (spectrally normalised with ``coeff`` and ``n_power_iterations``) and returns the
        width of the pre-activations a :class:`TimeInput` of ``time_input_features`` features adds to."""
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.embedding = make_time_embedding(time_embedding, dim, num_features=time_embedding_features)
        k = check_positive_int(time_input_features, "time_input_features", minimum=0)
        width = self.build(dim, {"coeff": coeff, "n_power_iterations": n_power_iterations}, **net_options)
        self.time_input = TimeInput(k, width) if k else None

    def residual(self, t: Tensor, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = broadcast_time(t, x)
        return x + self.embedding(t) * self.residual(t, x)

    def inverse(self, t: Tensor | float, y: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
        """Fixed-point iteration ``x ← y − φ(t) ⊙ g(t, x)`` from ``x = y`` until the largest change is
        ``<= tol · (1 + max|y|)`` (at most ``iters`` iterations; a RuntimeWarning if it did not converge). The
        iterations run without autograd; one final differentiable step gives gradients of a first-order
        approximation."""
        t = broadcast_time(t, y)
        phi = self.embedding(t)
        x, delta = y, math.inf
        with torch.no_grad():
            scale = y.abs().max().item() if y.numel() else 0.0
            converged = False
            for _ in range(iters):
                x_new = y - phi * self.residual(t, x)
                delta = (x_new - x).abs().max().item() if x.numel() else 0.0
                x = x_new
                if delta <= tol * (1.0 + scale):
                    converged = True
                    break
        if not converged:
            warnings.warn(
                f"{type(self).__name__}.inverse did not converge to tol={tol} in {iters} iterations "
                f"(last change {delta:.3g}); is |φ(t)| <= 1 (bounded time embedding) and the state in range?",
                RuntimeWarning,
                stacklevel=2,
            )
        return y - phi * self.residual(t, x.detach())

    @property
    def guaranteed_invertible(self) -> bool:
        return self.embedding.bound <= 1.0


class ResNetFlowLayer(ResidualFlowLayer):
    """ResNet flow layer; ``g`` = spectral-normalised MLP ``[x, t] -> hidden_dim × num_layers -> D`` (the other
    options: :class:`ResidualFlowLayer`'s)."""

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int = 64,
        num_layers: int = _D.num_layers,
        activation: str = _D.activation,
        **residual_options: Any,
    ) -> None:
        super().__init__(dim, hidden_dim=hidden_dim, num_layers=num_layers, activation=activation, **residual_options)

    def build(self, dim: int, spectral: dict[str, Any], *, hidden_dim: int, num_layers: int, activation: str) -> int:
        self.net = mlp(
            dim + 1, dim, check_positive_int(hidden_dim, "hidden_dim"), num_layers, activation, spectral=spectral
        )
        # added to the first layer's pre-activations (hidden_dim wide; dim when the net is one linear map)
        return self.net[0].out_features

    def residual(self, t: Tensor, x: Tensor) -> Tensor:
        inp = torch.cat([x, expand_time(t, x)], dim=-1)
        if self.time_input is None:
            return self.net(inp)
        h = self.net[0](inp) + self.time_input(t)
        for layer in self.net[1:]:
            h = layer(h)
        return h


class GRUFlowLayer(ResidualFlowLayer):
    """GRU flow layer (see the module docstring); gates act on ``[h, t]`` (options: :class:`ResidualFlowLayer`'s)."""

    def build(self, dim: int, spectral: dict[str, Any]) -> int:
        self.lin_z = SpectralNormLinear(dim + 1, dim, **spectral)
        self.lin_r = SpectralNormLinear(dim + 1, dim, **spectral)
        self.lin_c = SpectralNormLinear(dim + 1, dim, **spectral)
        return 3 * dim  # one unconstrained time term per gate pre-activation (z, r, c)

    def residual(self, t: Tensor, h: Tensor) -> Tensor:
        tz = tr = tc = 0.0
        if self.time_input is not None:
            tz, tr, tc = self.time_input(t).chunk(3, dim=-1)
        t = expand_time(t, h)
        ht = torch.cat([h, t], dim=-1)
        z = 0.4 * torch.sigmoid(self.lin_z(ht) + tz)
        r = 0.8 * torch.sigmoid(self.lin_r(ht) + tr)
        c = fast_tanh(self.lin_c(torch.cat([r * h, t], dim=-1)) + tc)
        return z * (c - h)


class CouplingFlowLayer(Flow):
    """Affine coupling layer; ``parity`` picks the transformed channels A = {i : i % 2 == parity}
    (with one channel, A = {0} and the networks see only ``t``)."""

    def __init__(
        self,
        dim: int,
        *,
        parity: int = 0,
        hidden_dim: int = 64,
        num_layers: int = _D.num_layers,
        activation: str = _D.activation,
        time_embedding: str = _D.time_embedding,
        time_embedding_features: int = _D.time_embedding_features,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        idx = torch.arange(dim)
        in_a = (idx % 2 == parity % 2) if dim > 1 else torch.ones(1, dtype=torch.bool)
        idx_a, idx_b = idx[in_a], idx[~in_a]
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        # y = cat([y_A, x_B])[..., inv_perm] puts every channel back in place
        self.register_buffer("inv_perm", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        na, nb = len(idx_a), len(idx_b)
        self.net = mlp(nb + 1, 2 * na, check_positive_int(hidden_dim, "hidden_dim"), num_layers, activation)
        self.embedding = make_time_embedding(time_embedding, 2 * na, num_features=time_embedding_features)

    def _scale_shift(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.idx_b.numel() == 0:  # one channel: the networks see only t (once per distinct time)
            inp = t
        else:
            inp = torch.cat([x.index_select(-1, self.idx_b), expand_time(t, x)], dim=-1)
        u, v = self.net(inp).chunk(2, dim=-1)
        phi_u, phi_v = self.embedding(t).chunk(2, dim=-1)
        return u * phi_u, v * phi_v

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = broadcast_time(t, x)
        log_scale, shift = self._scale_shift(t, x)
        ya = x.index_select(-1, self.idx_a) * torch.exp(log_scale) + shift
        if self.idx_b.numel() == 0:
            return ya
        return torch.cat([ya, x.index_select(-1, self.idx_b)], dim=-1).index_select(-1, self.inv_perm)

    def inverse(self, t: Tensor | float, y: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
        """Closed form ``x_A = (y_A − v ⊙ φ_v) ⊙ exp(−u ⊙ φ_u)`` (``iters``/``tol`` unused)."""
        t = broadcast_time(t, y)
        log_scale, shift = self._scale_shift(t, y)  # y_B == x_B
        xa = (y.index_select(-1, self.idx_a) - shift) * torch.exp(-log_scale)
        if self.idx_b.numel() == 0:
            return xa
        return torch.cat([xa, y.index_select(-1, self.idx_b)], dim=-1).index_select(-1, self.inv_perm)


class FlowStack(Flow):
    """Composition ``F_L ∘ … ∘ F_1`` of flow layers sharing ``t``."""

    def __init__(self, layers: list[Flow]) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("flow_layers=0 is invalid; a flow needs at least one layer (flow_layers >= 1)")
        self.dim = layers[0].dim
        self.layers = nn.ModuleList(layers)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = broadcast_time(t, x)
        for layer in self.layers:
            x = layer(t, x)
        return x

    def inverse(self, t: Tensor | float, y: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
        t = broadcast_time(t, y)
        for layer in reversed(self.layers):
            y = layer.inverse(t, y, iters=iters, tol=tol)
        return y

    @property
    def guaranteed_invertible(self) -> bool:
        return all(layer.guaranteed_invertible for layer in self.layers)


class LayerStack(FlowStack):
    """``flow_layers`` layers of the class's ``layer``, each built with ``layer_kwargs`` (and its
    :meth:`layer_options`)."""

    layer: type[Flow]

    def __init__(self, dim: int, *, flow_layers: int = _D.flow_layers, **layer_kwargs: Any) -> None:
        check_positive_int(flow_layers, "flow_layers")
        super().__init__([self.layer(dim, **self.layer_options(i), **layer_kwargs) for i in range(flow_layers)])

    @staticmethod
    def layer_options(i: int) -> dict[str, Any]:
        """Options of layer ``i`` of its own (none by default)."""
        return {}


class ResNetFlow(LayerStack):
    """Stack of ``flow_layers`` :class:`ResNetFlowLayer`s."""

    layer = ResNetFlowLayer


class GRUFlow(LayerStack):
    """Stack of ``flow_layers`` :class:`GRUFlowLayer`s."""

    layer = GRUFlowLayer


class CouplingFlow(LayerStack):
    """Stack of ``flow_layers`` :class:`CouplingFlowLayer`s with alternating splits (layer ``i`` has parity ``i``)."""

    layer = CouplingFlowLayer

    @staticmethod
    def layer_options(i: int) -> dict[str, Any]:
        return {"parity": i}


FLOWS: dict[str, type[LayerStack]] = {"resnet_flow": ResNetFlow, "gru_flow": GRUFlow, "coupling_flow": CouplingFlow}

#: the keyword options of the flow layers (what :func:`make_flow` passes on to the kind's layers that take them)
LAYER_OPTIONS = tuple(
    dict.fromkeys(
        name for stack in FLOWS.values() for name in keyword_options(stack.layer) if name not in ("dim", "parity")
    )
)


def make_flow(
    kind: str,
    dim: int,
    *,
    flow_layers: int = _D.flow_layers,
    rotation_pairs: int = _D.rotation_pairs,
    **layer_options: Any,
) -> FlowStack:
    """Build a flow stack by kind (``resnet_flow``, ``gru_flow``, ``coupling_flow``) of ``flow_layers`` layers.

    ``layer_options`` are the layers' keyword options (``hidden_dim``, ``num_layers``, ``activation``,
    ``time_embedding``, ``time_embedding_features``, ``time_input_features``, ``coeff``, ``n_power_iterations``:
    declared once, with their defaults, by :class:`ResNetFlowLayer`, :class:`GRUFlowLayer` and
    :class:`CouplingFlowLayer`). Options that a kind has no use for are ignored (the GRU flow's gates are single
    linear maps, so it ignores ``hidden_dim``/``num_layers``/``activation``; only the residual flows use ``coeff``
    and ``time_input_features``, see :class:`TimeInput`), so one set of options serves every kind.
    ``rotation_pairs`` P > 0 puts a :class:`~ts_neuralode.models.rotation_flow.RotationFlowLayer` (P channel pairs
    rotated at state-dependent frequencies, its network ``hidden_dim`` wide and ``num_layers`` deep) first in the
    stack of any kind.
    """
    check_choice(kind, "flow kind", FLOWS)
    check_positive_int(dim, "dim")
    unknown = sorted(set(layer_options) - set(LAYER_OPTIONS))
    if unknown:
        raise TypeError(
            f"make_flow() got unexpected keyword argument(s) {unknown}; flow options: {list(LAYER_OPTIONS)}"
        )
    if "hidden_dim" in layer_options:
        check_positive_int(layer_options["hidden_dim"], "hidden_dim")
    if "num_layers" in layer_options:
        check_positive_int(layer_options["num_layers"], "num_layers", minimum=0)
    if "activation" in layer_options:  # validates early with a clear error
        make_activation(layer_options["activation"], lipschitz=kind == "resnet_flow")
    coeff = layer_options.get("coeff", _D.coeff)
    if not (isinstance(coeff, (int, float)) and 0 < coeff < 1):
        raise ConfigError(f"coeff={coeff!r} is invalid; the spectral bound must lie in (0, 1), e.g. 0.9")
    stack = FLOWS[kind]
    accepted = keyword_options(stack.layer)
    flow = stack(dim, flow_layers=flow_layers, **{k: v for k, v in layer_options.items() if k in accepted})
    if check_positive_int(rotation_pairs, "rotation_pairs", minimum=0):
        net = {k: layer_options[k] for k in ("hidden_dim", "num_layers") if k in layer_options}
        flow.layers.insert(0, RotationFlowLayer(dim, rotation_pairs, **net))
    return flow


__all__ = [
    "broadcast_time",
    "expand_time",
    "Flow",
    "TimeInput",
    "ResidualFlowLayer",
    "ResNetFlowLayer",
    "GRUFlowLayer",
    "CouplingFlowLayer",
    "FlowStack",
    "LayerStack",
    "ResNetFlow",
    "GRUFlow",
    "CouplingFlow",
    "FLOWS",
    "make_flow",
]

"""Small network builders shared by the evolutions, the flows and the models.

* :func:`make_activation` — activation by name, optionally restricted to 1-Lipschitz ones.
* :func:`mlp` — ``in_dim → hidden_dim × num_layers → out_dim`` multilayer perceptron.
* :class:`SpectralNormLinear` — a linear layer whose weight is rescaled so that its spectral norm is at most
  ``coeff`` (< 1), used wherever a flow needs a true Lipschitz bound.
* ``mlp(..., spectral={...})`` — every linear layer spectrally normalised (including the first; the Neural
  Flows reference library leaves the first one out, so its bound does not hold) and only 1-Lipschitz
  activations, so ``Lip(net) <= coeff ** (num_layers + 1) < 1``.

Spectral normalisation. ``W_eff = W / max(1, sigma(W) / coeff)``, so a weight already inside the ball is
left alone (i-ResNet style rather than always dividing by sigma). ``sigma`` is estimated:

* in training mode by power iteration on buffers ``u``, ``v`` that persist between calls (warm start).
  The iteration runs ``n_power_iterations`` times only when the weight has changed since the last call
  (keyed on the parameter's in-place version counter, which every optimizer step bumps), so repeated
  calls within one step (an encoder evaluating the flow between every observation) pay one dot product
  per layer. ``sigma = uᵀ W v`` is differentiable in ``W`` (as in Miyato et al.). Power iteration can only
  under-estimate sigma; with warm starts it converges within a few steps, and ``coeff = 0.9`` leaves a 10%
  margin. ``u``, ``v`` start as the exact top singular pair (one SVD at construction).
* in eval mode exactly, by ``torch.linalg.svdvals`` (cached per weight version, treated as a constant in
  autograd), so the bound holds exactly at inference and in the tests.

Inside :func:`spectral_weight_scope` (the models' ``loss``/``forecast`` run in one, see
:func:`shares_spectral_weights`) each layer builds ``W_eff`` once and every later call in the block reuses
that tensor — one autograd node per layer instead of one per call. A flow-RNN encoder calls each layer
once per observation: measured on the sine set (batch 50, ~50 observations), a latent GRU flow training
step is 18% faster, a ResNet flow step 14%.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ts_neuralode.errors import ConfigError

#: below this many elements torch.tanh is as fast (a Python autograd node costs ~20 µs)
FAST_TANH_MIN_NUMEL = 8192


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2·σ(2x) − 1 in place on one buffer; backward by ATen's fused ``tanh_backward`` (1 − y²)·g."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: Tensor) -> Tensor:
    """``torch.tanh`` by ``2·σ(2x) − 1`` on CPU for large tensors: same function (max |difference| 1.8e-7 in
    float32, 3e-16 in float64 over [−20, 20]), but ATen's CPU tanh kernel is several times slower than its
    sigmoid (measured with this torch build, one thread, [5000, 64]: 1.27 vs 0.23 ms forward, 1.79 vs 0.73 ms
    forward + backward). Small tensors and other devices use ``torch.tanh``."""
    if x.device.type != "cpu" or x.numel() < FAST_TANH_MIN_NUMEL:
        return torch.tanh(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _SigmoidTanh.apply(x)
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


class Tanh(nn.Tanh):
    """``nn.Tanh`` computed by :func:`fast_tanh` (a subclass: ``isinstance(m, nn.Tanh)`` still holds)."""

    def forward(self, x: Tensor) -> Tensor:
        return fast_tanh(x)


# name -> (constructor, 1-Lipschitz?)
_ACTIVATIONS: dict[str, tuple[type[nn.Module], bool]] = {
    "tanh": (Tanh, True),
    "relu": (nn.ReLU, True),
    "elu": (nn.ELU, True),  # alpha = 1: slope in (0, 1]
    "softplus": (nn.Softplus, True),
    "sigmoid": (nn.Sigmoid, True),  # Lipschitz 1/4
    "leaky_relu": (nn.LeakyReLU, True),
    "silu": (nn.SiLU, False),  # Lipschitz ~1.1
    "gelu": (nn.GELU, False),  # Lipschitz ~1.13
}
LIPSCHITZ_ACTIVATIONS = tuple(name for name, (_, lip) in _ACTIVATIONS.items() if lip)
ACTIVATIONS = tuple(_ACTIVATIONS)


def make_activation(name: str, *, lipschitz: bool = False, where: str = "activation") -> nn.Module:
    """An activation module by name; ``lipschitz=True`` admits only 1-Lipschitz activations."""
    allowed = LIPSCHITZ_ACTIVATIONS if lipschitz else ACTIVATIONS
    key = str(name).lower()
    if key not in allowed:
        extra = " (a Lipschitz-constrained flow needs a 1-Lipschitz activation)" if lipschitz else ""
        raise ConfigError(f"{where}={name!r} is not supported{extra}; choose one of {', '.join(allowed)}")
    return _ACTIVATIONS[key][0]()


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ConfigError when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid; pass an integer >= {minimum}")
    return value


def _layer_sizes(in_dim: int, out_dim: int, hidden_dim: int, num_layers: int) -> list[tuple[int, int]]:
    dims = [in_dim] + [hidden_dim] * num_layers + [out_dim]
    return list(zip(dims[:-1], dims[1:], strict=True))


class MLP(nn.Sequential):
    """``nn.Sequential`` of linear maps and activations whose forward calls ``F.linear`` / :func:`fast_tanh` directly
    for plain :class:`nn.Linear` / :class:`Tanh` layers without hooks (same ops, same values, same ``state_dict``).

    Why: a vector field is evaluated ~7 times per observation interval on a [50, 16] state, and the module calls
    (``Sequential`` → ``Linear`` → ``F.linear``: Python dispatch, hook checks) cost about as much as the tiny matmuls;
    skipping them measured ~10% of an ODE-RNN forward on the 5,000-series set (results/many_series.md). Any other
    layer (a parametrised or spectrally normalised linear, another activation) and any hook go through ``module(x)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if _global_hooks():
            return super().forward(x)
        for layer in self._modules.values():
            kind = type(layer)
            if kind is nn.Linear and _no_hooks(layer):
                x = F.linear(x, layer.weight, layer.bias)
            elif kind is Tanh and _no_hooks(layer):
                x = fast_tanh(x)
            else:
                x = layer(x)
        return x


def _no_hooks(layer: nn.Module) -> bool:
    return not (layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks)


def _global_hooks() -> bool:
    m = nn.modules.module
    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def mlp(
    in_dim: int,
    out_dim: int,
    hidden_dim: int = 64,
    num_layers: int = 2,
    activation: str = "tanh",
    final_activation: str | None = None,
    *,
    spectral: Mapping[str, Any] | None = None,
) -> nn.Sequential:
    """Plain MLP ``[..., in_dim] -> [..., out_dim]`` with ``num_layers`` hidden layers of ``hidden_dim``.

    ``num_layers=0`` gives a single linear map. ``spectral`` (the options of :class:`SpectralNormLinear`:
    ``coeff``, ``n_power_iterations``; ``{}`` for its defaults): every linear layer spectrally normalised and only
    1-Lipschitz activations admitted, so ``Lip(net) <= coeff ** (num_layers + 1)``.
    """
    check_positive_int(num_layers, "num_layers", minimum=0)
    lipschitz = spectral is not None
    layers: list[nn.Module] = []
    sizes = _layer_sizes(in_dim, out_dim, hidden_dim, num_layers)
    for i, (a, b) in enumerate(sizes):
        layers.append(nn.Linear(a, b) if spectral is None else SpectralNormLinear(a, b, **spectral))
        if i < len(sizes) - 1:
            layers.append(make_activation(activation, lipschitz=lipschitz))
    if final_activation is not None:
        layers.append(make_activation(final_activation, lipschitz=lipschitz, where="final_activation"))
    return MLP(*layers)


_WEIGHT_SCOPE: ContextVar[dict | None] = ContextVar("ts_neuralode_spectral_weight_scope", default=None)


@contextmanager
def spectral_weight_scope():
    """Within the block, each :class:`SpectralNormLinear` computes its normalised weight once (per grad
    mode and weight version) and reuses it. Nested blocks share the outermost one's weights."""
    token = _WEIGHT_SCOPE.set({}) if _WEIGHT_SCOPE.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _WEIGHT_SCOPE.reset(token)


def shares_spectral_weights(method):
    """Decorator: run a model method (``loss``, ``forecast``) inside :func:`spectral_weight_scope`."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with spectral_weight_scope():
            return method(*args, **kwargs)

    return wrapper


class SpectralNormLinear(nn.Module):
    """Linear layer ``y = W_eff x + b`` with ``||W_eff||_2 <= coeff`` (see the module docstring).

    Args:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        coeff: bound on the spectral norm, in (0, 1] for a contraction (default 0.9).
        n_power_iterations: power iterations per weight update in training (default 3).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, coeff: float = 0.9, n_power_iterations: int = 3
    ) -> None:
        super().__init__()
        if not (isinstance(coeff, (int, float)) and coeff > 0):
            raise ConfigError(f"spectral coeff={coeff!r} is invalid; pass a number in (0, 1), e.g. 0.9")
        self.in_features, self.out_features = in_features, out_features
        self.coeff = float(coeff)
        self.n_power_iterations = check_positive_int(n_power_iterations, "n_power_iterations")
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.register_buffer("_u", torch.empty(out_features))
        self.register_buffer("_v", torch.empty(in_features))
        self._pi_key: tuple | None = None
        self._exact_key: tuple | None = None
        self._exact_sigma: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        self.init_singular_vectors()

    @torch.no_grad()
    def init_singular_vectors(self) -> None:
        """Set ``u``, ``v`` to the exact top singular pair of the weight (one SVD); call it after changing
        the weight by hand. Power iteration alone converges slowly here: the top singular values of a
        random square-ish matrix are close together."""
        if min(self.weight.shape) == 0:
            return
        u, _, vh = torch.linalg.svd(self.weight.detach(), full_matrices=False)
        self._u.copy_(u[:, 0])
        self._v.copy_(vh[0])
        self._pi_key = self._key()

    def _key(self) -> tuple:
        return (self.weight.data_ptr(), self.weight._version, self.weight.device, self.weight.dtype)

    @torch.no_grad()
    def _power_iteration(self, n: int) -> None:
        w = self.weight.detach()
        u, v = self._u, self._v
        for _ in range(n):
            v = F.normalize(w.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(w @ v, dim=0, eps=1e-12)
        self._u.copy_(u)
        self._v.copy_(v)
        self._pi_key = self._key()

    def sigma(self) -> Tensor:
        """Spectral-norm estimate of the raw weight (power iteration in training, exact in eval)."""
        if self.training:
            if self._pi_key != self._key():
                self._power_iteration(self.n_power_iterations)
            # clones: the buffers are updated in place at the next weight version
            return torch.dot(self._u.clone(), self.weight @ self._v.clone())
        key = self._key()
        if self._exact_key != key or self._exact_sigma is None:
            self._exact_sigma = torch.linalg.svdvals(self.weight.detach())[0]
            self._exact_key = key
        return self._exact_sigma

    def normalized_weight(self) -> Tensor:
        """``W / max(1, sigma / coeff)`` (built once per :func:`spectral_weight_scope`)."""
        scope = _WEIGHT_SCOPE.get()
        if scope is None:
            return self._normalize()
        slot = (id(self), torch.is_grad_enabled())
        key = self._key() + (self.training,)
        hit = scope.get(slot)
        if hit is None or hit[0] != key:
            hit = scope[slot] = (key, self._normalize())
        return hit[1]

    def _normalize(self) -> Tensor:
        return self.weight / torch.clamp(self.sigma() / self.coeff, min=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, coeff={self.coeff}"
        )


def lipschitz_upper_bound(module: nn.Module) -> float:
    """Product of the spectral-norm bounds of the :class:`SpectralNormLinear` layers of a sequential
    ``module`` with 1-Lipschitz activations (exact sigma), i.e. a certified bound on ``Lip(module)``."""
    bound = 1.0
    for layer in module.modules():
        if isinstance(layer, SpectralNormLinear):
            with torch.no_grad():
                sigma = torch.linalg.svdvals(layer.normalized_weight().detach())[0].item()
            bound *= sigma
    return bound


__all__ = [
    "ACTIVATIONS",
    "LIPSCHITZ_ACTIVATIONS",
    "make_activation",
    "check_positive_int",
    "mlp",
    "SpectralNormLinear",
    "spectral_weight_scope",
    "shares_spectral_weights",
    "lipschitz_upper_bound",
]

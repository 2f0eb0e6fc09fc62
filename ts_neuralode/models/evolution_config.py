"""The evolution options as one object: :class:`EvolutionConfig` (kind + solver options + flow options).

Every model takes one ``evolution`` config and passes it through untouched; the config validates itself once
(at construction) and builds the evolution module with :meth:`EvolutionConfig.build`. On the command line it
is the nested group ``--model.evolution.*``::

    ts-neuralode fit --model.evolution.kind gru_flow --model.evolution.flow_layers 4
    ts-neuralode fit --model.evolution.method dopri5 --model.evolution.adjoint true   # interpolated adjoint

Older model directories and checkpoints spelled these options flat (``evolution: ode``, ``method: rk4`` …
next to the model's own options); :func:`upgrade_flat_options` maps them onto the nested config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ts_neuralode.errors import ConfigError, check_choice
from ts_neuralode.models.nets import make_activation
from ts_neuralode.models.time_embedding import TIME_EMBEDDINGS
from ts_neuralode.solvers import ADJOINT_MODES, METHODS
from ts_neuralode.solvers.options import DEFAULTS as SOLVER_DEFAULTS
from ts_neuralode.solvers.options import ODEOptions
from ts_neuralode.solvers.tableaus import ADAPTIVE_METHODS, FIXED_METHODS

EVOLUTION_KINDS = ("ode", "resnet_flow", "gru_flow", "coupling_flow")
VECTOR_FIELDS = ("mlp", "gru")


#: the evolution classes :meth:`EvolutionConfig.build` makes ("ode", "flow"); :mod:`ts_neuralode.models.evolution`
#: fills it where it defines them (and ``ts_neuralode.models`` imports that module), so this configuration stays
#: under the modules it configures: they import it, it imports none of them
EVOLUTION_CLASSES: dict[str, Any] = {}


@dataclass(frozen=True)
class EvolutionConfig:
    """How a model's state evolves between times: an ODE solved numerically, or a neural flow in closed form.

    Attributes:
        kind: "ode", "resnet_flow", "gru_flow" or "coupling_flow" — the one switch between ODE and flow.
        hidden_dim: width of the vector field's / flow layers' networks (None: the model's ``hidden_dim``).
        num_layers: hidden layers of those networks (0: one linear map).
        activation: their activation ("tanh"; a ResNet flow admits only 1-Lipschitz ones).
        vector_field: ODE field, "mlp" or "gru" (GRU-ODE dynamics); None: the model's default (GRU-ODE-Bayes:
            "gru", the others "mlp").
        method, rtol, atol, step_size: ODE solver (euler | midpoint | rk4 fixed step, ``step_size`` None =
            output time to output time; bosh3 | dopri5 | tsit5 adaptive with tolerances rtol/atol).
        adjoint: gradients by the adjoint method instead of backpropagating through the solver.
        adjoint_mode: with ``adjoint``: "interpolate" (default: exact y from the forward's dense output,
            faster) or "backsolve" (re-integrates y backwards: memory flat in the number of steps).
        max_steps: attempted solver steps per solve before it gives up with a SolverError.
        flow_layers: stacked flow layers.  time_embedding: "fourier" (default: unbounded; measured against
            "fourier_bounded" in results/flows_periodic.md), "fourier_bounded", "tanh", "log", "linear" (see
            :mod:`ts_neuralode.models.time_embedding`); time_embedding_features: its width. These fields are the
            one declaration of the flows' defaults (:mod:`ts_neuralode.models.flows` reads them from here).
        time_input_features: how the residual flows' (ResNet, GRU) networks read ``t``: 0 (default) the raw time
            inside their spectrally normalised input layer, so ``|∂g/∂t| < coeff^L`` and every oscillation must come
            from ``φ(t)``; K > 0 also K trainable sinusoid pairs ``[sin(a t), cos(a t)]`` through an *unconstrained*
            linear map (``Lip_x(g)``, hence invertibility, unchanged). Measured in results/flows_periodic.md.
            The coupling flow's networks are unconstrained already and ignore it.
        rotation_pairs: P > 0 puts a rotation layer first in any flow's stack: P pairs of state channels rotated
            by ``ω(x_B) t``, the frequencies read from the other channels (the exact flow of a linear ODE with a
            state-dependent frequency, :mod:`ts_neuralode.models.rotation_flow`); 0 (default): none.
        coeff: spectral-norm bound (0, 1) of the residual flows' networks.
    """

    kind: str = "ode"
    hidden_dim: int | None = None
    num_layers: int = 2
    activation: str = "tanh"
    vector_field: str | None = None
    # the solver's options: defaults declared once, by the solver (ts_neuralode.solvers.options.ODEOptions)
    method: str = SOLVER_DEFAULTS.method
    rtol: float = SOLVER_DEFAULTS.rtol
    atol: float = SOLVER_DEFAULTS.atol
    step_size: float | None = SOLVER_DEFAULTS.step_size
    adjoint: bool = SOLVER_DEFAULTS.adjoint
    adjoint_mode: str = SOLVER_DEFAULTS.adjoint_mode
    max_steps: int = SOLVER_DEFAULTS.max_steps
    flow_layers: int = 2
    time_embedding: str = "fourier"
    time_embedding_features: int = 8
    time_input_features: int = 0
    rotation_pairs: int = 0
    coeff: float = 0.9

    def __post_init__(self) -> None:
        _validate(self)

    def solver_options(self) -> ODEOptions:
        """The solver's options object (checked already: this config validated them at construction)."""
        return ODEOptions(
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            step_size=self.step_size,
            adjoint=self.adjoint,
            adjoint_mode=self.adjoint_mode,
            max_steps=self.max_steps,
        )

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def coerce(cls, value: EvolutionConfig | str | Mapping[str, Any] | None) -> EvolutionConfig:
        """A config from a config, a kind name (``"gru_flow"``: defaults otherwise) or a dict of options."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ConfigError(f"evolution has no option(s) {unknown}; its options are {option_names()}")
            return cls(**value)
        raise ConfigError(
            f"evolution={value!r} is invalid; pass a kind ({', '.join(EVOLUTION_KINDS)}) or an EvolutionConfig"
        )

    def resolve(self, **defaults: Any) -> EvolutionConfig:
        """This config with its None options (``hidden_dim``, ``vector_field``) set to a model's ``defaults``."""
        unset = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **unset) if unset else self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able options (hyperparameters, model directories)."""
        return asdict(self)

    def build(self, state_dim: int, control_dim: int = 0):
        """The :class:`~ts_neuralode.models.evolution.Evolution` of a state of size ``state_dim``, driven by a
        control ``u(t)`` of ``control_dim`` channels when > 0 (:mod:`ts_neuralode.models.control`)."""
        return EVOLUTION_CLASSES["ode" if self.kind == "ode" else "flow"](state_dim, self, control_dim=control_dim)


def evolution_kind(value: EvolutionConfig | str | Mapping[str, Any] | None) -> str:
    """The kind of an evolution however it is spelled (config, kind name, dict of options as in saved
    hyperparameters, None: the default ``"ode"``), without validating the rest."""
    if isinstance(value, EvolutionConfig):
        return value.kind
    if isinstance(value, Mapping):
        return str(value.get("kind", "ode"))
    return "ode" if value is None else str(value)


def option_names() -> list[str]:
    return [f.name for f in fields(EvolutionConfig)]


# -- validation (the one place) ---------------------------------------------------------------------
def _int(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid; pass an integer >= {minimum}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value, name: str, example: str) -> None:
    if not _is_number(value) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{name}={value!r} is invalid; pass a positive finite number, e.g. {example}")


def _validate(c: EvolutionConfig) -> None:
    """Every option is checked whatever the kind: a typo fails early even where the option is unused."""

    if c.kind not in EVOLUTION_KINDS:
        raise ConfigError(
            f"evolution={c.kind!r} is not supported; choose one of {', '.join(EVOLUTION_KINDS)} "
            "(--model.evolution.kind)"
        )
    if c.hidden_dim is not None:
        _int(c.hidden_dim, "hidden_dim")
    _int(c.num_layers, "num_layers", minimum=0)
    _int(c.flow_layers, "flow_layers")
    _int(c.time_embedding_features, "time_embedding_features")
    _int(c.time_input_features, "time_input_features", minimum=0)
    _int(c.rotation_pairs, "rotation_pairs", minimum=0)
    _int(c.max_steps, "max_steps")
    if c.vector_field is not None:
        check_choice(c.vector_field, "vector_field", VECTOR_FIELDS)
    check_choice(c.time_embedding, "time_embedding", tuple(TIME_EMBEDDINGS))
    make_activation(c.activation, lipschitz=c.kind == "resnet_flow")
    if c.method not in METHODS:
        raise ConfigError(f"method={c.method!r} is not a known ODE solver; choose one of {', '.join(METHODS)}")
    _positive(c.rtol, "rtol", "1e-3")
    _positive(c.atol, "atol", "1e-4")
    if c.step_size is not None:
        if not _is_number(c.step_size) or not c.step_size > 0:
            raise ConfigError(f"step_size={c.step_size!r} is invalid; pass a positive number or None")
        if c.method in ADAPTIVE_METHODS:
            raise ConfigError(
                f"step_size={c.step_size!r} is for the fixed-step methods ({', '.join(FIXED_METHODS)}); "
                f"method={c.method!r} adapts its own steps: drop step_size or choose a fixed-step "
                "method"
            )
    if not isinstance(c.adjoint, bool):
        raise ConfigError(f"adjoint={c.adjoint!r} is invalid; pass true or false")
    check_choice(c.adjoint_mode, "adjoint_mode", ADJOINT_MODES)
    if not _is_number(c.coeff) or not 0 < c.coeff < 1:
        raise ConfigError(f"coeff={c.coeff!r} is invalid; the spectral bound must lie in (0, 1), e.g. 0.9")


# -- the old flat spelling ----------------------------------------------------------------------------
#: options that older versions took flat, next to ``model``/``evolution`` (format ts_neuralode.model/1 and
#: the checkpoints written with it); ``hidden_dim`` stayed a model option (the evolution inherits it).
LEGACY_FLAT_OPTIONS = (
    "num_layers",
    "method",
    "rtol",
    "atol",
    "step_size",
    "adjoint",
    "flow_layers",
    "time_embedding",
    "vector_field",
    "activation",
    "time_embedding_features",
    "adjoint_mode",
    "max_steps",
)


def upgrade_flat_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Map the old flat spelling of the module/model options onto the nested ``evolution`` config.

    ``{"evolution": "ode", "method": "rk4", "model_kwargs": {"vector_field": "gru"}, ...}`` →
    ``{"evolution": {"kind": "ode", "method": "rk4", "vector_field": "gru"}, "model_kwargs": {}, ...}``.
    Options already in the new spelling pass unchanged.
    """
    out = dict(options)
    evolution = out.get("evolution")
    if isinstance(evolution, EvolutionConfig):
        evolution = evolution.to_dict()
    nested = {"kind": evolution} if isinstance(evolution, str) else dict(evolution or {})
    _take_legacy(out, nested)
    kwargs = out.get("model_kwargs")
    if isinstance(kwargs, Mapping) and any(k in kwargs for k in LEGACY_FLAT_OPTIONS):
        out["model_kwargs"] = dict(kwargs)
        _take_legacy(out["model_kwargs"], nested)
    if "evolution" in out or nested:  # a legacy option, if any, is in ``nested`` now
        out["evolution"] = nested
    return out


def _take_legacy(options: dict[str, Any], nested: dict[str, Any]) -> None:
    """Move the old flat evolution options out of ``options`` into ``nested``."""
    for key in LEGACY_FLAT_OPTIONS:
        if key in options:
            nested[key] = options.pop(key)


def merge_options(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Module options from layers (later ones win), each in the flat or the nested spelling; the ``evolution``
    options are merged one by one (a layer setting ``method`` keeps the kind an earlier layer chose)."""
    out: dict[str, Any] = {}
    evolution: dict[str, Any] = {}
    for layer in layers:
        layer = upgrade_flat_options(layer)
        evolution.update(layer.pop("evolution", None) or {})
        out.update(layer)
    if evolution:
        out["evolution"] = evolution
    return out


__all__ = [
    "merge_options",
    "EvolutionConfig",
    "evolution_kind",
    "EVOLUTION_KINDS",
    "VECTOR_FIELDS",
    "LEGACY_FLAT_OPTIONS",
    "upgrade_flat_options",
    "option_names",
]

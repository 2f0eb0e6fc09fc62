"""The solver's options as one object, :class:`ODEOptions`: every default declared here once, checked here once.

``odeint(func, y0, t, ODEOptions(method="rk4", step_size=0.1))`` and the keyword form
``odeint(func, y0, t, method="rk4", step_size=0.1)`` are the same call; keywords given with an options object
replace its fields. The models' :class:`~ts_neuralode.models.evolution_config.EvolutionConfig` takes its solver
defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .tableaus import ADAPTIVE_METHODS, FIXED_METHODS, METHODS

ADJOINT_MODES = ("backsolve", "interpolate")


@dataclass(frozen=True)
class ODEOptions:
    """How to solve (per-call inputs — ``t_mask``, ``first_step``, ``adjoint_params`` — stay arguments of odeint).

    Attributes:
        method: euler | midpoint | rk4 (fixed step) | bosh3 | dopri5 | tsit5 (adaptive).
        rtol, atol: tolerances of the adaptive methods (> 0).
        step_size: fixed-step methods only; ``None`` steps exactly from output time to output time.
        adjoint: gradients by the adjoint method instead of backpropagating through the solver's operations.
        adjoint_mode: "interpolate" (the default: y read from the forward's accepted steps by the dense output —
            exact y, memory O(steps·B·D), measured flat at these sizes in results/speed.md) or "backsolve"
            (y re-integrated backwards with the adjoint: O(1) memory in the number of steps).
        seminorm: exclude the parameter adjoints from the backward error norm (fewer backward steps).
        max_steps: limit on attempted steps per solve; exceeding it raises SolverError.
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    step_size: float | None = None
    adjoint: bool = False
    adjoint_mode: str = "interpolate"
    seminorm: bool = True
    max_steps: int = 10_000

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError (saying what to change) for an invalid option."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("rtol", "atol"):
            tol = getattr(self, name)
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
                raise ValueError(f"{name} must be a number > 0, got {tol!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        if self.step_size is not None:
            if self.method in ADAPTIVE_METHODS:
                raise ValueError(
                    f"step_size is for fixed-step methods ({', '.join(FIXED_METHODS)}); for {self.method} pass "
                    "first_step, or drop step_size"
                )
            if not isinstance(self.step_size, (int, float)) or not self.step_size > 0:
                raise ValueError(f"step_size must be a number > 0, got {self.step_size!r}")
        if self.adjoint_mode not in ADJOINT_MODES:
            raise ValueError(f"unknown adjoint_mode {self.adjoint_mode!r}; choose one of {', '.join(ADJOINT_MODES)}")


OPTION_NAMES = tuple(f.name for f in fields(ODEOptions))
DEFAULTS = ODEOptions()

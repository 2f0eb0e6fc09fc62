"""ODE solvers in pure PyTorch: per-sample adaptive Runge–Kutta with dense output and adjoint gradients.

>>> sol = odeint(func, y0, t, method="dopri5")   # y0 [B, D], t [T] or [B, T]
>>> sol.ys  # [B, T, D]; sol.stats: per-sample n_f_evals / n_accepted / n_rejected
"""

from .errors import SolverError
from .jumps import JumpSolution, odeint_jumps
from .odeint import Solution, odeint
from .options import ADJOINT_MODES, ODEOptions
from .records import SolverStats
from .tableaus import ADAPTIVE_METHODS, FIXED_METHODS, METHODS

__all__ = [
    "odeint",
    "odeint_jumps",
    "JumpSolution",
    "ODEOptions",
    "Solution",
    "SolverStats",
    "SolverError",
    "METHODS",
    "FIXED_METHODS",
    "ADAPTIVE_METHODS",
    "ADJOINT_MODES",
]

"""Solver exceptions (no imports from the rest of the package: the solver core stands alone)."""

from __future__ import annotations


class SolverError(RuntimeError):
    """A solve that cannot finish: max_steps exceeded, step-size underflow or a non-finite state.

    The message names the method, the time reached and how many samples failed. The same facts as attributes,
    for callers that explain the failure in their own terms (e.g. a forecast's step budget): ``method``,
    ``failed`` ([B] bool), ``t_reached`` ([B]), ``max_steps`` (the limit, when the limit is what stopped the solve;
    else None), and for a fixed-step solve refused up front ``needed_steps`` and ``step_size``.
    """

    method: str | None = None
    failed = None
    t_reached = None
    max_steps: int | None = None
    needed_steps: int | None = None
    step_size: float | None = None

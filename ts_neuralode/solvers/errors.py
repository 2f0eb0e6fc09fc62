"""Solver exceptions (no imports from the rest of the package: the solver core stands alone)."""


class SolverError(RuntimeError):
    """A solve that cannot finish: max_steps exceeded, step-size underflow or a non-finite state.

    The message names the method, the time reached and how many samples failed.
    """

"""The state a solve keeps and returns: its options (:class:`SolverOptions`), a recorded accepted step
(:class:`StepRecord`: what dense output interpolates), a checkpoint of the state for the adjoint
(:class:`StepCheckpoint`) and the per-sample statistics (:class:`SolverStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

if TYPE_CHECKING:
    from .options import ODEOptions


@dataclass(frozen=True)
class SolverOptions:
    """The options every solve shares, checked once by :func:`~ts_neuralode.solvers.odeint`."""

    rtol: float
    atol: float
    max_steps: int
    # adaptive methods: initial step, one float or a [B] tensor per sample (None: Hairer's automatic choice)
    first_step: float | Tensor | None = None
    step_size: float | None = None  # fixed-step methods: step (None: output time to output time)

    @classmethod
    def of(
        cls, options: ODEOptions, first_step: float | Tensor | None = None, max_steps: int | None = None
    ) -> SolverOptions:
        """What the solve loops read of checked ``options`` (numbers as floats), with the call's ``first_step`` and
        ``max_steps`` (None: the options' own)."""
        return cls(
            rtol=float(options.rtol),
            atol=float(options.atol),
            max_steps=options.max_steps if max_steps is None else max_steps,
            first_step=first_step,
            step_size=None if options.step_size is None else float(options.step_size),
        )


class StepRecord(NamedTuple):
    """One iteration's step as the dense output needs it (every tensor per sample)."""

    t_start: Tensor  # [B]
    t_stop: Tensor  # [B]  (== t_start for a sample that did not advance)
    dt: Tensor  # [B]  the step length tried
    y_start: Tensor  # [B, D]
    k: Tensor  # [S, B, D] the stacked stages


class StepCheckpoint(NamedTuple):
    """One iteration's step as the interpolated adjoint recomputes it."""

    t_start: Tensor  # [B]
    t_stop: Tensor  # [B]
    dt: Tensor  # [B]  the length of the accepted step (0 where the sample did not move)
    y_start: Tensor  # [B, D] the exact start state


@dataclass
class SolverStats:
    """Per-sample statistics (LongTensors ``[B]``).

    ``n_f_evals`` counts evaluations of the vector field a sample took part in while it was still
    integrating (batched evaluations count once per sample). After a backward pass through the adjoint,
    ``backward`` holds ``{"n_f_evals": int, "n_steps": int, "n_rejected": int}`` for the batch-joint
    backward solve (one vector-Jacobian product of the augmented field = one evaluation).
    """

    n_f_evals: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    backward: dict = field(default_factory=dict)
    #: adaptive methods: each sample's next step as the controller proposed it after its last step ([B]; the
    #: ``first_step`` of a following solve that continues from here — recurrent models carry it)
    next_dt: Tensor | None = None

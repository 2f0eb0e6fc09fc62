"""How a solve fails: the one-line error of a sample that cannot go on (:func:`_fail`), the bookkeeping of rejected
steps shared by the general loop and the two-point path (:func:`_classify_rejections`) and the raise
(:func:`_raise_failures`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import SolverError
from .tableaus import Tableau


def _fail(tab: Tableau, what: str, failed: Tensor, t: Tensor, sign, hint: str, **facts) -> SolverError:
    """The SolverError of ``failed`` samples stopped at ``t``; ``facts`` (``max_steps``, ``needed_steps``,
    ``step_size``) become its attributes."""
    n = int(failed.sum())
    tt = (t * sign)[failed] if isinstance(sign, Tensor) else t[failed] * sign
    lo, hi = float(tt.min()), float(tt.max())
    where = f"t={lo:.6g}" if lo == hi else f"t in [{lo:.6g}, {hi:.6g}]"
    err = SolverError(f"{tab.name}: {what} for {n} of {t.shape[0]} sample(s), stopped at {where}; {hint}")
    err.method = tab.name
    err.failed = failed
    err.t_reached = t * sign
    for name, value in facts.items():
        setattr(err, name, value)
    return err


@torch.no_grad()
def _classify_rejections(rejected, ratio, dt, t, t0, t_end, active, any_active, tiny, failed, nonfinite):
    """The rare path of a step loop, after a step with rejections: mark the rejected samples whose error ratio is
    non-finite, and fail (stop at ``t``) those whose step fell below ``tiny`` (10 eps of the span's magnitude, made
    with the failure masks at the first rejection, while ``t_end`` is still every sample's real end). Returns
    ``(tiny, failed, nonfinite, t_end, active, any_active)``."""
    if tiny is None:
        eps = torch.finfo(dt.dtype).eps
        tiny = 10 * eps * torch.maximum(t0.abs(), t_end.abs()).clamp_(min=eps)
        failed = torch.zeros(rejected.shape[0], dtype=torch.bool, device=rejected.device)
        nonfinite = torch.zeros_like(failed)
    nonfinite = torch.where(rejected, ~torch.isfinite(ratio), nonfinite)
    under = rejected & (dt < tiny)
    if bool(under.any()):
        failed = failed | under
        t_end = torch.where(under, t, t_end)
        active = active & ~under
        any_active = bool(active.any())
    return tiny, failed, nonfinite, t_end, active, any_active


def _raise_failures(tab, failed, nonfinite, t, sign) -> None:
    """After the step loop: the samples that failed (``failed``, None when no step was ever rejected) raise one
    SolverError, non-finite state first, else step-size underflow."""
    if failed is None or not bool(failed.any()):
        return
    if bool((failed & nonfinite).any()):
        raise _fail(
            tab,
            "state or derivative became non-finite (NaN/inf)",
            failed,
            t,
            sign,
            "check the vector field for overflow/blow-up, lower the learning rate, or normalise time",
        )
    raise _fail(
        tab,
        "step size underflow",
        failed,
        t,
        sign,
        "the solution likely blows up or is too stiff here; shorten the time span or loosen rtol/atol",
    )

"""How much of a window model's learned correction to keep, chosen on the fit's held-out validation windows.

A :class:`~ts_neuralode.models.window.WindowModel` with a base forecasts ``base + correction``; training fits the
correction on the training windows, where it can also learn noise that does not carry over. At the end of a fit
(before the bands are calibrated, on the same windows: :func:`ts_neuralode.api.held_out.held_out_forecasts`) the
correction's weight ``c`` in ``base + c · correction`` is chosen from :data:`WEIGHTS` by the validation error: the
mean over series and channels of each one's MAE relative to the base's. Two forecasts suffice (``c = 0`` and
``c = 1``: the mean is linear in ``c``). Ties keep the larger weight; ``c = 1`` is the model as trained, ``c = 0``
its base alone. The weight is a buffer of the model (``correction_scale``), so the model directory, the MLflow
model and every later forecast use it. The forecaster's ``correction_gate`` records the choice and the validation
MAE (standardised units) at the chosen weight and at 1 (a fit reports it in ``fit_info["correction_gate"]``; the
automatic model choice ranks trials by it).
"""

from __future__ import annotations

import numpy as np

from ts_neuralode.api.held_out import held_out_forecasts
from ts_neuralode.models.window import WindowModel

#: the correction weights the validation chooses from
WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
#: predictive samples of the two validation forecasts (the mean of a latent model is their average)
NUM_SAMPLES = 20


def window_model(forecaster) -> WindowModel | None:
    """The forecaster's window model when it corrects a base, else None."""
    model = getattr(getattr(forecaster, "module", None), "model", None)
    return model if isinstance(model, WindowModel) and model.base_kind != "none" else None


def gate_correction(forecaster, datamodule) -> str | None:
    """Set the correction weight of ``forecaster``'s window model on the held-out validation windows; returns the
    line saying what was chosen, or None (no base, no validation split, nothing to score)."""
    wm = window_model(forecaster)
    if wm is None:
        return None
    name = forecaster.name
    means = {}
    try:
        for c in (0.0, 1.0):
            wm.set_correction_scale(c)
            held = held_out_forecasts(forecaster, datamodule, num_samples=NUM_SAMPLES, seed=0, levels=None)
            if held is None or held[0].empty:
                return None
            means[c] = held[0]
    finally:
        wm.set_correction_scale(1.0)
    cv0, cv1 = means[0.0], means[1.0]
    keys = ["unique_id"] + (["channel"] if "channel" in cv0.columns else [])
    y = cv0["y"].to_numpy(dtype=float)
    base, full = cv0[name].to_numpy(dtype=float), cv1[name].to_numpy(dtype=float)
    ok = np.isfinite(y) & np.isfinite(base) & np.isfinite(full)
    if not ok.any():
        return None
    groups = cv0.loc[ok, keys].astype(str).agg("/".join, axis=1).to_numpy()
    y, base, full = y[ok], base[ok], full[ok]
    err0 = _group_mae(groups, np.abs(base - y))
    scale = np.where(err0 > 0, err0, 1.0)
    score = {c: float(np.mean(_group_mae(groups, np.abs(base + c * (full - base) - y)) / scale)) for c in WEIGHTS}
    best = min(WEIGHTS, key=lambda c: (round(score[c], 12), -c))
    wm.set_correction_scale(best)
    # what the choice gained on the validation windows, for the model choice to rank a trial by its validation
    # error as gated, not as trained (ts_neuralode.api.model_choice): the MAE over every point in the model's
    # standardised units (each channel over its training scale, as val_mae), at the chosen weight and at 1. Not the
    # mean of per-series ratios above: a series whose base is almost exact makes that ratio explode (measured on
    # ChickWeight and PBC: x1e5 at weight 1)
    unit = _channel_scale(forecaster, cv0.loc[ok, "channel"] if "channel" in cv0.columns else None, len(y))
    mae = {c: float(np.mean(np.abs(base + c * (full - base) - y) / unit)) for c in (best, 1.0)}
    forecaster.correction_gate = {"weight": float(best), "mae": mae[best], "mae_as_trained": mae[1.0]}
    chosen = f", x{best:g} {score[best]:.3f}" if best != 1.0 else ""
    return (
        f"kept x{best:g} of the learned correction on its {wm.base_kind} base, chosen on {int(ok.sum())} "
        f"held-out validation points (error relative to the base alone: x1 {score[1.0]:.3f}{chosen})"
    )


def _channel_scale(forecaster, channel, n: int) -> np.ndarray:
    """Each point's channel scale of the forecaster's data transform (1 where it has none)."""
    tr = getattr(forecaster, "transform", None)
    names, scale = getattr(tr, "channel_names", None), getattr(tr, "scale", None)
    if not names or not scale:
        return np.ones(n)
    by = {str(c): float(v) if v and np.isfinite(v) and v > 0 else 1.0 for c, v in zip(names, scale, strict=False)}
    if channel is None:
        return np.full(n, by[str(names[0])])
    return np.asarray([by.get(str(c), 1.0) for c in channel], dtype=float)


def _group_mae(groups: np.ndarray, err: np.ndarray) -> np.ndarray:
    """The mean of ``err`` per group (groups in sorted order)."""
    _, inv = np.unique(groups, return_inverse=True)
    return np.bincount(inv, weights=err) / np.bincount(inv)


__all__ = ["WEIGHTS", "gate_correction", "window_model"]

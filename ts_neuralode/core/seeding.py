"""Reproducible sampling without side effects: :func:`seeded`."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None):
    """Run the block with torch's global RNG seeded to ``seed`` (None: as it is), restoring its state after:
    a forecast's samples are reproducible and the caller's random stream is left as it was."""
    if seed is None:
        yield
        return
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


__all__ = ["seeded"]

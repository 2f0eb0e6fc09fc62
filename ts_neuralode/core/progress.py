"""The progress bar of a long loop (a forecast's batches, a backtest's windows): :func:`show_progress`."""

from __future__ import annotations

from tqdm.auto import tqdm


def show_progress(items, enabled: bool, desc: str, unit: str):
    """``items`` behind a tqdm bar (cleared when the loop ends) when ``enabled`` and there are any, else ``items``."""
    if not enabled or len(items) == 0:
        return items
    return tqdm(items, desc=desc, unit=unit, leave=False)


__all__ = ["show_progress"]

"""``--data.season auto``: the season of datetime series, chosen from the calendar's periods by the harmonic fit.

A user who does not know (or forgets) the season of their series loses the seasonal baseline and the harmonic base
(``--model.base auto`` falls back to the last value). For datetime data the candidates are the calendar's periods,
:data:`CANDIDATES` (a day, a week, a year). Each is tried on up to :data:`MAX_SERIES` series (a seeded sample) with
the fit the harmonic base makes (:class:`ts_neuralode.data.harmonic.HarmonicFit`: 1–3 harmonics chosen by BIC over
the last few seasons of each series' history, at its own observation times, at most :data:`MAX_POINTS` of them, evenly
thinned): per series and channel, ``gain = (BIC of the quadratic trend alone − BIC of the seasonal fit) / points``
(> 0: the season explains more than its coefficients cost). A candidate counts where the history spans at least
:data:`~ts_neuralode.data.harmonic.MIN_SEASONS` of its seasons for at least half of the sampled series and channels;
the one with the largest median gain is chosen if that median is > 0 (at least half of them seasonal), else none.

Numeric times have no calendar: ``auto`` there means no season (pass ``--data.season`` as a number of time units).
The choice reads the whole history (a period, not a value: no forecast is scored with what it saw).
"""

from __future__ import annotations

import numpy as np
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.harmonic import FIT_SEASONS, HarmonicFit
from ts_neuralode.data.series_table import SeriesTable
from ts_neuralode.errors import ConfigError

#: the calendar periods tried for datetime data
CANDIDATES = ("1D", "7D", "365.25D")
#: series sampled (seeded) for the choice
MAX_SERIES = 64
#: each series' points fitted (its last FIT_SEASONS seasons, evenly thinned to this many)
MAX_POINTS = 1000


def _recent_batch(table: SeriesTable, series: np.ndarray, period: float) -> Batch:
    """The last ``FIT_SEASONS`` seasons of each of ``series`` (at most MAX_POINTS points each) as a padded batch in
    raw times and values (float64)."""
    rows = []
    for s in series:
        lo, hi = int(table.offsets[s]), int(table.offsets[s + 1])
        t = table.times[lo:hi]
        start = lo + int(np.searchsorted(t, t[-1] - FIT_SEASONS * period, "left"))
        idx = np.arange(start, hi)
        if len(idx) > MAX_POINTS:
            idx = idx[np.linspace(0, len(idx) - 1, MAX_POINTS).round().astype(np.int64)]
        rows.append(idx)
    B, T, D = len(rows), max(len(r) for r in rows), table.num_channels
    times = np.zeros((B, T))
    values = np.zeros((B, T, D))
    mask = np.zeros((B, T, D))
    valid = np.zeros((B, T), dtype=bool)
    for b, idx in enumerate(rows):
        n = len(idx)
        times[b, :n], times[b, n:] = table.times[idx], table.times[idx[-1]]
        m = table.mask[idx]
        values[b, :n] = np.where(m, table.values[idx], 0.0)
        mask[b, :n], valid[b, :n] = m, True
    v = torch.from_numpy(values)
    return Batch(
        times=torch.from_numpy(times),
        values=v,
        obs_mask=torch.from_numpy(mask),
        target_mask=torch.zeros_like(v),
        time_mask=torch.from_numpy(valid),
        series_idx=torch.as_tensor(series, dtype=torch.long),
        cutoff=torch.from_numpy(times[:, -1].copy()),
    )


def detect_season(table: SeriesTable, seed: int = 0) -> tuple[str | None, str]:
    """The season of ``table``'s series for ``season="auto"`` (see the module docstring): one of
    :data:`CANDIDATES` or None, and a line saying what was measured."""
    if not table.codec.is_datetime:
        return None, (
            "season auto: the times are numbers, not datetimes: no calendar period to try, no season "
            "(pass --data.season as a number of time units if the series have one)"
        )
    rng = np.random.default_rng(seed)
    n = table.n_series
    series = np.sort(rng.choice(n, MAX_SERIES, replace=False)) if n > MAX_SERIES else np.arange(n)
    scores: dict[str, float | None] = {}
    for name in CANDIDATES:
        period = float(table.codec.duration(name, "season", ConfigError))
        fit = HarmonicFit(_recent_batch(table, series, period), period)
        seen = fit.points > 0  # [B, D] the series' channels with points in the fitted stretch
        ok = fit.ok.squeeze(1) & seen
        if ok.sum().item() < 0.5 * max(seen.sum().item(), 1):
            scores[name] = None  # too short a history (or too few points) for this season in most series
            continue
        scores[name] = float((fit.bic_gain / fit.points.clamp_min(1.0))[ok].median())
    fitted = {k: v for k, v in scores.items() if v is not None}
    best = max(fitted, key=lambda k: fitted[k]) if fitted else None
    chosen = best if best is not None and fitted[best] > 0 else None
    measured = ", ".join(f"{k}: {'too few seasons or points' if v is None else f'{v:+.3f}'}" for k, v in scores.items())
    what = chosen if chosen is not None else "none"
    return chosen, (
        f"season auto: {what} (median BIC gain per point of the harmonic fit over the trend alone, {len(series)} "
        f"series: {measured})"
    )


__all__ = ["CANDIDATES", "detect_season"]

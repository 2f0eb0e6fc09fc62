"""The harmonic seasonal base (ts_neuralode.data.harmonic) and what a window model with a base trains: exact on a
sine on a line at irregular times, the current level rather than the fit's, the fallback where the context is too
short, and a loss that scores the correction only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.harmonic import HarmonicFit, harmonic_forecast
from ts_neuralode.models import ODERNN
from ts_neuralode.models.window import WindowModel, WindowStats

pytestmark = pytest.mark.usefixtures("one_thread")

P = 1.0


def batch_of(t: np.ndarray, y: np.ndarray, cutoff: float) -> Batch:
    """One series per row of ``y`` [B, T] on shared times ``t``: context up to ``cutoff``, targets after it."""
    tt = torch.as_tensor(t, dtype=torch.float32)
    v = torch.as_tensor(y, dtype=torch.float32).unsqueeze(-1)
    B, T = v.shape[:2]
    ctx = (tt <= cutoff).float().view(1, T, 1).expand(B, T, 1).clone()
    return Batch(
        times=tt,
        values=v,
        obs_mask=ctx,
        target_mask=1 - ctx,
        time_mask=torch.ones(B, T, dtype=torch.bool),
        series_idx=torch.arange(B),
        cutoff=torch.full((B,), cutoff),
    )


def profile(t):
    return np.sin(2 * np.pi * t / P) + 0.4 * np.cos(4 * np.pi * t / P + 0.3)


def test_exact_on_a_seasonal_profile_on_a_line_at_irregular_times():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 6.0, 150))
    y = np.stack([profile(t) + 0.5 * t + 3.0, 2 * profile(t) - 0.2 * t])
    b = batch_of(t, y, cutoff=4.5)
    q = torch.as_tensor(t[t > 4.5], dtype=torch.float32).view(1, -1, 1).expand(2, -1, 1)
    got, ok = harmonic_forecast(b, q, P)
    assert ok.all()
    want = torch.as_tensor(y[:, t > 4.5], dtype=torch.float32).unsqueeze(-1)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=0)  # the ridge biases a little
    # seasonal naive plus drift is not exact at irregular times (its points are up to P/10 off): the test could fail
    sn = WindowStats(b, "none", "seasonal_trend", P).base(q)
    assert (sn - want).abs().max() > 0.05


def test_follows_the_current_level_not_the_fit():
    """A level shift of 2 in the last tenth of a season moves the forecast by about 2 (a least-squares fit alone
    would move it by a fraction of it: the shifted points are 3% of the context)."""
    t = np.arange(0, 4.0, 0.02)
    q = torch.tensor([4.1, 4.25, 4.5]).view(1, 3, 1)
    flat, ok = harmonic_forecast(batch_of(t, profile(t)[None, :], cutoff=4.0), q, P)
    shifted, ok2 = harmonic_forecast(batch_of(t, (profile(t) + np.where(t > 3.85, 2.0, 0.0))[None, :], 4.0), q, P)
    assert ok.all() and ok2.all()
    moved = (shifted - flat).squeeze()
    assert ((moved > 1.6) & (moved < 2.4)).all(), moved


def test_short_context_falls_back_to_seasonal_naive_plus_drift():
    t = np.arange(0, 1.5, 0.05)
    y = (profile(t) + 0.3 * t)[None, :]
    b = batch_of(t, y, cutoff=1.2)
    q = torch.as_tensor(t[t > 1.2], dtype=torch.float32).view(1, -1, 1)
    _, ok = harmonic_forecast(b, q, P)
    assert not ok.any()  # 1.2 seasons of context: too short to tell the season from the trend
    torch.testing.assert_close(
        WindowStats(b, "window", "harmonic", P).base(q), WindowStats(b, "window", "seasonal_trend", P).base(q)
    )


def test_a_base_trains_the_correction_only():
    """With a base the inner model's loss scores the targets alone: with no target in the batch it is 0, while the
    plain model (one-step predictions of the context scored too) has a loss."""
    t = np.arange(0, 3.0, 0.1)
    y = (profile(t) + 0.3 * t)[None, :]
    b = batch_of(t, y, cutoff=10.0)  # every point is context: no target
    torch.manual_seed(0)
    plain = ODERNN(
        input_dim=1, evolution={"kind": "ode", "method": "euler", "step_size": 0.1}, latent_dim=4, hidden_dim=8
    )
    assert plain.loss(b)[0].item() != 0.0
    model = WindowModel(plain, "window", "harmonic", season_period=P)
    assert model.inner.score_context is False
    assert model.loss(b)[0].item() == 0.0


def test_the_information_criterion_chooses_the_harmonics_per_series():
    """A noisy sine takes one harmonic, the two-harmonic profile two or more (BIC on each series' own fit): three
    fixed harmonics (before) fitted the sine's noise as harmonics 2 and 3."""
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 5.0, 120))
    y = np.stack([np.sin(2 * np.pi * t / P) + rng.normal(0, 0.5, t.size), profile(t) + rng.normal(0, 0.05, t.size)])
    fit = HarmonicFit(batch_of(t, y, cutoff=4.0), P)
    assert fit.ok.all()
    assert fit.harmonics[0, 0].item() == 1 and (fit.seas_coef[0, 0, 2:] == 0).all()
    assert fit.harmonics[1, 0].item() >= 2 and fit.seas_coef[1, 0, 2:4].abs().max() > 0.3  # the 0.4 cos(4πt + 0.3)


def test_a_sparse_context_fits_one_harmonic():
    """12 points over three seasons: too few for three harmonics (2 points per coefficient), enough for one."""
    t = np.linspace(0, 3.0, 12, endpoint=False)
    b = batch_of(t, (profile(t) + 0.2 * t)[None, :], cutoff=3.0)
    fit = HarmonicFit(b, P)
    assert fit.ok.all() and fit.harmonics[0, 0].item() == 1


def test_a_reverting_level_tends_to_the_context_line():
    """A level shift of 2 in the last tenth of a season: without reversion the forecast keeps it; with a reversion
    time far below the lead it has returned to the context's line (the shifted points are 3% of the context, so the
    line itself moved little)."""
    t = np.arange(0, 4.0, 0.02)
    q = torch.tensor([4.5, 4.75]).view(1, 2, 1)
    fit = HarmonicFit(batch_of(t, (profile(t) + np.where(t > 3.85, 2.0, 0.0))[None, :], 4.0), P)
    truth = torch.as_tensor(profile(np.array([4.5, 4.75])), dtype=torch.float32).view(1, 2, 1)
    kept = (fit.at(q) - truth).squeeze()
    reverted = (fit.at(q, torch.tensor([1e-3])) - truth).squeeze()
    assert ((kept > 1.6) & (kept < 2.4)).all(), kept
    assert (reverted.abs() < 0.4).all(), reverted
    halfway = (fit.at(q[:, :1], torch.tensor([0.5 / math.log(2)])) - truth[:, :1]).squeeze()  # half-life 0.5
    assert abs(float(halfway) - 0.5 * float(kept[0]) - 0.5 * float(reverted[0])) < 0.05

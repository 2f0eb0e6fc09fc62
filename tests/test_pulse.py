"""A piecewise-constant known-future input is read at every change: the ODE evolution stops at each change time, so
a pulse shorter than a solver step is never stepped over and no step carries a later input backwards in time."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.data.covariates import CovariateBatch
from ts_neuralode.data.generators import generate
from ts_neuralode.models.evolution import ODEEvolution
from ts_neuralode.models.evolution_config import EvolutionConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class _PK(torch.nn.Module):
    """One compartment: ``dc/dt = u − 0.5 c``."""

    def forward(self, t, y, u):
        return u - 0.5 * y


def _pulse(start: float, width: float, level: float) -> CovariateBatch:
    knots = torch.tensor([[0.0, start, start + width]], dtype=torch.float64)
    values = torch.tensor([[[0.0], [level], [0.0]]], dtype=torch.float64)
    return CovariateBatch(knots, values, torch.tensor([False]), torch.zeros(1, 0), torch.zeros(0))


def _exact(t: float, start: float, width: float, level: float) -> float:
    """``c(t)`` of :class:`_PK` from ``c(0) = 0`` under the pulse."""
    if t <= start:
        return 0.0
    r = level / 0.5
    end = min(t, start + width)
    c = r * (1 - math.exp(-0.5 * (end - start)))
    return c * math.exp(-0.5 * max(0.0, t - start - width))


@pytest.mark.parametrize(
    "config", [dict(method="rk4", step_size=0.5), dict(method="dopri5", rtol=1e-6, atol=1e-8)], ids=["rk4", "dopri5"]
)
def test_a_pulse_shorter_than_a_step_is_read_and_never_leaks_backwards(config):
    """A 0.05-long pulse at t = 2.2 (rk4 steps are 0.5 long: without a stop it falls between the stage times of the
    step [2.0, 2.5]), queried before, inside and after it."""
    evo = ODEEvolution(1, EvolutionConfig(**config), field=_PK(), control_dim=1)
    cov = _pulse(2.2, 0.05, 40.0)
    t = torch.tensor([0.0, 1.0, 2.1, 2.2, 2.225, 2.25, 3.0, 6.0], dtype=torch.float64)
    out = evo(torch.zeros(1, 1, dtype=torch.float64), t, control=cov)[0, :, 0]
    exact = torch.tensor([_exact(x, 2.2, 0.05, 40.0) for x in t.tolist()], dtype=torch.float64)
    assert float(out[:4].abs().max()) == 0.0  # before the pulse: nothing leaks back from it
    assert float(out[-1]) > 0.5 * float(exact[-1]) > 0  # after it: the dose is there
    tol = 2e-2 if config["method"] == "rk4" else 1e-5  # rk4's own error over 0.05-0.5 pieces
    assert float((out - exact).abs().max()) < tol * float(exact.max())
    # per-sample grids with padding and a batch of two rows with different pulses
    cov2 = CovariateBatch(
        torch.cat([cov.knots, torch.tensor([[0.0, 4.0, 4.05]], dtype=torch.float64)]),
        cov.values.repeat(2, 1, 1),
        cov.linear,
        torch.zeros(2, 0),
        torch.zeros(0),
    )
    tb = torch.tensor([[0.0, 2.1, 3.0, 6.0], [0.0, 3.9, 5.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    ob = evo(torch.zeros(2, 1, dtype=torch.float64), tb, t_mask=mask, control=cov2)[:, :, 0]
    assert float(ob[0, 1]) == 0.0 and float(ob[1, 1]) == 0.0  # each row: nothing before its own pulse
    assert float(ob[0, 2]) > 0 and float(ob[1, 2]) > 0 and float(ob[1, 3]) == float(ob[1, 2])  # padding repeats
    want = [_exact(x, 4.0, 0.05, 40.0) for x in (5.0,)]
    assert abs(float(ob[1, 2]) - want[0]) < tol * want[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_a_half_hour_pulse_changes_a_trained_models_forecast_after_it(method, tmp_path):
    """A model trained with ``--data.future_cols [rate]`` (constant interpolation): a 0.5-long infusion in the
    future changes the forecast after it and leaves the one before it exactly as it was."""
    from ts_neuralode.api.forecaster import Forecaster
    from ts_neuralode.cli import main

    df = generate("pk", n_series=12, n_points=20, seed=0)
    df.to_csv(tmp_path / "pk.csv", index=False)
    torch.manual_seed(0)
    rc = main(
        [
            "fit",
            "--data.path",
            str(tmp_path / "pk.csv"),
            "--data.future_cols",
            "[rate]",
            "--model.model",
            "ode_rnn",
            "--model.latent_dim",
            "4",
            "--model.hidden_dim",
            "8",
            "--model.evolution.method",
            method,
            *(["--model.evolution.step_size", "0.5"] if method == "rk4" else []),
            "--data.batch_size",
            "8",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--tracking",
            "false",
        ]
    )
    assert rc == 0
    fc = Forecaster.load(tmp_path / "checkpoints" / "model")
    hist = df[df.ds <= 6.0]
    ids = sorted(df.unique_id.unique())
    # the same schedule times (so the adaptive solver's steps up to 8.0 are the same), one with a 0.5-long dose
    flat = pd.DataFrame({"unique_id": ids * 4, "ds": [6.0] * 12 + [8.0] * 12 + [8.5] * 12 + [12.0] * 12, "rate": 0.0})
    pulse = flat.assign(rate=np.where(flat["ds"] == 8.0, 30.0, 0.0))
    times = [7.9, 9.0, 11.0]
    kw = dict(times=times, num_samples=1, calibrated=False)
    a = fc.predict(hist, future=flat, **kw)
    b = fc.predict(hist, future=pulse, **kw)
    before = a["ds"] < 8.0
    assert np.array_equal(a.loc[before, fc.name].to_numpy(), b.loc[before, fc.name].to_numpy())
    after = np.abs(a.loc[~before, fc.name].to_numpy() - b.loc[~before, fc.name].to_numpy())
    assert (after > 1e-6).all(), after

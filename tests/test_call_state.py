"""Per-call state travels as arguments (issue 23, part 4): a forecast's covariates and step budget are its own, even
when another forecast on the same model runs in the middle of it, and nothing of a call is left on the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ts_neuralode.data.batch import Batch
from ts_neuralode.data.covariates import CovariateBatch
from ts_neuralode.models import build_model
from ts_neuralode.models.evolution import Evolution, EvolutionConfig, ODEEvolution
from ts_neuralode.models.window import WindowModel
from ts_neuralode.solvers import SolverError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)

B, T, D, C, S = 3, 6, 1, 2, 2  # series, times, channels, control channels, static features
EVOLUTION = {"kind": "ode", "method": "rk4", "step_size": 0.25}


def _batch(seed: int) -> Batch:
    """A padded batch on [0, 2.5] whose known-future control (one step column, one linear column) and static
    covariates come from ``seed``: two seeds give the same history under different covariates."""
    g = torch.Generator().manual_seed(0)
    times = torch.linspace(0.0, 2.5, T).unsqueeze(0).expand(B, -1).clone()
    values = torch.randn(B, T, D, generator=g)
    obs = torch.ones(B, T, D)
    obs[:, -2:] = 0.0  # the last two points are targets only
    tmask = torch.ones(B, T, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    knots = torch.tensor([0.0, 1.0, 2.0, 4.0]).unsqueeze(0).expand(B, -1).clone()
    cov = CovariateBatch(
        knots=knots,
        values=2 * torch.rand(B, 4, C, generator=g) - 1,
        linear=torch.tensor([False, True]),
        phase=torch.zeros(B, 0),
        freq=torch.zeros(0),
        static=torch.randn(B, S, generator=g),
    )
    return Batch(times, values * obs, obs, torch.ones(B, T, D), tmask, torch.arange(B), torch.full((B,), 1.5), cov)


def _model(name: str):
    torch.manual_seed(0)
    return build_model(
        name, input_dim=D, latent_dim=4, hidden_dim=8, evolution=dict(EVOLUTION), control_dim=C, static_dim=S
    ).eval()


@pytest.mark.parametrize("name", ["ode_rnn", "gru_ode", "latent_ode"])
def test_a_forecast_inside_another_keeps_each_its_own_covariates(name):
    """Forecast B (other control u(t), other static covariates) runs inside forecast A's first evolution call on the
    same model; each gives exactly what it gives alone. (When the model held the covariates of "the current call" in
    attributes, B's replaced A's for the rest of A.)"""
    model = _model(name)
    a, b = _batch(1), _batch(2)
    q = torch.linspace(0.0, 4.0, 9)
    with torch.no_grad():
        alone_a, alone_b = model.forecast(a, q).mean, model.forecast(b, q).mean
        assert not torch.allclose(alone_a, alone_b)  # the covariates matter

        nested = []

        def run_b(module, args):
            if not nested:
                nested.append(None)  # (re-entered by B's own evolution calls: run B once)
                nested[0] = model.forecast(b, q).mean

        hooks = [m.register_forward_pre_hook(run_b) for m in model.modules() if isinstance(m, Evolution)]
        try:
            outer_a = model.forecast(a, q).mean
        finally:
            for h in hooks:
                h.remove()
    assert nested and nested[0] is not None
    torch.testing.assert_close(outer_a, alone_a, rtol=0, atol=0)
    torch.testing.assert_close(nested[0], alone_b, rtol=0, atol=0)
    per_call = [k for k, v in vars(model).items() if isinstance(v, (CovariateBatch, torch.Tensor))]
    assert per_call == []  # nothing of a call is left on the model


@pytest.mark.parametrize("name", ["ode_rnn", "latent_ode"])
def test_the_step_budget_is_an_argument_of_the_forecast(name):
    """``forecast(..., max_steps=n)`` allows every ODE solve of that call n steps (rk4 with 0.25 steps needs 16 to
    reach t = 4); the next call without it has the model's own budget; a WindowModel hands it to its inner model."""
    model = _model(name)
    batch, q = _batch(1), torch.linspace(0.0, 4.0, 9)
    own = [m.config for m in model.modules() if isinstance(m, ODEEvolution)]
    with torch.no_grad():
        for m in (model, WindowModel(model, normalize="window", base="last")):
            with pytest.raises(SolverError) as err:
                m.forecast(batch, q, max_steps=2)
            assert err.value.max_steps == 2
            assert m.forecast(batch, q, max_steps=10_000).mean.shape == (B, 9, D)
            assert torch.isfinite(m.forecast(batch, q).mean).all()
    assert [m.config for m in model.modules() if isinstance(m, ODEEvolution)] == own  # nothing swapped


def test_the_budget_reaches_a_solve_piece_by_piece():
    """Under a control that changes inside the span the ODE solves piece by piece; each piece has the call's
    budget too (it used to fall back to the evolution's own)."""
    evo = ODEEvolution(2, EvolutionConfig(method="rk4", step_size=0.1), control_dim=C)
    cov = dataclasses.replace(_batch(1).covariates, static=None)
    h0, t = torch.zeros(B, 2), torch.tensor([0.0, 3.0])
    assert evo(h0, t, control=cov).shape == (B, 2, 2)
    with pytest.raises(SolverError) as err:
        evo(h0, t, control=cov, max_steps=3)
    assert err.value.max_steps == 3

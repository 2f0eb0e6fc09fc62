"""Throughput changes that must not change results: the validation step's one pass (``loss_and_predict``)."""

from __future__ import annotations

import pytest
import torch
from test_models import sine_batch

from ts_neuralode.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


@pytest.mark.parametrize("name", ["ode_rnn", "gru_ode", "latent_ode"])
@pytest.mark.parametrize("padded", [True, False])
def test_loss_and_predict_equals_loss_then_predict(name, padded):
    torch.manual_seed(0)
    model = build_model(name, input_dim=1, latent_dim=6, hidden_dim=12).eval()
    batch = sine_batch(B=5, T=9, padded=padded)
    with torch.no_grad():
        torch.manual_seed(1)
        loss, logs = model.loss(batch)
        nfe_loss = model.last_nfe
        fc = model.predict(batch, num_samples=4)
        nfe_fc = model.last_nfe
        torch.manual_seed(1)
        loss2, logs2, fc2 = model.loss_and_predict(batch, num_samples=4)
    assert nfe_loss > 0 and fc.samples.shape[0] == 4
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    assert logs2.keys() == logs.keys()
    for key in logs:
        torch.testing.assert_close(logs2[key], logs[key], rtol=0, atol=0)
    torch.testing.assert_close(fc2.mean, fc.mean, rtol=0, atol=0)
    torch.testing.assert_close(fc2.std, fc.std, rtol=0, atol=0)
    torch.testing.assert_close(fc2.samples, fc.samples, rtol=0, atol=0)
    if name != "latent_ode":  # one pass: the nfe of one forecast (what val_nfe logs), not of two passes
        assert model.last_nfe == nfe_fc


# -- the filtering models' solves from observation to observation (ts_neuralode.models.observation_pass) ------------


def _passes(model, batch):
    """(pre, post) of the model's pass, and of the stop-everywhere pass on the same grid."""
    from ts_neuralode.models import recurrent

    grid = model._grid(batch, None)
    with torch.no_grad():
        new = model._run(grid)
        orig = recurrent.recurrent_pass
        try:
            recurrent.recurrent_pass = lambda *a, stop_at_observations=False, **k: orig(*a, **k)
            old = model._run(grid)
        finally:
            recurrent.recurrent_pass = orig
    return new, old


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("method,tol", [("rk4", 1e-5), ("dopri5", 5e-3)])
def test_observation_stops_agree_with_stopping_everywhere(padded, method, tol):
    """Fixed steps of one output interval: the same steps, so the same states (to rounding); adaptive: the same
    trajectory within the solver's tolerance. Every position is compared, observed or not, padding included."""
    torch.manual_seed(0)
    model = build_model(
        "ode_rnn", input_dim=1, latent_dim=6, hidden_dim=12, evolution={"kind": "ode", "method": method}
    ).eval()
    batch = sine_batch(B=6, T=14, padded=padded, seed=3)
    (pre, post), (pre_old, post_old) = _passes(model, batch)
    assert pre.shape == pre_old.shape and post.shape == post_old.shape
    assert (pre - post).abs().max() > 1e-3  # the updates did something
    torch.testing.assert_close(pre, pre_old, rtol=tol, atol=tol)
    torch.testing.assert_close(post, post_old, rtol=tol, atol=tol)


def test_observation_stops_gradients_agree():
    torch.manual_seed(0)
    model = build_model("gru_ode", input_dim=1, latent_dim=5, hidden_dim=10, evolution={"kind": "ode", "method": "rk4"})
    batch = sine_batch(B=5, T=12, padded=True, seed=1)
    from ts_neuralode.models import recurrent

    grads = []
    orig = recurrent.recurrent_pass
    for stop_at_obs in (True, False):
        model.zero_grad()
        recurrent.recurrent_pass = lambda *a, stop_at_observations=False, _s=stop_at_obs, **k: orig(
            *a, stop_at_observations=_s and stop_at_observations, **k
        )
        try:
            loss, _ = model.loss(batch)
            loss.backward()
        finally:
            recurrent.recurrent_pass = orig
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_forecast_at_a_time_does_not_depend_on_other_query_times():
    """The solver stops at observations only: adding query times adds outputs, not stops (but the last: a row's last
    grid time ends its last solve, so a query there is that solve's end point with ``q`` and a dense output with
    ``more`` — equal within far less than the solver's tolerance, rtol 1e-3)."""
    torch.manual_seed(0)
    model = build_model("ode_rnn", input_dim=1, latent_dim=6, hidden_dim=12).eval()
    batch = sine_batch(B=4, T=10, padded=True, seed=2)
    q = torch.tensor([0.7, 2.2, 6.0])
    more = torch.tensor([0.3, 0.7, 1.1, 1.9, 2.2, 3.3, 6.0, 6.5])
    with torch.no_grad():
        a = model.forecast(batch, q).mean
        b = model.forecast(batch, more).mean[:, [1, 4, 6]]
    torch.testing.assert_close(a[:, :2], b[:, :2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- the pass as one solve with the updates as jumps (ts_neuralode.solvers.odeint_jumps) ------------------------------


def _counted_loss(model, batch, use_jumps: bool):
    """(loss, parameter gradients, pre, batch-level field evaluations) with the one-solve pass on or off."""
    from ts_neuralode.models import recurrent

    field = model.evolution.field
    calls = []
    orig_forward, orig_flag = field.forward, recurrent.USE_JUMPS
    field.forward = lambda t, y: calls.append(y.shape[0]) or orig_forward(t, y)
    recurrent.USE_JUMPS = use_jumps
    try:
        model.zero_grad()
        loss, _ = model.loss(batch)
        loss.backward()
        with torch.no_grad():
            pre, _ = model._run(model._grid(batch, None))
    finally:
        field.forward, recurrent.USE_JUMPS = orig_forward, orig_flag
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads, pre, len(calls)


@pytest.mark.parametrize("name", ["ode_rnn", "gru_ode"])
@pytest.mark.parametrize("padded", [True, False])
def test_one_solve_pass_agrees_with_interval_solves_and_evaluates_less(name, padded):
    """Same states, loss and gradients within the solver's tolerance (dopri5, rtol 1e-3); fewer batch-level field
    evaluations, as every row steps through its own observations instead of waiting for the slowest row in each
    interval."""
    torch.manual_seed(0)
    model = build_model(name, input_dim=1, latent_dim=6, hidden_dim=12)
    batch = sine_batch(B=8, T=30, padded=padded, seed=4)
    loss_j, g_j, pre_j, calls_j = _counted_loss(model, batch, True)
    loss_i, g_i, pre_i, calls_i = _counted_loss(model, batch, False)
    torch.testing.assert_close(pre_j, pre_i, rtol=5e-3, atol=5e-3)
    torch.testing.assert_close(loss_j, loss_i, rtol=5e-3, atol=5e-3)
    assert float((g_j - g_i).norm() / g_i.norm()) < 2e-2
    assert calls_j < calls_i

"""The two-point path (one-interval solves of recurrent models) and the solver-options object."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from ts_neuralode.models.evolution_config import EvolutionConfig
from ts_neuralode.solvers import ODEOptions, SolverError, odeint
from ts_neuralode.solvers import odeint as _odeint_fn

odeint_mod = __import__(_odeint_fn.__module__, fromlist=["TWO_POINT_PATH"])


@contextlib.contextmanager
def general_loop():
    odeint_mod.TWO_POINT_PATH = False
    try:
        yield
    finally:
        odeint_mod.TWO_POINT_PATH = True


def _field(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))


def _f(net):
    return lambda t, y: net(y)


CASES = {
    "shared forward": (torch.tensor([0.3, 1.1]), None),
    "shared backward": (torch.tensor([1.1, 0.3]), None),
    "per sample, padded": (
        torch.tensor([[0.0, 0.5], [0.2, 1.4], [0.1, 0.1], [0.3, 2.0], [0.0, 0.7]]),
        torch.tensor([[True, True], [True, True], [True, False], [True, True], [True, False]]),
    ),
}


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("carried", [False, True])
def test_two_point_path_equals_the_general_loop_bit_for_bit(method, case, check, carried):
    net = _field()
    t, mask = CASES[case]
    y0 = torch.randn(5, 3, requires_grad=True)
    first = torch.full((5,), 0.05) if carried else None
    kw = dict(method=method, t_mask=mask, check_inputs=check, first_step=first, rtol=1e-5, atol=1e-6)
    a = odeint(_f(net), y0, t, **kw)
    with general_loop():
        b = odeint(_f(net), y0, t, **kw)
    assert torch.equal(a.ys, b.ys)
    for k in ("n_f_evals", "n_accepted", "n_rejected", "next_dt"):
        assert torch.equal(getattr(a.stats, k), getattr(b.stats, k)), k
    assert int(a.stats.n_accepted.sum()) > 0
    ga = torch.autograd.grad(a.ys.square().sum(), [y0, *net.parameters()])
    gb = torch.autograd.grad(b.ys.square().sum(), [y0, *net.parameters()])
    for x, y in zip(ga, gb, strict=True):
        assert torch.equal(x, y)


def test_two_point_path_is_accurate_and_fails_loudly():
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]])
    y0 = torch.randn(4, 2)
    sol = odeint(lambda t, y: y @ a.t(), y0, torch.tensor([0.0, 2.0]), rtol=1e-8, atol=1e-10, check_inputs=False)
    exact = y0 @ torch.linalg.matrix_exp(2.0 * a).t()
    torch.testing.assert_close(sol.ys[:, -1], exact, rtol=1e-5, atol=1e-6)
    with pytest.raises(SolverError, match="max_steps=3 exceeded"):
        odeint(lambda t, y: y @ a.t(), y0, torch.tensor([0.0, 2.0]), rtol=1e-8, atol=1e-10, max_steps=3)
    with pytest.raises(SolverError, match="non-finite"):
        odeint(lambda t, y: y * float("nan"), y0, torch.tensor([0.0, 1.0]), check_inputs=False)


def test_options_object_and_keywords_are_one_call():
    net = _field(1)
    y0, t = torch.randn(4, 3), torch.linspace(0, 1, 6)
    with torch.no_grad():
        a = odeint(_f(net), y0, t, ODEOptions(method="rk4", step_size=0.1)).ys
        b = odeint(_f(net), y0, t, method="rk4", step_size=0.1).ys
        c = odeint(_f(net), y0, t, ODEOptions(method="euler", step_size=0.5), method="rk4", step_size=0.1).ys
        d = odeint(_f(net), y0, t, ODEOptions(method="euler", step_size=0.1)).ys
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)
    with pytest.raises(ValueError, match="options must be an ODEOptions"):
        odeint(_f(net), y0, t, {"method": "rk4"})
    with pytest.raises(ValueError, match="step_size is for fixed-step methods"):
        ODEOptions(step_size=0.1)
    with pytest.raises(ValueError, match="unknown adjoint_mode"):
        odeint(_f(net), y0, t, adjoint_mode="fast")


def test_one_default_for_every_solver_option():
    cfg, opts = EvolutionConfig(), ODEOptions()
    for name in ("method", "rtol", "atol", "step_size", "adjoint", "adjoint_mode", "max_steps"):
        assert getattr(cfg, name) == getattr(opts, name), name
    assert opts.adjoint_mode == "interpolate"
    assert cfg.solver_options() == opts

"""Adjoint gradients (backsolve and interpolate) vs autograd, finite differences and torchdiffeq."""

import pytest
import torch
from torch import nn

from test_solvers import finite_difference_y0  # tests/ is on sys.path under pytest
from ts_neuralode.solvers import SolverError, odeint

F64 = torch.float64


class TimeMLP(nn.Module):
    def __init__(self, d=3, h=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 1, h), nn.Tanh(), nn.Linear(h, d))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.net(torch.cat([y, t.unsqueeze(-1).to(y.dtype)], -1))


def _grads(func, y0, t, w, **kw):
    y0 = y0.detach().clone().requires_grad_(True)
    sol = odeint(func, y0, t, **kw)
    loss = (sol.ys * w).sum()
    g = torch.autograd.grad(loss, [y0, *func.parameters()])
    return g, sol


def _assert_grads_close(ga, gb, rtol, atol):
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _setup(seed=0, B=3, T=7, per_sample=False):
    torch.manual_seed(seed)
    func = TimeMLP().double()
    y0 = torch.randn(B, 3, dtype=F64)
    if per_sample:
        t = torch.rand(B, T, dtype=F64).sort(1).values * 2.5
        t[:, 0] = 0.1 * torch.rand(B, dtype=F64)
    else:
        t = torch.rand(T, dtype=F64).sort().values * 2.5
        t[0] = 0.0
    w = torch.randn(B, T, 3, dtype=F64)
    return func, y0, t, w


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, kw",
    [
        ("dopri5", dict(rtol=1e-9, atol=1e-11)),
        ("tsit5", dict(rtol=1e-9, atol=1e-11)),
        ("bosh3", dict(rtol=1e-8, atol=1e-10)),
        ("rk4", dict(step_size=0.02)),
        ("euler", dict()),
    ],
)
def test_interpolate_adjoint_equals_autograd(method, kw):
    """The interpolated adjoint is consistent with the forward RK scheme: same gradient as backprop."""
    func, y0, t, w = _setup(per_sample=True)
    ga, _ = _grads(func, y0, t, w, method=method, **kw)
    gi, sol = _grads(func, y0, t, w, method=method, adjoint=True, adjoint_mode="interpolate", **kw)
    _assert_grads_close(ga, gi, rtol=1e-9, atol=1e-11)
    assert sol.stats.backward["mode"] == "interpolate" and (sol.stats.backward["n_f_evals"] > 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("seminorm", [True, False])
def test_backsolve_adjoint_matches_autograd_and_finite_differences(seminorm):
    func, y0, t, w = _setup(seed=1)
    kw = dict(rtol=1e-10, atol=1e-12)
    ga, _ = _grads(func, y0, t, w, **kw)
    gb, sol = _grads(func, y0, t, w, adjoint=True, adjoint_mode="backsolve", seminorm=seminorm, **kw)
    _assert_grads_close(ga, gb, rtol=1e-6, atol=1e-8)
    fd = finite_difference_y0(func, y0, t, w, **kw)  # float64, tight tolerance
    torch.testing.assert_close(gb[0], fd, rtol=1e-5, atol=1e-7)
    assert sol.stats.backward["mode"] == "backsolve"


def test_seminorm_takes_fewer_backward_evaluations():
    func, y0, t, w = _setup(seed=2, T=4)
    kw = dict(rtol=1e-6, atol=1e-8, adjoint=True, adjoint_mode="backsolve")
    _, semi = _grads(func, y0, t, w, seminorm=True, **kw)
    _, full = _grads(func, y0, t, w, seminorm=False, **kw)
    assert semi.stats.backward["n_f_evals"][0] < full.stats.backward["n_f_evals"][0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["backsolve", "interpolate"])
def test_adjoint_per_sample_grids_padding_and_reverse_time(mode):
    func, y0, t, w = _setup(seed=3, B=4, T=6, per_sample=True)
    lengths = torch.tensor([6, 4, 1, 3])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    t = torch.where(mask, t.flip(1) * -1.0, torch.zeros_like(t))  # each row decreasing (backwards solve)
    w = w * mask.unsqueeze(-1)
    kw = dict(rtol=1e-10, atol=1e-12, t_mask=mask)
    ga, _ = _grads(func, y0, t, w, **kw)
    gb, _ = _grads(func, y0, t, w, adjoint=True, adjoint_mode=mode, **kw)
    _assert_grads_close(ga, gb, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["backsolve", "interpolate"])
def test_adjoint_matches_torchdiffeq_adjoint(mode):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func, y0, t, w = _setup(seed=4, T=20)
    kw = dict(rtol=1e-9, atol=1e-11)
    ours, sol = _grads(func, y0, t, w, adjoint=True, adjoint_mode=mode, **kw)
    y0b = y0.detach().clone().requires_grad_(True)
    func.calls = 0

    class Scalar(nn.Module):  # torchdiffeq passes a scalar t
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, s, y):
            return self.inner(s.expand(y.shape[0]), y)

    wrapped = Scalar(func)
    ys = torchdiffeq.odeint_adjoint(wrapped, y0b, t, method="dopri5", **kw)
    loss = (ys.permute(1, 0, 2) * w).sum()
    calls_fwd = func.calls
    theirs = torch.autograd.grad(loss, [y0b, *func.parameters()])
    calls_bwd = func.calls - calls_fwd
    _assert_grads_close(ours, theirs, rtol=1e-6, atol=1e-8)
    # one backward pass that carries the controller across the outputs: fewer evaluations than torchdiffeq,
    # which restarts (with a new initial step search) at each of the 19 output intervals
    assert int(sol.stats.backward["n_f_evals"].max()) < calls_bwd


def test_adjoint_with_plain_function_and_adjoint_params():
    torch.manual_seed(5)
    A = torch.randn(2, 2, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=F64)

    def f(t, y):
        return y @ A.t()

    for mode in ("backsolve", "interpolate"):
        ys = odeint(f, y0, t, adjoint=True, adjoint_params=[A], adjoint_mode=mode, rtol=1e-10, atol=1e-12).ys
        gA, gy = torch.autograd.grad(ys.square().sum(), [A, y0])
        ys2 = odeint(f, y0, t, rtol=1e-10, atol=1e-12).ys
        gA2, gy2 = torch.autograd.grad(ys2.square().sum(), [A, y0])
        torch.testing.assert_close(gA, gA2, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(gy, gy2, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="pass adjoint_params"):
        odeint(f, y0, t, adjoint=True)


def test_backsolve_max_steps_in_backward_raises():
    func, y0, t, w = _setup(seed=6)
    sol = odeint(
        func, y0.requires_grad_(True), t, adjoint=True, adjoint_mode="backsolve", rtol=1e-8, atol=1e-10, max_steps=10
    )
    with pytest.raises(SolverError, match=r"dopri5: adjoint backward: max_steps=10 exceeded"):
        (sol.ys * w).sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("n", [2, 3, 5, 7, 10])
def test_fixed_step_backsolve_takes_as_many_steps_back_as_forward(n, dtype):
    """Summing ``T / n`` steps backwards in float32 used to stop a sliver short of t0 and take one more step."""
    torch.manual_seed(0)
    func = TimeMLP().to(dtype)
    y0 = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=dtype)
    sol = odeint(func, y0, t, method="rk4", step_size=1.0 / n, adjoint=True, adjoint_mode="backsolve")
    forward_calls, func.calls = func.calls, 0
    sol.ys.sum().backward()
    assert forward_calls == 4 * n  # rk4: four evaluations a step
    assert func.calls == forward_calls, (func.calls, forward_calls)

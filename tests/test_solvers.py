"""Solver core: convergence orders, accuracy, reverse time, per-sample grids, padding, gradients, errors."""

import math

import pytest
import torch
from torch import nn

from ts_neuralode.solvers import METHODS, SolverError, odeint
from ts_neuralode.solvers.core import solve_fixed

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------
# problems with known solutions (float64)
def _exp_problem():
    lam = -0.8
    y0 = torch.tensor([[1.0], [2.0]], dtype=F64)
    return (lambda t, y: lam * y), y0, (lambda t: y0 * math.exp(lam * t))


def _oscillator():
    y0 = torch.tensor([[1.0, 0.0], [0.5, -0.3]], dtype=F64)

    def f(t, y):
        return torch.stack([y[:, 1], -y[:, 0]], 1)

    def exact(t):
        c, s = math.cos(t), math.sin(t)
        return torch.stack([c * y0[:, 0] + s * y0[:, 1], -s * y0[:, 0] + c * y0[:, 1]], 1)

    return f, y0, exact


def _time_dependent():
    # y' = -y + t²  →  y = (y0 - 2)·e^(-t) + t² - 2t + 2
    y0 = torch.tensor([[1.0, 0.3]], dtype=F64)

    def f(t, y):
        return -y + (t * t).unsqueeze(-1)

    def exact(t):
        return (y0 - 2) * math.exp(-t) + t * t - 2 * t + 2

    return f, y0, exact


PROBLEMS = {"exp": _exp_problem, "oscillator": _oscillator, "time_dependent": _time_dependent}


# Recorded margins (scripts/check_margins.py; results/test_margins.md; float64, the same for every seed and thread
# count): fitted orders within 0.2 of the tableau's (tsit5 on exp, headroom 1.49; all others >= 2.2), adaptive global
# errors at most 1/12 of 100 x the local tolerance, reverse-time errors at least 3.2x under their limits.
@pytest.mark.slow
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", list(METHODS))
def test_order_of_convergence(method, problem, margin):
    """Global error at t=2 with step h, h/2, h/4: fitted slope = the tableau's order ± 0.3."""
    f, y0, exact = PROBLEMS[problem]()
    tab = METHODS[method]
    T1 = 2.0
    hs = {
        1: [0.02, 0.01, 0.005],
        2: [0.1, 0.05, 0.025],
        3: [0.2, 0.1, 0.05],
        4: [0.25, 0.125, 0.0625],
        5: [0.1, 0.05, 0.025],
    }[tab.order]
    tq = torch.tensor([[0.0, T1]], dtype=F64).expand(y0.shape[0], 2)
    errs = []
    for h in hs:
        # the core runs any tableau (adaptive ones too) at a fixed step, which isolates the order
        ys, _, _ = solve_fixed(f, tab, y0, tq, step_size=h, max_steps=10_000)
        errs.append((ys[:, -1] - exact(T1)).abs().max().item())
    x = torch.log(torch.tensor(hs, dtype=F64))
    yv = torch.log(torch.tensor(errs, dtype=F64))
    slope = (((x - x.mean()) * (yv - yv.mean())).sum() / ((x - x.mean()) ** 2).sum()).item()
    margin("|fitted slope - order|", abs(slope - tab.order), 0.3, note=f"({method}, {problem}, errors {errs})")


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_step_public_api_order(method, margin):
    f, y0, exact = _oscillator()
    order = METHODS[method].order
    t = torch.tensor([0.0, 0.7, 2.0], dtype=F64)
    errs = []
    for h in (0.1, 0.05):
        ys = odeint(f, y0, t, method=method, step_size=h).ys
        errs.append((ys[:, -1] - exact(2.0)).abs().max().item())
    margin("|log2 error ratio - order|", abs(math.log2(errs[0] / errs[1]) - order), 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_adaptive_within_tolerance(method, problem, margin):
    f, y0, exact = PROBLEMS[problem]()
    t = torch.linspace(0, 3, 17, dtype=F64)
    rtol, atol = 1e-7, 1e-9
    sol = odeint(f, y0, t, method=method, rtol=rtol, atol=atol)
    ref = torch.stack([exact(float(ti)) for ti in t], 1)
    err = (sol.ys - ref).abs()
    # global error stays within a small multiple of the local tolerance (dense output included)
    margin("max global error / (100 x local tolerance)", float((err / (100 * (atol + rtol * ref.abs()))).max()), 1.0)
    assert torch.equal(sol.ys[:, 0], y0)
    assert (sol.stats.n_accepted > 0).all() and (sol.stats.n_f_evals > 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_reverse_time(method, margin):
    f, y0, exact = _oscillator()
    t = torch.linspace(1.5, -0.5, 9, dtype=F64)
    # y0 is the state at t=1.5: rotate the exact solution so that it passes through y0 at 1.5
    y_start = exact(-1.5)  # state at time 0 that reaches y0 at 1.5 → shift: y(s) = exact(s - 1.5)
    del y_start
    kw = dict(step_size=0.01) if method in ("euler", "midpoint", "rk4") else dict(rtol=1e-8, atol=1e-10)
    sol = odeint(f, y0, t, method=method, **kw)
    ref = torch.stack([exact(float(ti) - 1.5) for ti in t], 1)
    tol = {"euler": 3e-2, "midpoint": 1e-3}.get(method, 1e-6)
    margin("max error", float((sol.ys - ref).abs().max()), tol)


class MLP(nn.Module):
    def __init__(self, d=4, h=16, time=False):
        super().__init__()
        self.time = time
        self.net = nn.Sequential(nn.Linear(d + int(time), h), nn.Tanh(), nn.Linear(h, d))

    def forward(self, t, y):
        if self.time:
            y = torch.cat([y, t.unsqueeze(-1).to(y.dtype)], -1)
        return self.net(y)


def _sorted_rows(B, T, lo=0.0, hi=3.0, dtype=F64):
    t = torch.rand(B, T, dtype=dtype).sort(1).values * (hi - lo) + lo
    t[:, 0] = lo + 0.1 * torch.rand(B, dtype=dtype)
    return t


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_per_sample_grid_equals_single_solves(method):
    torch.manual_seed(0)
    func = MLP(time=True).double()
    B, T = 5, 9
    y0 = torch.randn(B, 4, dtype=F64)
    t = _sorted_rows(B, T)
    kw = dict(step_size=0.05) if method == "rk4" else dict(rtol=1e-6, atol=1e-8)
    sol = odeint(func, y0, t, method=method, **kw)
    for b in range(B):
        one = odeint(func, y0[b : b + 1], t[b], method=method, **kw)
        torch.testing.assert_close(sol.ys[b], one.ys[0], rtol=1e-9, atol=1e-10)
        assert sol.stats.n_f_evals[b] == one.stats.n_f_evals[0]


def test_padded_rows_with_t_mask():
    torch.manual_seed(1)
    func = MLP(time=True).double()
    B, T = 4, 8
    y0 = torch.randn(B, 4, dtype=F64)
    t = _sorted_rows(B, T)
    lengths = [8, 5, 1, 3]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    t_padded = torch.where(mask, t, torch.full_like(t, 123.0))  # garbage in padding must be ignored
    sol = odeint(func, y0, t_padded, t_mask=mask, rtol=1e-7, atol=1e-9)
    for b, n in enumerate(lengths):
        one = odeint(func, y0[b : b + 1], t[b, :n], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(sol.ys[b, :n], one.ys[0], rtol=1e-9, atol=1e-10)
        # padded outputs repeat the last real output
        assert torch.equal(sol.ys[b, n:], sol.ys[b, n - 1 : n].expand(T - n, -1))


def test_mixed_directions_and_float32():
    torch.manual_seed(2)
    func = MLP()
    y0 = torch.randn(2, 4)
    t = torch.stack([torch.linspace(0, 2, 6), torch.linspace(2, 0, 6)])
    sol = odeint(func, y0, t)
    fwd = odeint(func, y0[:1], t[0]).ys
    bwd = odeint(func, y0[1:], t[1]).ys
    torch.testing.assert_close(sol.ys, torch.cat([fwd, bwd]))
    assert sol.ys.dtype == torch.float32 and torch.isfinite(sol.ys).all()


def test_easy_samples_do_not_pay_for_hard_ones():
    lam = torch.tensor([[-0.1], [-30.0]], dtype=F64)
    sol = odeint(lambda t, y: lam * y, torch.ones(2, 1, dtype=F64), torch.linspace(0, 2, 5, dtype=F64))
    assert sol.stats.n_f_evals[0] < sol.stats.n_f_evals[1] / 2


# ---------------------------------------------------------------------------------------------------
# gradients (autograd through the steps) vs finite differences and torchdiffeq
def _loss(ys, w):
    return (ys * w).sum()


def finite_difference_y0(func, y0, t, w, eps=1e-6, **kw):
    """Central differences of L = Σ ys·w with respect to every entry of y0 (float64)."""
    fd = torch.zeros_like(y0)
    with torch.no_grad():
        for i in range(y0.shape[0]):
            for j in range(y0.shape[1]):
                e = torch.zeros_like(y0)
                e[i, j] = eps
                fd[i, j] = (_loss(odeint(func, y0 + e, t, **kw).ys, w) - _loss(odeint(func, y0 - e, t, **kw).ys, w)) / (
                    2 * eps
                )
    return fd


def test_autograd_matches_finite_differences_and_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    torch.manual_seed(3)
    func = MLP(d=3, h=8).double()
    y0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.9, 1.5], dtype=F64)
    w = torch.randn(2, 4, 3, dtype=F64)
    kw = dict(rtol=1e-10, atol=1e-12)
    loss = _loss(odeint(func, y0, t, **kw).ys, w)
    gy0, *gp = torch.autograd.grad(loss, [y0, *func.parameters()])

    fd = finite_difference_y0(func, y0.detach(), t, w, **kw)
    torch.testing.assert_close(gy0, fd, rtol=1e-5, atol=1e-7)

    # torchdiffeq on the same problem (its func takes a scalar t)
    y0b = y0.detach().clone().requires_grad_(True)
    ys_td = torchdiffeq.odeint(lambda s, y: func(s.expand(y.shape[0]), y), y0b, t, method="dopri5", **kw)
    loss_td = _loss(ys_td.permute(1, 0, 2), w)
    gy0_td, *gp_td = torch.autograd.grad(loss_td, [y0b, *func.parameters()])
    torch.testing.assert_close(gy0, gy0_td, rtol=1e-6, atol=1e-8)
    for a, b in zip(gp, gp_td, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------
# failure modes → SolverError naming method, time reached and number of failed samples
def test_max_steps_exceeded():
    with pytest.raises(SolverError, match=r"dopri5: max_steps=5 exceeded for 2 of 2 sample\(s\), stopped at t"):
        odeint(
            lambda t, y: torch.cos(10 * t).unsqueeze(-1) * y, torch.ones(2, 1), torch.tensor([0.0, 50.0]), max_steps=5
        )


def test_step_size_underflow_on_blow_up():
    # y' = y² with y0 = 1 blows up at t = 1; the second sample (y0 = 0.1) is fine until t = 10
    y0 = torch.tensor([[1.0], [0.1]], dtype=F64)
    with pytest.raises(SolverError) as ei:
        odeint(lambda t, y: y * y, y0, torch.tensor([0.0, 2.0], dtype=F64), method="tsit5")
    msg = str(ei.value)
    assert msg.startswith("tsit5: ") and "1 of 2 sample(s)" in msg, msg
    assert "underflow" in msg or "non-finite" in msg
    t_reached = float(msg.split("stopped at t=")[1].split(";")[0])
    assert 0.9 < t_reached <= 1.001  # blow-up at t = 1 (up to the tolerance)


def test_non_finite_state():
    def f(t, y):
        return torch.where(t.unsqueeze(-1) > 0.5, torch.full_like(y, float("nan")), -y)

    with pytest.raises(SolverError, match=r"bosh3: state or derivative became non-finite .* 3 of 3 sample"):
        odeint(f, torch.ones(3, 2), torch.tensor([0.0, 1.0]), method="bosh3")
    with pytest.raises(SolverError, match=r"euler: state became non-finite .* 3 of 3 sample.*t=0\.6"):
        odeint(f, torch.ones(3, 2), torch.linspace(0, 1, 6), method="euler")


@pytest.mark.parametrize(
    "kwargs, t, match",
    [
        (dict(), torch.tensor([0.0, 1.0, 0.5]), "strictly increasing or strictly decreasing"),
        (dict(), torch.tensor([0.0, 1.0, 1.0]), "strictly increasing"),
        (dict(method="rk45"), torch.tensor([0.0, 1.0]), "unknown method 'rk45'; choose one of"),
        (dict(rtol=0.0), torch.tensor([0.0, 1.0]), "rtol must be a number > 0"),
        (dict(atol=-1e-3), torch.tensor([0.0, 1.0]), "atol must be a number > 0"),
        (dict(), torch.zeros(3, 2), r"t is \[B, T\] with B=3 but y0 has batch 2"),
        (
            dict(t_mask=torch.tensor([[True, False, True], [True, True, True]])),
            torch.tensor([0.0, 1.0, 2.0]),
            "padding in the middle of row",
        ),
        (
            dict(t_mask=torch.ones(2, 2, dtype=torch.bool)),
            torch.tensor([0.0, 1.0, 2.0]),
            r"t_mask must be a bool "
            r"tensor \[B, T\]",
        ),
        (dict(method="dopri5", step_size=0.1), torch.tensor([0.0, 1.0]), "step_size is for fixed-step methods"),
        (dict(adjoint_mode="magic"), torch.tensor([0.0, 1.0]), "unknown adjoint_mode"),
    ],
)
def test_invalid_arguments(kwargs, t, match):
    with pytest.raises(ValueError, match=match):
        odeint(lambda t, y: -y, torch.ones(2, 3), t, **kwargs)


def test_invalid_y0_shape():
    with pytest.raises(ValueError, match=r"y0 must be a tensor \[B, D\]"):
        odeint(lambda t, y: -y, torch.ones(3), torch.tensor([0.0, 1.0]))


@pytest.mark.slow
def test_no_grad_solve_flushes_records_and_matches_grad_solve():
    """Without a graph, recorded steps are turned into outputs every few records (flat memory): same result."""
    torch.manual_seed(7)
    omega = torch.tensor(8.0, dtype=F64, requires_grad=True)  # a parameter: the solve below builds a graph

    def func(t, y):
        return omega * torch.stack([y[:, 1], -y[:, 0]], 1)

    y0 = torch.randn(6, 2, dtype=F64)
    t = _sorted_rows(6, 40, hi=20.0)
    with_grad = odeint(func, y0, t, rtol=1e-7, atol=1e-9)
    assert with_grad.stats.n_accepted.max() > 64  # enough recorded steps for several flushes
    with torch.no_grad():
        no_grad = odeint(func, y0, t, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(no_grad.ys, with_grad.ys.detach(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# the step-size controller (one object for the forward solve and the backsolve adjoint)
def test_controller_tensor_and_scalar_forms_agree():
    from ts_neuralode.solvers.controller import FACTOR_MAX, FACTOR_MIN, PIController
    from ts_neuralode.solvers.tableaus import METHODS as TABLEAUS

    ctl = PIController.for_tableau(TABLEAUS["dopri5"])
    ratios = [0.0, 1e-6, 0.3, 1.0, 2.5, math.inf]
    r = torch.tensor(ratios, dtype=F64)
    prev = ctl.initial_term(len(ratios), F64, torch.device("cpu"))
    fac = ctl.factor(r.clone(), prev)
    for i, x in enumerate(ratios):
        assert fac[i].item() == pytest.approx(ctl.factor_scalar(x, ctl.initial_term_scalar()), rel=1e-12)
    assert fac[0] == FACTOR_MAX and fac[-1] == FACTOR_MIN  # a perfect step grows most, a failed one shrinks most
    accept = r <= 1.0
    after = ctl.after_accept(r.clone(), accept, prev)
    for i, x in enumerate(ratios):
        expected = ctl.after_accept_scalar(x) if x <= 1.0 else prev[i].item()
        assert after[i].item() == pytest.approx(expected, rel=1e-12)


def test_carried_step_continues_a_solve(margin):
    """``first_step`` = the previous solve's ``stats.next_dt``: no initial-step search (one evaluation fewer per
    solve), the same accuracy, and consecutive short intervals take one step each once the step is carried."""
    f, y0, exact = _oscillator()
    grid = torch.linspace(0.0, 3.0, 31, dtype=F64)
    y, dt, nfe, nfe_fresh = y0, None, [], []
    for a, b in zip(grid[:-1], grid[1:], strict=True):
        fresh = odeint(f, y, torch.stack((a, b)), rtol=1e-6, atol=1e-8)
        sol = odeint(f, y, torch.stack((a, b)), rtol=1e-6, atol=1e-8, first_step=dt)
        dt, y = sol.stats.next_dt, sol.ys[:, -1]
        assert dt.shape == (2,) and bool((dt > 0).all())
        nfe.append(int(sol.stats.n_f_evals.max()))
        nfe_fresh.append(int(fresh.stats.n_f_evals.max()))
    margin("max error after 30 carried solves", float((y - exact(3.0)).abs().max()), 1e-5)
    assert max(nfe[1:]) == 7  # f(t0) + one 6-evaluation dopri5 step: the carried step spans each interval
    assert sum(nfe) < sum(nfe_fresh)
    with pytest.raises(ValueError, match="first_step as a tensor must be"):
        odeint(f, y0, grid, first_step=torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_no_graph_forward_equals_the_graph_forward(method, monkeypatch, margin):
    """Without a gradient graph the core writes the stages into one preallocated block and evaluates the dense
    output in chunks with the step length folded into the last Horner factor; with one it stacks the stages and
    scales the coefficients. Same steps, same outputs up to float rounding — across many chunks and a ragged
    last one (tiny chunks forced)."""
    import ts_neuralode.solvers.dense as dense

    monkeypatch.setattr(dense, "CHUNK_ELEMS", 3 * 50)  # D=3: 50 query rows per chunk
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))
    y0 = torch.randn(37, 3)
    t = torch.cat([torch.zeros(37, 1), torch.rand(37, 22).sort(1).values * 3 + 1e-3], 1)  # per-sample grids
    with torch.no_grad():
        a = odeint(lambda tt, y: net(y), y0, t, method=method)
    b = odeint(lambda tt, y: net(y), y0.clone().requires_grad_(True), t, method=method)
    for k in ("n_f_evals", "n_accepted", "n_rejected"):
        assert torch.equal(getattr(a.stats, k), getattr(b.stats, k)), k
    margin("max |no-graph - graph| output", float((a.ys - b.ys.detach()).abs().max()), 1e-5)

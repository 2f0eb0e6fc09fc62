"""odeint_jumps: one adaptive solve through per-row grids with state jumps (the filtering models' pass)."""

from __future__ import annotations

import math

import pytest
import torch

from ts_neuralode.solvers import ODEOptions, SolverError, odeint, odeint_jumps

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


def decay(t, y):
    return -y


def plus_one(y, at, pos):
    return y + 1.0


def exact_decay_with_jumps(t, jump_at, y0):
    """y' = -y, y += 1 after each jump: the states before the jump at every time (closed form)."""
    B, N = t.shape
    out = torch.empty(B, N, dtype=torch.float64)
    for b in range(B):
        y = float(y0[b])
        if jump_at[b, 0]:
            pre, y = y, y + 1.0
        else:
            pre = y
        out[b, 0] = pre
        for n in range(1, N):
            y = y * math.exp(-(float(t[b, n]) - float(t[b, n - 1])))
            out[b, n] = y
            if jump_at[b, n]:
                y = y + 1.0
    return out


def grid(B=4, N=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(B, N, generator=g, dtype=torch.float64) * 4, 1).values
    t[:, 0] = 0.0
    jump_at = torch.rand(B, N, generator=g) < 0.5
    return t, jump_at


def test_matches_the_closed_form():
    t, jump_at = grid()
    y0 = torch.linspace(0.5, 2.0, 4, dtype=torch.float64).unsqueeze(1)
    sol = odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions(rtol=1e-8, atol=1e-10))
    exact = exact_decay_with_jumps(t, jump_at, y0.squeeze(1))
    torch.testing.assert_close(sol.ys.squeeze(-1), exact, rtol=1e-6, atol=1e-8)
    last = exact[:, -1] + jump_at[:, -1].double()
    torch.testing.assert_close(sol.y_end.squeeze(-1), last, rtol=1e-6, atol=1e-8)
    assert (sol.stats.n_accepted > 0).all()


def field():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def chained(f, y0, t, jump_at, jump, rtol, atol):
    """The same problem as a chain of interval solves (what the filtering models did before), step carried."""
    B, N = t.shape
    y = torch.where(jump_at[:, :1], jump(y0, jump_at[:, 0], torch.zeros(B, dtype=torch.long)), y0)
    outs, dt = [y0], None
    for n in range(1, N):
        sol = odeint(lambda tt, yy: f(yy), y, t[:, n - 1 : n + 1], rtol=rtol, atol=atol, first_step=dt)
        dt = sol.stats.next_dt
        pre = sol.ys[:, -1]
        outs.append(pre)
        y = torch.where(jump_at[:, n : n + 1], jump(pre, jump_at[:, n], torch.full((B,), n)), pre)
    return torch.stack(outs, 1), y


def test_matches_interval_by_interval_solves_values_and_gradients():
    f = field()
    t, jump_at = grid(B=5, N=12, seed=1)
    t = t.float()
    w = torch.randn(3, 3)

    def jump(y, at, pos):
        return torch.tanh(y @ w) + 0.1 * pos.unsqueeze(1)

    y0 = torch.randn(5, 3)
    res = []
    for how in ("jumps", "chained"):
        f.zero_grad()
        if how == "jumps":
            sol = odeint_jumps(lambda tt, yy: f(yy), y0, t, jump_at, jump, ODEOptions(rtol=1e-6, atol=1e-8))
            ys, last = sol.ys, sol.y_end
        else:
            ys, last = chained(f, y0, t, jump_at, jump, 1e-6, 1e-8)
        (ys.square().sum() + last.sum()).backward()
        res.append((ys.detach(), last.detach(), torch.cat([p.grad.flatten() for p in f.parameters()])))
    (a, la, ga), (b, lb, gb) = res
    assert (a[:, 1:] - a[:, :-1]).abs().max() > 1e-2  # something happens
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)


def test_equal_times_read_after_the_jump_and_padding_repeats_the_end():
    """A real time equal to the one before it comes after that position's jump; padding (t_mask False) repeats the
    row's last real output, as in odeint."""
    t = torch.tensor([[0.0, 0.5, 0.5, 0.5, 1.0, 1.0], [0.0, 0.3, 0.6, 0.9, 1.2, 1.5]], dtype=torch.float64)
    jump_at = torch.tensor([[False, True, False, True, True, False], [True, False, True, False, False, True]])
    t_mask = torch.tensor([[True, True, True, True, True, False], [True] * 6])
    y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    sol = odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions(rtol=1e-9, atol=1e-11), t_mask=t_mask)
    e = math.exp(-0.5)
    row0 = [1.0, e, e + 1, e + 1, (e + 2) * e]  # positions 2 and 3 at t = 0.5 come after the jump at position 1
    torch.testing.assert_close(sol.ys[0, :5, 0], torch.tensor(row0, dtype=torch.float64), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(sol.ys[0, 5], sol.ys[0, 4])  # padding: the last real output (before its jump)
    torch.testing.assert_close(sol.y_end[0, 0], torch.tensor(row0[-1] + 1, dtype=torch.float64))
    exact = exact_decay_with_jumps(t[1:], jump_at[1:], y0[1:, 0])
    torch.testing.assert_close(sol.ys[1:, :, 0], exact, rtol=1e-7, atol=1e-9)


def test_backwards_in_time():
    t, jump_at = grid(B=3, N=7, seed=2)
    y0 = torch.ones(3, 1, dtype=torch.float64)
    fwd = odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions(rtol=1e-9, atol=1e-11))
    # y' = -y backwards from -t: the same as forwards for the time-reversed field
    bwd = odeint_jumps(lambda tt, y: y, y0, -t, jump_at, plus_one, ODEOptions(rtol=1e-9, atol=1e-11))
    torch.testing.assert_close(bwd.ys, fwd.ys, rtol=1e-7, atol=1e-9)


def test_max_steps_bounds_each_segment_not_the_whole_solve():
    t = torch.linspace(0, 10, 11, dtype=torch.float64).unsqueeze(0)
    every = torch.ones(1, 11, dtype=torch.bool)
    osc = lambda tt, y: torch.cat([y[:, 1:], -9 * y[:, :1]], 1)  # noqa: E731  ω = 3: several steps per unit
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ok = odeint_jumps(osc, y0, t, every, lambda y, a, p: y, ODEOptions(rtol=1e-6, atol=1e-8, max_steps=40))
    total = int(ok.stats.n_accepted + ok.stats.n_rejected)
    assert total > 40  # more steps in all than max_steps, none of the segments more
    with pytest.raises(SolverError, match="max_steps=40 exceeded"):
        odeint_jumps(osc, y0, t, torch.zeros_like(every), lambda y, a, p: y, ODEOptions(rtol=1e-6, max_steps=40))


def test_refuses_what_it_cannot_do():
    t, jump_at = grid(B=2, N=4)
    y0 = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="adaptive method"):
        odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions(method="rk4"))
    with pytest.raises(ValueError, match="same direction"):
        odeint_jumps(decay, y0, torch.stack([t[0], -t[1]]), jump_at, plus_one, ODEOptions())
    with pytest.raises(ValueError, match="jump_at"):
        odeint_jumps(decay, y0, t, jump_at[:, :2], plus_one, ODEOptions())
    with pytest.raises(ValueError, match="first_step"):
        odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions(), first_step=torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="monotone"):
        odeint_jumps(decay, y0, t.flip(1)[:, [1, 0, 2, 3]], jump_at, plus_one, ODEOptions())
    carried = odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions(), first_step=torch.full((2,), 0.05).double())
    torch.testing.assert_close(
        carried.ys, odeint_jumps(decay, y0, t, jump_at, plus_one, ODEOptions()).ys, rtol=1e-3, atol=1e-4
    )


def test_a_failing_row_raises_one_solver_error():
    """y' = y² blows up at t = 1/y0: the row that reaches it fails with the solver's one-line error (no hang, no NaN
    returned); a jump that makes the state NaN fails as non-finite."""
    t = torch.linspace(0, 2, 5, dtype=torch.float64).unsqueeze(0).expand(2, 5)
    jump_at = torch.zeros(2, 5, dtype=torch.bool)
    y0 = torch.tensor([[1.0], [0.1]], dtype=torch.float64)
    with pytest.raises(SolverError, match="1 of 2 sample"):
        odeint_jumps(lambda tt, y: y * y, y0, t, jump_at, plus_one, ODEOptions())
    nan_jump = lambda y, at, pos: torch.full_like(y, math.nan)  # noqa: E731
    jump_at = torch.zeros(2, 5, dtype=torch.bool)
    jump_at[0, 2] = True
    with pytest.raises(SolverError, match="non-finite"):
        odeint_jumps(decay, torch.ones(2, 1, dtype=torch.float64), t, jump_at, nan_jump, ODEOptions())

"""The evolution interface: ODE and flow evolutions are drop-in replacements for each other."""

import pytest
import torch
from torch import nn

from ts_neuralode.errors import ConfigError
from ts_neuralode.models.evolution import (
    EVOLUTION_KINDS,
    EvolutionConfig,
    FlowEvolution,
    GRUODEField,
    ODEEvolution,
    StepCarry,
    make_evolution,
)

FLOW_KINDS = ("resnet_flow", "gru_flow", "coupling_flow")
SMALL = dict(hidden_dim=16, num_layers=1, flow_layers=2)


@pytest.fixture(autouse=True)
def _seed(one_thread):  # small tensors: conftest's one_thread
    torch.manual_seed(0)


def _padded_grid(B=4, T=8, lo=0.0, hi=5.0):
    """Per-sample strictly increasing times with rows of different lengths, padding after the real points."""
    lengths = torch.tensor([T, T - 3, 2, T - 1])[:B]
    t = torch.sort(torch.rand(B, T) * (hi - lo) + lo, dim=1).values
    t[:, 0] = lo
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return t, mask, lengths


# --------------------------------------------------------------------------------------------- flows


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_flow_evolution_starts_at_h0_and_is_the_flow_from_t0(kind):
    evo = make_evolution(kind, 3, time_embedding="fourier_bounded", **SMALL)
    assert isinstance(evo, FlowEvolution)
    h0 = torch.rand(5, 3) * 1.8 - 0.9
    for t in (
        torch.linspace(0.5, 4, 9),  # shared
        torch.sort(torch.rand(5, 9) * 4, dim=1).values,  # per sample
        torch.linspace(4, -2, 9),  # backwards
    ):
        out = evo(h0, t)
        assert out.shape == (5, 9, 3)
        assert torch.equal(out[:, 0], h0)
        tt = t.expand(5, 9)
        expected = evo.flow((tt - tt[:, :1]).unsqueeze(-1), h0.unsqueeze(1).expand(5, 9, 3))
        assert torch.allclose(out, expected)
        # only elapsed time matters
        assert torch.allclose(evo(h0, t + 7.0), out, atol=1e-5)
        assert evo.last_nfe == 0
        # the states really move
        assert (out[:, -1] - h0).abs().max() > 1e-3
    # the inverse recovers h0 from the whole trajectory
    evo.eval()
    t = torch.linspace(1.0, 3.0, 9)
    out = evo(h0, t)
    assert torch.allclose(evo.inverse(out, t, t0=1.0), h0.unsqueeze(1).expand(5, 9, 3), atol=1e-5)


@pytest.mark.parametrize("kind", ("ode",) + FLOW_KINDS)
def test_t_mask_padding_repeats_the_last_real_output(kind):
    evo = make_evolution(kind, 2, **SMALL)
    t, mask, lengths = _padded_grid()
    t_garbage = torch.where(mask, t, torch.full_like(t, 123.0)).clone()
    # padding repeats the row's last real time (Batch convention) -- try both conventions for flows
    t_repeat = torch.where(mask, t, t.gather(1, (lengths - 1).unsqueeze(1)))
    h0 = torch.randn(4, 2) * 0.5
    grids = [t_repeat] if kind == "ode" else [t_repeat, t_garbage]
    for grid in grids:
        out = evo(h0, grid, mask)
        assert torch.equal(out[:, 0], h0)
        for b in range(4):
            n = int(lengths[b])
            row = evo(h0[b : b + 1], t[b, :n])
            assert torch.allclose(out[b, :n], row[0], atol=2e-4), (kind, b)
            assert torch.equal(out[b, n:], out[b, n - 1 : n].expand(out.shape[1] - n, 2))


# ----------------------------------------------------------------------------------------------- ODE


class LinearField(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)
        self.seen_t_shapes = set()

    def forward(self, t, y):
        self.seen_t_shapes.add(tuple(t.shape))
        return y @ self.A.T


def _analytic(A, h0, t):
    """h(t) = expm(A (t - t0)) h0 for t [B, T]."""
    dt = t - t[:, :1]
    return torch.einsum("btij,bj->bti", torch.linalg.matrix_exp(A * dt[..., None, None]), h0)


@pytest.mark.slow
@pytest.mark.parametrize("method,opts", [("dopri5", dict(rtol=1e-7, atol=1e-9)), ("rk4", dict(step_size=0.01))])
def test_ode_evolution_matches_the_analytic_linear_solution(method, opts):
    A = torch.tensor([[-0.4, 1.0], [-1.0, -0.4]], dtype=torch.float64)  # damped rotation
    field = LinearField(A)
    evo = ODEEvolution(2, EvolutionConfig(method=method, **opts), field=field)
    h0 = torch.randn(3, 2, dtype=torch.float64)
    for t in (
        torch.linspace(0, 4, 11, dtype=torch.float64),
        torch.linspace(2, -1, 7, dtype=torch.float64),  # backwards
        torch.sort(torch.rand(3, 6, dtype=torch.float64) * 3, dim=1).values,
    ):  # per sample
        out = evo(h0, t)
        assert torch.equal(out[:, 0], h0)
        expected = _analytic(A, h0, t.expand(3, t.shape[-1]))
        assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
        assert evo.last_nfe > 0
    assert field.seen_t_shapes == {(3,)}  # the field is called with each sample's own time [B]


@pytest.mark.parametrize("vector_field", ["mlp", "gru"])
def test_ode_evolution_adjoint_gradients_match_autograd(vector_field):
    h0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0, 2, 6, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(1)
        evo = make_evolution(
            "ode", 3, hidden_dim=16, num_layers=1, rtol=1e-8, atol=1e-9, adjoint=adjoint, vector_field=vector_field
        ).double()
        h = h0.clone().requires_grad_(True)
        evo(h, t).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in evo.parameters()] + [h.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_gru_ode_field_is_the_gru_ode_bayes_equation_and_keeps_the_state_box():
    field = GRUODEField(3)
    h = torch.rand(5, 3) * 2 - 1
    Uzr, bzr = field.lin_zr.weight, field.lin_zr.bias
    z = torch.sigmoid(h @ Uzr[:3].T + bzr[:3])
    r = torch.sigmoid(h @ Uzr[3:].T + bzr[3:])
    g = torch.tanh((r * h) @ field.lin_h.weight.T + field.lin_h.bias)
    assert torch.allclose(field(torch.zeros(5), h), (1 - z) * (g - h))
    evo = make_evolution("ode", 3, vector_field="gru")
    out = evo(h, torch.linspace(0, 20, 30))
    assert out.abs().max() < 1.0  # g ∈ (-1, 1) makes the box invariant
    assert evo.last_nfe > 0


# ----------------------------------------------------------------------------------------- drop-in


def test_every_kind_is_built_and_called_the_same_way():
    opts = dict(
        hidden_dim=16,
        num_layers=2,
        method="rk4",
        rtol=1e-3,
        atol=1e-4,
        step_size=0.1,
        adjoint=False,
        flow_layers=2,
        time_embedding="tanh",
        vector_field="mlp",
    )
    h0 = torch.randn(3, 4, requires_grad=True)
    t = torch.linspace(1, 0, 5)  # backwards, as the encoders run
    for kind in EVOLUTION_KINDS:
        evo = make_evolution(kind, 4, **opts)
        out = evo(h0, t)
        assert out.shape == (3, 5, 4) and torch.equal(out[:, 0], h0)
        out.sum().backward()
        assert torch.isfinite(h0.grad).all()
        h0.grad = None
        assert evo(h0, t[:1]).shape == (3, 1, 4)  # a one-point grid is h0 itself
    # one config serves both: the kind picks the evolution, the options that do not apply are unused
    assert isinstance(EvolutionConfig("ode", flow_layers=3, time_embedding="log").build(4), ODEEvolution)
    assert isinstance(EvolutionConfig("gru_flow", method="euler", vector_field="gru").build(4), FlowEvolution)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="neural_sde"), "evolution='neural_sde'"),
        (dict(vector_field="lstm"), "vector_field='lstm'"),
        (dict(time_embedding="sinusoidal"), "time_embedding='sinusoidal'"),
        (dict(method="rk45"), "method='rk45'"),
        (dict(rtol=0.0), "rtol=0.0"),
        (dict(atol=-1e-4), "atol=-0.0001"),
        (dict(step_size=-0.1), "step_size=-0.1"),
        (dict(adjoint="yes"), "adjoint='yes'"),
        (dict(hidden_dim=0), "hidden_dim=0"),
        (dict(num_layers=-1), "num_layers=-1"),
        (dict(flow_layers=0), "flow_layers=0"),
        (dict(kind="resnet_flow", activation="gelu"), "activation='gelu'"),
        (dict(dim=0), "dim=0"),
    ],
)
def test_make_evolution_rejects_bad_options_with_one_clear_line(kwargs, match):
    kind = kwargs.pop("kind", "ode")
    dim = kwargs.pop("dim", 3)
    with pytest.raises(ConfigError, match=match) as err:
        make_evolution(kind, dim, **kwargs)
    assert "\n" not in str(err.value)
    # the same option fails for the other kinds too (a typo never passes silently)
    if kind == "ode" and "activation" not in kwargs:
        with pytest.raises(ConfigError):
            make_evolution("coupling_flow", dim, **kwargs)


def test_evolution_rejects_bad_shapes():
    evo = make_evolution("coupling_flow", 3, **SMALL)
    with pytest.raises(ValueError, match=r"h0 must be \[B, 3\]"):
        evo(torch.zeros(2, 4), torch.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="B=5"):
        evo(torch.zeros(2, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="t_mask"):
        evo(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("kind", ("ode",) + FLOW_KINDS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_leading_sample_dims_share_the_times_of_their_row(kind, per_sample):
    evo = make_evolution(kind, 3, **SMALL).eval()
    S, B, T = 2, 4, 6
    z0 = torch.randn(S, B, 3)
    if per_sample:
        t, mask, _ = _padded_grid(B=B, T=T)
    else:
        t, mask = torch.linspace(0, 2, T), None
    out = evo(z0, t, mask)
    assert out.shape == (S, B, T, 3)
    for s in range(S):  # each sample row is the plain [B, H] call
        torch.testing.assert_close(out[s], evo(z0[s], t, mask), rtol=1e-5, atol=1e-6)


def test_carry_steps_across_intervals(margin):
    """Solves handed one ``StepCarry`` start from the step the last one ended with: fewer evaluations, the same
    states (within the tolerance); without it every solve searches its first step. The carry is the caller's:
    nothing of it stays on the evolution."""
    torch.manual_seed(0)
    evo = make_evolution("ode", 4, method="dopri5", rtol=1e-6, atol=1e-8).double()
    h0 = torch.randn(3, 4, dtype=torch.float64)
    grid = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)

    def run(carry=None):
        h, nfe = h0, 0.0
        for i in range(1, len(grid)):
            h = evo(h, grid[i - 1 : i + 1], carry=carry)[:, -1]
            nfe += evo.last_nfe
        return h, nfe

    h_fresh, nfe_fresh = run()
    carry = StepCarry()
    h_carried, nfe_carried = run(carry)
    assert carry.next_dt is not None and carry.next_dt.shape == (3,)
    assert not any(isinstance(v, StepCarry) for v in vars(evo).values())  # the evolution keeps no carry
    margin("max |carried - fresh| state", float((h_carried - h_fresh).abs().max()), 1e-5)
    assert nfe_carried < nfe_fresh

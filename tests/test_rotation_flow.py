"""The rotation flow layer (``EvolutionConfig.rotation_pairs``): an exact flow whose frequency is read from the
state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TEST_SEED
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.evolution import make_evolution
from ts_neuralode.models.evolution_config import EvolutionConfig
from ts_neuralode.models.flows import make_flow
from ts_neuralode.models.rotation_flow import RotationFlowLayer

KINDS = ("resnet_flow", "gru_flow", "coupling_flow")


def _layer() -> RotationFlowLayer:
    torch.manual_seed(TEST_SEED)
    layer = RotationFlowLayer(7, 2, hidden_dim=16).double().requires_grad_(False)
    with torch.no_grad():  # frequencies that depend on the state (the last layer starts at zero)
        layer.net[-1].weight.normal_(0.0, 0.5)
    return layer


def test_rotation_layer_is_an_exact_flow():
    """``F(0, x) = x``; ``F(s + t, x) = F(s, F(t, x))`` (the exact flow of a linear ODE); the inverse is exact; each
    rotated pair keeps its length; the channels the frequencies are read from are left as they are."""
    layer = _layer()
    x = torch.randn(5, 9, 7, dtype=torch.float64)
    s, t = torch.rand(5, 9, 1, dtype=torch.float64) * 3, torch.rand(5, 9, 1, dtype=torch.float64) * 3
    assert torch.equal(layer(torch.zeros_like(t), x), x)
    torch.testing.assert_close(layer(s + t, x), layer(s, layer(t, x)), rtol=0, atol=1e-12)
    y = layer(t, x)
    torch.testing.assert_close(layer.inverse(t, y), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(y[..., 4:], x[..., 4:], rtol=0, atol=0)
    pairs = lambda v: v[..., :4].reshape(5, 9, 2, 2).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pairs(y), pairs(x), rtol=0, atol=1e-12)
    omega = layer.omega(x).detach()
    assert omega.shape == (5, 9, 2) and bool((omega > 0).all())
    assert float(omega.std(dim=(0, 1)).min()) > 1e-3  # the frequencies differ between states
    # a pair turns by ω t: the angle of (a, b) advances by exactly that
    angle = lambda v: torch.atan2(v[..., 1], v[..., 0])  # noqa: E731
    turned = torch.remainder(angle(y) - angle(x) - t[..., 0] * omega[..., 0] + torch.pi, 2 * torch.pi) - torch.pi
    assert float(turned.abs().max()) < 1e-9


def test_rotation_pairs_is_one_evolution_option_for_every_flow():
    assert EvolutionConfig().rotation_pairs == 0  # default: the flows as they were
    for kind in KINDS:
        assert not any(isinstance(layer, RotationFlowLayer) for layer in make_flow(kind, 6).layers)
        flow = make_evolution(kind, 6, rotation_pairs=2).flow
        assert isinstance(flow.layers[0], RotationFlowLayer) and flow.layers[0].pairs == 2
        assert flow.guaranteed_invertible == make_flow(kind, 6).guaranteed_invertible
        x, t = torch.randn(3, 4, 6), torch.linspace(0.5, 2, 4).view(1, 4, 1)
        assert torch.equal(flow(torch.zeros(3, 4, 1), x), x)
        torch.testing.assert_close(flow.inverse(t, flow(t, x)), x, rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match=r"rotation_pairs=3 needs a state of more than 6 channels.*<= 2"):
        make_evolution("coupling_flow", 6, rotation_pairs=3)
    with pytest.raises(ConfigError, match="rotation_pairs"):
        EvolutionConfig(kind="gru_flow", rotation_pairs=-1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_flow_with_rotations_fits_a_frequency_read_from_z0(kind, margin):
    """Six series ``sin(ω t + p)`` with ω from 2.5 to 5 (the periodic set's range) and z0 a *linear* map of (ω, p):
    each flow with 2 rotating pairs and a linear read-out fits them in 300 Adam steps (the frequency reaches the
    output through the layer's state-dependent ω and the flow's own layers). Measured 2026-12-07 (seeds 0-2, 1
    thread): 7e-4-4.0e-3 over the three kinds; without the rotation 1.9e-3-5.5e-2 (representing the family is
    not what the rotation adds; results/flows_periodic.md: it gives the latent model's training a way off the
    mean-curve plateau). The bound 0.05 is a tenth of the signal's variance (0.5)."""
    torch.manual_seed(TEST_SEED)
    omega, phase = torch.linspace(2.5, 5.0, 6), torch.linspace(0.0, 1.5, 6)
    t = torch.linspace(0, 5, 40)
    y = torch.sin(omega[:, None] * t + phase[:, None])  # [6, T]
    info = torch.stack([omega - 3.75, phase - 0.75], dim=-1)  # what z0 is made from
    enc, evo, dec = nn.Linear(2, 8), make_evolution(kind, 8, hidden_dim=16, rotation_pairs=2), nn.Linear(8, 1)
    params = [*enc.parameters(), *evo.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(300):
        loss = ((dec(evo(enc(info), t)).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    evo.eval()
    with torch.no_grad():
        mse = float(((dec(evo(enc(info), t)).squeeze(-1) - y) ** 2).mean())
    margin("MSE of the fitted sinusoids (frequency read from z0)", mse, 0.05)

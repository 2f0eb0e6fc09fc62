"""The Neural ODE classics (issue 16): smoke runs of scripts/odenet_digits.py and scripts/cnf_density.py, and the
CNF's log-density against a linear field whose density change is analytic."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


def _finite(x):
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


@pytest.mark.slow
def test_odenet_digits_quick(tmp_path):
    res = _script("odenet_digits").main(["--quick", "--out", str(tmp_path), "--threads", str(torch.get_num_threads())])
    page = (tmp_path / "odenet.md").read_text()
    assert page.startswith("# ODE-Net vs ResNet") and "--quick" in page
    saved = json.loads((tmp_path / "odenet.json").read_text())
    assert _finite(saved) and len(saved["table"]) == 4 and saved["sweep"]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in res["table"])
    ode = res["table"][-1]
    assert ode["nfe_f"] > 0 and ode["nfe_b"] > 0  # the adjoint's backward solve was counted
    # O(1) vs O(steps): structural, holds at any size (the adjoint saves one step's tensors at a time)
    rk4 = [r for r in res["sweep"] if r["model"] == "ODE-Net rk4"]
    adj = [r["saved_mib"] for r in rk4 if r["grad"] == "adjoint"]
    bp = [r["saved_mib"] for r in rk4 if r["grad"].startswith("backprop through")]
    assert adj[-1] <= 1.10 * adj[0] and bp[-1] > 2 * bp[0]


@pytest.mark.slow
def test_cnf_density_quick(tmp_path):
    res = _script("cnf_density").main(["--quick", "--out", str(tmp_path), "--threads", str(torch.get_num_threads())])
    assert (tmp_path / "cnf.md").read_text().startswith("# Continuous normalising flow")
    assert _finite(json.loads((tmp_path / "cnf.json").read_text()))
    assert len(res["rows"]) == 6 and all(math.isfinite(r["test_ll"]) for r in res["rows"])
    for png in res["pngs"]:
        size = (tmp_path / png).stat().st_size
        assert 0 < size < 200_000


A = torch.tensor([[-0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64)  # tr(A) = -0.1, not symmetric


@pytest.mark.slow
def test_cnf_linear_field_analytic():
    """f(z) = Az: z(T) = e^{AT} z(0) and log p(z(T)) = log p(z(0)) - T tr(A), for any z(0)."""
    cnf = _script("cnf_density")
    T = 1.5
    z0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dyn = cnf.CNFDynamics(cnf._LinearField(A), "exact")
    with torch.no_grad():
        zT, lT, _ = cnf.flow(dyn, z0, 0.0, T, method="dopri5", rtol=1e-10, atol=1e-10)
    M = torch.linalg.matrix_exp(A * T)
    torch.testing.assert_close(zT, z0 @ M.T, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(lT, torch.full_like(lT, -T * float(torch.trace(A))), rtol=1e-5, atol=1e-8)
    # the density of the push-forward of N(0, I): N(0, M M^T) at z(T)
    cov = M @ M.T
    pushed = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(zT)
    torch.testing.assert_close(cnf.std_normal_logp(z0) + lT, pushed, rtol=1e-5, atol=1e-8)
    # log p_x of the model x = e^{-AT} z, z ~ N(0, I): x ~ N(0, M^-1 M^-T), by the flow from x to the base
    x = z0
    lp, _ = cnf.log_likelihood(dyn, x, T, method="dopri5", rtol=1e-10, atol=1e-10)
    Minv = torch.linalg.inv(M)
    want = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), Minv @ Minv.T).log_prob(x)
    torch.testing.assert_close(lp.detach(), want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_cnf_hutchinson_unbiased_on_linear_field(noise):
    """The Hutchinson estimate e^T A e averages to tr(A) (margin 0.05: > 7 standard errors for either noise)."""
    cnf = _script("cnf_density")
    n, T = 8_000, 1.0
    z0 = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dyn = cnf.CNFDynamics(cnf._LinearField(A), "hutchinson", noise)
    dyn.draw_noise((n, 2), z0, torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, lT, _ = cnf.flow(dyn, z0, 0.0, T, method="rk4", step_size=0.25)
    assert abs(float(-lT.mean()) - float(torch.trace(A))) < 0.05


@pytest.mark.slow
def test_cnf_adjoint_gradient_matches_backprop():
    """The adjoint (double backward through the trace) gives the gradient of backprop through the solver."""
    cnf = _script("cnf_density")
    torch.manual_seed(0)
    field = cnf.TimeMLP(2, 8, 2).double()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = []
    for trace in ("exact", "hutchinson"):
        for adjoint in (False, True):
            dyn = cnf.CNFDynamics(field, trace)
            dyn.draw_noise((16, 2), x, torch.Generator().manual_seed(4))
            lp, _ = cnf.log_likelihood(dyn, x, 1.0, method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)
            grads.append(torch.autograd.grad(lp.mean(), list(field.parameters())))
    for a, b in ((grads[0], grads[1]), (grads[2], grads[3])):
        for ga, gb in zip(a, b, strict=True):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)

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

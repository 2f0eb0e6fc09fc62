"""A forecast's step budget travels with the call (an argument of it), never written into a live model."""

from __future__ import annotations

import threading

import pytest
import torch

from ts_neuralode.models.evolution import make_evolution
from ts_neuralode.solvers import SolverError


@pytest.mark.slow
def test_budget_applies_inside_the_call_only_and_leaves_the_model_alone():
    evo = make_evolution("ode", 3, method="rk4", step_size=0.5)  # 20 steps for t in [0, 10]
    config = evo.config
    h0, t = torch.zeros(2, 3), torch.tensor([0.0, 10.0])
    evo(h0, t)  # the model's own budget (10 000) suffices
    with pytest.raises(SolverError) as err:
        evo(h0, t, max_steps=5)
    assert err.value.max_steps == 5
    assert evo.config is config and evo.config.max_steps == config.max_steps  # nothing swapped on the model
    seen = []  # another thread (another forecast on the same model) keeps the model's own budget
    th = threading.Thread(target=lambda: seen.append(evo(h0, t).shape))
    th.start()
    th.join()
    assert seen == [torch.Size([2, 2, 3])]
    evo(h0, t)  # and after the budgeted call, the model's own again

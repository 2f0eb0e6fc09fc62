"""The correction weight a fit chooses for a window model on its held-out validation windows
(ts_neuralode.api.correction_gate): chosen and kept in the model directory, 0 for a correction that only hurts, 1 for
one that changes nothing (ties keep the model as trained)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.api.correction_gate import WEIGHTS, gate_correction, window_model
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = {"task": "forecast", "horizon": 1.0, "context": 4.0, "season": 1.0, "batch_size": 8}


def seasonal_frame(n_series: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_series):
        t = np.sort(rng.uniform(0, 8.0, 120))
        y = 2 * np.sin(2 * np.pi * t + i) + 0.2 * t + i + rng.normal(0, 0.1, t.size)
        rows.append(pd.DataFrame({"unique_id": f"s{i}", "ds": t, "y": y}))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    df = seasonal_frame()
    fc = Forecaster.fit(
        df,
        "ode_rnn",
        data_options=DATA,
        model_options={
            "normalize": "window",
            "base": "harmonic",
            "latent_dim": 4,
            "hidden_dim": 16,
            "evolution": {"kind": "ode", "method": "euler", "step_size": 0.25},
        },
        trainer={"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        output_dir=tmp_path_factory.mktemp("gate"),
        tracking=False,
        log_model=False,
        seed=0,
    )
    dm = IrregularTimeSeriesDataModule(df=df, **DATA)
    dm.setup("fit")
    return fc, dm


def test_the_fit_chooses_a_weight_and_the_model_directory_keeps_it(fitted, tmp_path):
    fc, _ = fitted
    wm = window_model(fc)
    assert wm is not None
    w = float(wm.correction_scale)
    assert min(abs(w - c) for c in WEIGHTS) < 1e-6
    wm.correction_scale.fill_(0.3)  # not a weight the gate would choose: the reload must read it back
    fc.save(tmp_path / "m")
    assert float(window_model(Forecaster.load(tmp_path / "m")).correction_scale) == pytest.approx(0.3)
    wm.correction_scale.fill_(w)


def test_a_harmful_correction_is_dropped_and_a_null_one_kept(fitted):
    fc, dm = fitted
    wm = window_model(fc)
    head = wm.inner.head[-1]
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    try:
        with torch.no_grad():  # a correction of +3 window scales everywhere: only hurts
            head.weight[: wm.inner.input_dim].zero_()
            head.bias[: wm.inner.input_dim].fill_(3.0)
        line = gate_correction(fc, dm)
        assert float(wm.correction_scale) == 0.0, line
        assert "x0 of the learned correction" in line
        # the choice and what it gained are recorded (the model choice ranks trials by the gated error)
        gate = fc.correction_gate
        assert gate["weight"] == 0.0 and gate["mae_as_trained"] > 1.5 * gate["mae"] > 0
        with torch.no_grad():  # no correction at all: every weight ties, the model as trained is kept
            head.bias[: wm.inner.input_dim].zero_()
        gate_correction(fc, dm)
        assert float(wm.correction_scale) == 1.0
    finally:
        head.load_state_dict(saved)


def test_a_fit_reports_the_gate_and_the_model_choice_ranks_by_it(fitted):
    from ts_neuralode.api.model_choice_study import gated_value

    fc, _ = fitted
    gate = fc.fit_info["correction_gate"]
    saved = Forecaster.load(fc.fit_info["model_dir"])  # as the fit left it (the test above re-gates fc)
    assert gate["weight"] == pytest.approx(float(window_model(saved).correction_scale))
    assert gate["mae"] > 0 and gate["mae_as_trained"] > 0
    # a trial's value: as trained, times what the chosen weight changed the validation error by
    harmful = {"weight": 0.0, "mae": 1.0, "mae_as_trained": 2.5}
    assert gated_value(2.0, "val_mae", harmful) == pytest.approx(0.8)
    assert gated_value(2.0, "val_mae", None) == 2.0  # no base, no gate
    assert gated_value(-3.0, "val_loss", harmful) == -3.0  # only error metrics are scaled
    assert gated_value(2.0, "val_mae", {**harmful, "mae": 3.0}) == 2.0  # never above the value as trained

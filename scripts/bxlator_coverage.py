"""Held-out coverage of the default (fit-calibrated) bands on GRU-ODE-Bayes' BXLator set (issue 25).

BXLator (1000 series of 2 channels with 0/1 masks, ~24 irregular points each over 50 time units) is not shipped:
pass the CSV of the GRU-ODE-Bayes repository (gru_ode_bayes/datasets/BXLator/BXLator.csv), e.g. from a git copy:

    git --git-dir=<gru_ode_bayes>/.git show HEAD:gru_ode_bayes/datasets/BXLator/BXLator.csv > /tmp/BXLator.csv
    python scripts/bxlator_coverage.py /tmp/BXLator.csv --epochs 5

The fit: the forecast task split by series (60% train / 20% validation / 20% test series), horizon 10; ``fit``
calibrates the bands on the validation series' last windows by itself. Scored: the test series (never trained on,
never calibrated on), 4 windows each (cutoffs 5 apart, the last ending at the series' end), raw vs default bands,
beside the last-value (locf) baseline scored by the same code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv")
    p.add_argument("--model", default="gru_ode")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    from ts_neuralode.api import backtest
    from ts_neuralode.api.forecast_frame import band_col

    torch.set_num_threads(args.threads)
    fit_args = [
        "--model.model",
        args.model,
        "--data.id_col",
        "ID",
        "--data.time_col",
        "Time",
        "--data.value_cols",
        "[Value_1, Value_2]",
        "--data.mask_cols",
        "[Mask_1, Mask_2]",
        "--data.task",
        "forecast",
        "--data.split_by",
        "series",
        "--data.horizon",
        "10",
        "--data.layout",
        "padded",
        "--data.batch_size",
        "50",
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.evolution.method",
        "rk4",
        "--model.evolution.step_size",
        "0.1",
    ]
    frame = pd.read_csv(args.csv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fc = backtest.refit_forecaster(fit_args, frame, tmp)
        fit_s = time.perf_counter() - t0
    test = fc.split_ids("test")
    kw = dict(n_windows=4, step=5.0, level=[50, 90], quantiles=None, num_samples=50, series=test)
    raw = fc.cross_validation(frame, 10.0, calibrated=False, **kw)
    cal = fc.cross_validation(frame, 10.0, calibrated=True, **kw)
    name = fc.name
    print(
        f"fit {fit_s:.0f} s, {len(test)} test series, {len(raw)} test points; calibration fitted on "
        f"{fc.calibration['fitted_on']['points']} validation points"
        if fc.calibration
        else "no calibration"
    )
    for label, cv in (("raw", raw), ("default (fit-calibrated)", cal)):
        cov = {
            lv: float(((cv["y"] >= cv[band_col(name, "lo", lv)]) & (cv["y"] <= cv[band_col(name, "hi", lv)])).mean())
            for lv in (50, 90)
        }
        print(f"{label}: coverage-50 {cov[50]:.3f}  coverage-90 {cov[90]:.3f}")
    mae = float((raw[name] - raw["y"]).abs().mean())
    locf = float((raw["locf"] - raw["y"]).abs().mean())
    print(f"MAE {mae:.4f}  locf MAE {locf:.4f}  ratio {mae / locf:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The quiet default: a demo-like fit, forecast and backtest print one line per stage and no warning a user cannot
act on (ts_neuralode.core.noise); --verbose shows the libraries' own messages again."""

from __future__ import annotations

import pytest

from ts_neuralode.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

NOISE = (
    "GPU available",
    "TPU available",
    "litlogger",
    "Downloading artifacts",
    "database tables",
    "LeafSpec",
    "tensorboardX",
    "logging interval",
    "Validating input example",
    "not found. Creating it",
    "Total params",
    "Trainer.fit` stopped",
    "INFO",
    "Warning",
    "warning",
)


def _lines(err: str) -> list[str]:
    """stderr lines, a progress bar (redrawn with \\r, cleared at its end) counted as none."""
    return [
        ln for ln in err.splitlines() if ln.strip() and "\r" not in ln and "it/s]" not in ln and "batch/s]" not in ln
    ]


@pytest.mark.slow
def test_demo_like_fit_forecast_backtest_print_one_line_per_stage(tmp_path, capfd):
    d = tmp_path
    uri = f"sqlite:///{d / 'mlflow.db'}"
    rc = main(
        [
            "fit",
            "--config",
            "configs/demo.yaml",
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(d),
            "--checkpoint_dir",
            str(d / "ck"),
            "--model_dir",
            str(d / "model"),
            "--tracking_uri",
            uri,
            "--artifact_location",
            str(d / "art"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    fit = _lines(capfd.readouterr().err)
    assert rc == 0, fit
    assert not [ln for ln in fit if any(n in ln for n in NOISE)], fit
    assert len(fit) <= 8, fit  # columns, best checkpoint, calibration, model directory, run, its view, model
    assert fit[0].startswith("data data/demo.csv: 12 series; targets y")
    assert any(ln.startswith("MLflow model models:/") for ln in fit), fit
    rc = main(
        [
            "forecast",
            "--model",
            str(d / "model"),
            "--data.path",
            "data/demo.csv",
            "--horizon",
            "2D",
            "--freq",
            "6h",
            "--out",
            str(d / "fc.csv"),
            "--plots",
            "false",
            "--progress",
            "false",
        ]
    )
    out = capfd.readouterr()
    assert rc == 0 and _lines(out.err) == [], out.err
    rc = main(
        [
            "backtest",
            "--model",
            str(d / "model"),
            "--data.path",
            "data/demo.csv",
            "--horizon",
            "2D",
            "--n_windows",
            "2",
            "--num_samples",
            "10",
            "--out_dir",
            str(d / "bt"),
            "--tracking",
            "false",
            "--progress",
            "false",
        ]
    )
    out = capfd.readouterr()
    assert rc == 0 and _lines(out.err) == [], out.err

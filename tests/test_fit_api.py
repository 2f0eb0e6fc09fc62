"""The API under the CLI: ``Forecaster.fit`` builds the data module, model and Trainer itself (a DataFrame stays in
memory), takes extra Lightning callbacks, reports the monitored metric and its best value, and records a config
that ``ts-neuralode fit`` reproduces; nothing in the library imports the command line."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Callback

from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.data.generators import generate
from ts_neuralode.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "ts_neuralode"
#: the command-line modules (the package ts_neuralode.cli): the only ones that may import each other
CLI_MODULES = {"ts_neuralode.cli"} | {
    ".".join(("ts_neuralode", "cli", p.stem)) for p in (PACKAGE / "cli").glob("*.py") if p.stem != "__init__"
}

TINY = {
    "model_options": {
        "latent_dim": 4,
        "hidden_dim": 8,
        "eval_samples": 2,
        "evolution": {"kind": "ode", "method": "rk4", "step_size": 0.25},
    },
    "data_options": {"layout": "padded", "batch_size": 4},
    "trainer": {
        "max_epochs": 3,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    },
}


class EpochRecorder(Callback):
    """An extra callback of the caller's: what the Trainer reported at the end of each training epoch."""

    def __init__(self, key: str) -> None:
        self.key, self.values = key, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.values.append(float(trainer.callback_metrics[self.key]))


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


@pytest.mark.slow
def test_nothing_in_the_library_imports_the_cli():
    """Every import of the package (inside functions too) that names a CLI module comes from a CLI module."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name in CLI_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            offenders += [f"{name}:{node.lineno} imports {t}" for t in targets if t in CLI_MODULES]
    assert not offenders, offenders


@pytest.mark.slow
def test_fit_takes_a_dataframe_in_memory_callbacks_and_reports_the_best_score(tmp_path):
    df = generate("sine", n_series=10, n_points=16, seed=4)
    rec = EpochRecorder("val_loss")
    fc = Forecaster.fit(df, "ode_rnn", **TINY, callbacks=[rec], output_dir=tmp_path / "run", tracking=False)
    assert not list((tmp_path / "run").glob("*.csv"))  # no detour through a file
    assert len(rec.values) == 3  # the extra callback ran in the Trainer, once per epoch
    info = fc.fit_info
    assert info["monitor"] == "val_loss" and isinstance(info["best_score"], float)
    assert info["best_score"] == pytest.approx(min(rec.values), rel=1e-6)
    assert info["config"]["model"]["model"] == "ode_rnn" and info["config"]["trainer"]["max_epochs"] == 3
    assert info["config"]["data"]["path"] is None and info["run_id"] is None
    assert Path(info["best_checkpoint"]).is_file() and Path(info["model_dir"]) == tmp_path / "run" / "model"

    # the recorded config reproduces the fit with the CLI on the same rows written to a file
    from ts_neuralode.cli import main

    csv = tmp_path / "same.csv"
    df.to_csv(csv, index=False)
    argv = info["argv"]
    assert argv[:3] == ["fit", "--config", str(tmp_path / "run" / "config.yaml")] and argv[3] == "--data.path"
    assert (
        main(
            [
                *argv[:3],
                "--data.path",
                str(csv),
                "--checkpoint_dir",
                str(tmp_path / "cli" / "ck"),
                "--model_dir",
                str(tmp_path / "cli" / "model"),
            ]
        )
        == 0
    )
    cli = Forecaster.load(tmp_path / "cli" / "model")
    a = fc.predict(df, horizon=1.0, num_points=4, num_samples=2)
    b = cli.predict(df, horizon=1.0, num_points=4, num_samples=2)
    np.testing.assert_allclose(a[fc.name].to_numpy(), b[cli.name].to_numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fit_without_validation_monitors_the_training_loss(tmp_path):
    df = generate("sine", n_series=6, n_points=12, seed=5)
    rec = EpochRecorder("train_loss")
    opts = {**TINY, "data_options": {**TINY["data_options"], "val_fraction": 0.0, "test_fraction": 0.0}}
    fc = Forecaster.fit(df, "ode_rnn", **opts, callbacks=[rec], output_dir=tmp_path, tracking=False)
    assert fc.fit_info["monitor"] == "train_loss"
    assert math.isfinite(fc.fit_info["best_score"])
    assert fc.fit_info["best_score"] == pytest.approx(min(rec.values), rel=1e-6)


def test_fit_option_errors_are_one_line(tmp_path):
    df = generate("sine", n_series=4, n_points=8, seed=0)
    with pytest.raises(ConfigError, match=r"^Forecaster.fit: .*no_such_option"):
        Forecaster.fit(df, "ode_rnn", model_options={"no_such_option": 1}, output_dir=tmp_path, tracking=False)
    with pytest.raises(
        ConfigError,
        match=r"model_options=\{'method': ...\} is now model_options=\{'evolution': "
        r"\{'method'",
    ):
        Forecaster.fit(df, "ode_rnn", model_options={"method": "rk4"}, output_dir=tmp_path, tracking=False)
    with pytest.raises(ConfigError, match="not supported; pass a pandas DataFrame"):
        Forecaster.fit([1, 2, 3], "ode_rnn", output_dir=tmp_path, tracking=False)

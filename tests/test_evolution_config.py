"""The evolution config: one object validated once, nested on the CLI, and the old flat spelling still loads."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, fields

import pytest
import torch

from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.cli import main
from ts_neuralode.errors import ConfigError
from ts_neuralode.models.evolution import FlowEvolution, ODEEvolution
from ts_neuralode.models.evolution_config import EvolutionConfig, merge_options, upgrade_flat_options
from ts_neuralode.training import ForecastingModule


def test_config_is_frozen_validated_once_and_builds_either_kind():
    c = EvolutionConfig()
    with pytest.raises(FrozenInstanceError):
        c.kind = "gru_flow"  # type: ignore[misc]
    assert isinstance(c.build(3), ODEEvolution)
    assert isinstance(EvolutionConfig("coupling_flow").build(3), FlowEvolution)
    with pytest.raises(ConfigError, match="adjoint_mode='fast'"):
        EvolutionConfig(adjoint_mode="fast")
    with pytest.raises(ConfigError, match="max_steps=0"):
        EvolutionConfig(max_steps=0)
    with pytest.raises(ConfigError, match=r"no option\(s\) \['methd'\]"):
        EvolutionConfig.coerce({"methd": "rk4"})


def test_adjoint_defaults_to_the_interpolated_mode_and_reaches_the_solver():
    evo = EvolutionConfig(adjoint=True, hidden_dim=8).build(2)
    assert evo.config.adjoint_mode == "interpolate"
    h0 = torch.randn(3, 2, requires_grad=True)
    evo(h0, torch.linspace(0, 1, 4)).sum().backward()
    assert torch.isfinite(h0.grad).all()


def test_models_resolve_the_options_left_to_them():
    gru = ForecastingModule(model="gru_ode", hidden_dim=12).model.evolution.config
    assert (gru.vector_field, gru.hidden_dim) == ("gru", 12)  # GRU-ODE-Bayes' own field, the model's width
    mlp = ForecastingModule(model="ode_rnn", evolution={"hidden_dim": 5}).model.evolution.config
    assert (mlp.vector_field, mlp.hidden_dim) == ("mlp", 5)


def test_flat_options_map_onto_the_nested_config():
    old = {
        "model": "gru_ode",
        "evolution": "ode",
        "method": "rk4",
        "step_size": 0.1,
        "hidden_dim": 16,
        "model_kwargs": {"vector_field": "mlp", "prep_dim": 4},
    }
    new = upgrade_flat_options(old)
    assert new["evolution"] == {"kind": "ode", "method": "rk4", "step_size": 0.1, "vector_field": "mlp"}
    assert new["model_kwargs"] == {"prep_dim": 4} and new["hidden_dim"] == 16
    assert upgrade_flat_options(new) == new  # the new spelling passes unchanged
    merged = merge_options({"evolution": "gru_flow"}, {"flow_layers": 3}, {"evolution": {"coeff": 0.5}})
    assert merged == {"evolution": {"kind": "gru_flow", "flow_layers": 3, "coeff": 0.5}}


def _old_style(hparams: dict) -> dict:
    """Hyperparameters as format ts_neuralode.model/1 wrote them (flat evolution options)."""
    flat = {k: v for k, v in hparams.items() if k != "evolution"}
    evo = hparams["evolution"]
    flat.update(
        evolution=evo["kind"],
        method=evo["method"],
        rtol=evo["rtol"],
        atol=evo["atol"],
        step_size=evo["step_size"],
        adjoint=evo["adjoint"],
        flow_layers=evo["flow_layers"],
        time_embedding=evo["time_embedding"],
        num_layers=evo["num_layers"],
    )
    return flat


def test_an_old_model_directory_and_checkpoint_still_load(dt_fitted, dt_csv, tmp_path):
    assert dt_fitted["rc"] == 0
    fc = Forecaster.load(dt_fitted["model_dir"])
    expected = fc.predict(dt_csv, horizon="6h", num_points=3, num_samples=4, seed=0)
    old_dir = tmp_path / "old_model"
    old_dir.mkdir()
    config = json.loads((dt_fitted["model_dir"] / "config.json").read_text())
    config["format"] = "ts_neuralode.model/1"
    config["module"]["hparams"] = _old_style(config["module"]["hparams"])
    (old_dir / "config.json").write_text(json.dumps(config))
    (old_dir / "weights.pt").write_bytes((dt_fitted["model_dir"] / "weights.pt").read_bytes())
    again = Forecaster.load(old_dir).predict(dt_csv, horizon="6h", num_points=3, num_samples=4, seed=0)
    assert again.equals(expected)

    ckpt_path = next(dt_fitted["ckpt_dir"].glob("*.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = _old_style(dict(ckpt["hyper_parameters"]))
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded = Forecaster.load(tmp_path / "old.ckpt", transform=str(old_dir))
    assert loaded.module.model.evolution.config.kind == fc.module.model.evolution.config.kind

    config["format"] = "ts_neuralode.model/0"
    (old_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="save it again with this version"):
        Forecaster.load(old_dir)


@pytest.mark.parametrize(
    "argv,new",
    [
        (["--model.method", "rk4"], "--model.evolution.method"),
        (["--model.evolution=gru_flow"], "--model.evolution.kind gru_flow"),
        (["--model.adjoint", "true"], "--model.evolution.adjoint"),
    ],
)
def test_the_old_cli_spelling_fails_with_one_line_naming_the_new_one(argv, new, capsys, tmp_path):
    assert main(["fit", *argv, "--data.path", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert new in err and "\n" not in err


def test_an_old_config_file_fails_with_one_line_naming_the_new_spelling(capsys, tmp_path):
    cfg = tmp_path / "old.yaml"
    cfg.write_text("model:\n  model: ode_rnn\n  evolution: ode\n  method: rk4\n")
    assert main(["fit", "--config", str(cfg), "--print_config"]) == 2
    assert "model.evolution.kind ode" in capsys.readouterr().err


def test_print_config_shows_every_evolution_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    out = capsys.readouterr().out
    for f in fields(EvolutionConfig):
        assert f"    {f.name}:" in out


def test_evolution_kinds_are_the_ode_and_every_flow():
    """``EVOLUTION_KINDS`` is spelled out (the config module imports no torch code); it must follow ``FLOWS``."""
    from ts_neuralode.models.evolution_config import EVOLUTION_KINDS
    from ts_neuralode.models.flows import FLOWS

    assert EVOLUTION_KINDS[0] == "ode" and set(EVOLUTION_KINDS[1:]) == set(FLOWS)

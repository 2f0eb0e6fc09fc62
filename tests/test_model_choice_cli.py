"""``ts-neuralode fit --model auto`` reads its options as the other subcommands do: generated from
:func:`ts_neuralode.api.model_choice.fit_auto`'s signature, ``--help`` with defaults and descriptions,
``--print_config`` / ``--config FILE``, one spelling. Parse only: no search runs here."""

from __future__ import annotations

import pytest
import yaml

from ts_neuralode.cli import main
from ts_neuralode.cli.model_choice import config

ARGV = [
    "--model",
    "auto",
    "--data.path",
    "d.csv",
    "--data.horizon",
    "2D",
    "--data.value_cols",
    "[a, b]",
    "--model.evolution.kind",
    "ode",
    "--model.lr",
    "0.01",
    "--trainer.max_epochs",
    "3",
    "--budget.trials",
    "7",
    "--budget.time",
    "30min",
    "--ensemble",
    "2",
    "--storage",
    "sqlite:///s.db",
    "--study_name",
    "demo",
    "--worker",
    "--output_dir",
    "out",
    "--tracking",
    "false",
    "--progress",
    "false",
    "--seed",
    "5",
]


def test_help_lists_the_search_options_with_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--model", "auto", "--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--config" in out and "--print_config" in out
    for option in (
        "--budget.trials",
        "--budget.time",
        "--ensemble",
        "--storage",
        "--study_name",
        "--worker",
        "--output_dir",
        "--tracking",
        "--progress",
        "--metric",
        "--data.horizon",
        "--model.lr",
        "--trainer.max_epochs",
    ):
        assert option in out, option
    # defaults, and descriptions read from fit_auto's docstring
    assert "default: val_mae" in out and "default: ts_neuralode_auto" in out and "(type: int, default: 1)" in out
    assert "keep the top ``k`` trials as a mixture" in out and "the Optuna storage URL" in out


def test_print_config_then_config_is_the_same_search(tmp_path, capsys):
    assert main(["fit", *ARGV, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["budget"] == {"trials": 7, "time": "30min"} and printed["ensemble"] == 2
    assert printed["worker"] is True and printed["tracking"] is False and printed["progress"] is False
    assert printed["seed"] == 5 and printed["metric"] == "val_mae" and printed["refit"] is True  # defaults printed
    # only the fixed options given: the others stay searched
    assert printed["data"] == {"path": "d.csv", "horizon": "2D", "value_cols": ["a", "b"]}
    assert printed["model"] == {"evolution": {"kind": "ode"}, "lr": 0.01}
    assert printed["trainer"] == {"max_epochs": 3}
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(printed))
    assert config(["--model", "auto", "--config", str(path)]) == config(ARGV) == printed
    # the command line after --config wins; nested sections merge
    over = config(["--model", "auto", "--config", str(path), "--model.evolution.method", "rk4", "--ensemble", "1"])
    assert over["model"] == {"evolution": {"kind": "ode", "method": "rk4"}, "lr": 0.01} and over["ensemble"] == 1


def test_nothing_given_fixes_nothing(capsys):
    cfg = config(["--model=auto"])
    assert cfg["data"] == cfg["model"] == cfg["trainer"] == {}
    assert cfg["budget"] == {"trials": None, "time": None} and cfg["output_dir"] == "ts_neuralode_auto"


@pytest.mark.parametrize(
    "argv,line",
    [
        (["--no_progress"], "--no_progress is now --progress false"),
        (["--no-progress"], "--no-progress is now --progress false"),
        (["--seed_everything", "1"], "--seed_everything is now --seed"),
        (["--study-name", "x"], "--study-name is now --study_name"),
        (["--budget.trials", "many"], "budget.trials"),
        (["--model.method", "rk4"], "--model.method is now --model.evolution.method"),
        (["--bogus", "1"], "unknown option"),
    ],
)
def test_bad_options_are_one_line(argv, line, capfd):
    assert main(["fit", "--model", "auto", "--data.path", "d.csv", *argv]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err


def test_an_old_key_in_a_config_file_is_one_line(tmp_path, capfd):
    path = tmp_path / "old.yaml"
    path.write_text("no_progress: true\ndata:\n  path: d.csv\n")
    assert main(["fit", "--model", "auto", "--config", str(path)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'no_progress' (a key of the config file) is now --progress false" in err[0], err

"""``ts-neuralode benchmark`` reads its options like every subcommand: ``--print_config`` round-trips through
``--config``, ``--help`` lists defaults and descriptions, an old spelling fails with one line naming the new one, and
the options are those of the declarations they set (BenchmarkConfig, the data module, run_benchmark). A real run
through the command line: tests/test_benchmark.py and tests/test_cli.py."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import yaml

from ts_neuralode.api.benchmark import BenchmarkConfig, run_benchmark
from ts_neuralode.api.benchmark.config import DATA_FIELDS, READ_OPTIONS
from ts_neuralode.cli import main
from ts_neuralode.cli.args import parse
from ts_neuralode.cli.benchmark import BENCHMARK_RENAMES, config_from_args, parser
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

ARGV = [
    "--data.path",
    "series.csv",
    "--data.time_unit",
    "D",
    "--data.value_cols",
    "[a, b]",
    "--data.task",
    "forecast",
    "--data.horizon",
    "52W",
    "--data.context",
    "104W",
    "--data.season",
    "365D",
    "--data.batch_size",
    "16",
    "--data.layout",
    "padded",
    "--models",
    "ode_rnn,flow_rnn",
    "--baselines",
    "locf",
    "--epochs",
    "2",
    "--seed",
    "3",
    "--lr",
    "0.01",
    "--rtol",
    "1e-4",
    "--threads",
    "0",
    "--tracking",
    "false",
    "--progress",
    "false",
    "--out",
    "bench/x.csv",
    "--title",
    "t",
]


def _options(ns) -> dict:
    out = ns.as_dict()
    out.pop("config", None)
    out.pop("__path__", None)
    return out


def test_print_config_round_trips_through_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["benchmark", *ARGV, "--print_config"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg["data"]["horizon"] == "52W" and cfg["data"]["value_cols"] == ["a", "b"] and cfg["tracking"] is False
    assert cfg["lr"] == 0.01 and cfg["data"]["layout"] == "padded" and cfg["models"] == "ode_rnn,flow_rnn"
    path = tmp_path / "bench.yaml"
    path.write_text(printed)
    direct, from_file = parse(parser(), ARGV), parse(parser(), ["--config", str(path)])
    assert _options(from_file) == _options(direct)
    assert config_from_args(from_file) == config_from_args(direct)
    # a later option overrides the file
    assert parse(parser(), ["--config", str(path), "--epochs", "7"]).epochs == 7


def test_options_build_the_config_the_api_takes():
    cfg = config_from_args(parse(parser(), ARGV))
    assert cfg == BenchmarkConfig(
        path="series.csv",
        read_options={"time_unit": "D", "value_cols": ["a", "b"]},
        task="forecast",
        horizon="52W",
        context="104W",
        season="365D",
        batch_size=16,
        layout="padded",
        models=("ode_rnn", "flow_rnn"),
        baselines=("locf",),
        epochs=2,
        seed=3,
        model_options={"lr": 0.01, "rtol": 1e-4},
        threads=None,
    )
    # no option given: the API's defaults
    assert config_from_args(parse(parser(), ["--dataset", "sine"])) == BenchmarkConfig(dataset="sine")


def test_data_options_are_the_data_modules():
    """``--data.*`` are the data module's options (same types), with BenchmarkConfig's defaults (the data module's
    but for the layout, which adds auto)."""
    args = parse(parser(), [])
    module = inspect.signature(IrregularTimeSeriesDataModule.__init__).parameters
    ours = {f.name: f.default for f in fields(BenchmarkConfig)}
    for name in DATA_FIELDS:
        assert args.data[name] == ours[name]
        if name != "layout":
            assert ours[name] == module[name].default, name
    assert {k: args.data[k] for k in READ_OPTIONS} == {k: module[k].default for k in READ_OPTIONS}
    run = inspect.signature(run_benchmark).parameters
    assert args.tracking is True and run["tracking"].default is False  # the command line tracks by default
    assert args.experiment_name == run["experiment_name"].default and args.progress is run["progress"].default


def test_help_lists_defaults_and_descriptions(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["benchmark", "--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--config" in out and "--print_config" in out
    for fragment in (
        "--epochs EPOCHS training epochs of every model. (type: int, default: 5)",
        "default: auto)",  # --data.layout, the benchmark's own default
        "period of the seasonal naive baseline",  # --data.season, described
        "--tracking {true,false}",
        "default: ts_neuralode_benchmark)",
        "state size of every model (models: 16)",
        "latent_ode_dopri5, latent_ode_rk4",
    ):
        assert fragment in out, fragment


@pytest.mark.parametrize(
    "old, new",
    [
        ("--task", "--data.task"),
        ("--horizon", "--data.horizon"),
        ("--batch_size", "--data.batch_size"),
        ("--season", "--data.season"),
        ("--layout", "--data.layout"),
        ("--scaler", "--data.scaler"),
        ("--split_by", "--data.split_by"),
        ("--no_tracking", "--tracking false"),
        ("--no-tracking", "--tracking false"),
        ("--no_progress", "--progress false"),
        ("--n-series", "--n_series"),
        ("--latency-reps", "--latency_reps"),
        ("--batch-size", "--data.batch_size"),
        ("--data.time-unit", "--data.time_unit"),
    ],
)
def test_old_spellings_fail_with_one_line_naming_the_new_one(old, new, capfd):
    flag = old in ("--no_tracking", "--no-tracking", "--no_progress")
    assert main(["benchmark", "--dataset", "sine", old, *([] if flag else ["1"])]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{old} is now {new}" in err[0], err


def test_every_rename_names_an_option_that_exists():
    known = {s for a in parser()._actions for s in a.option_strings}
    for old, new in BENCHMARK_RENAMES.items():
        assert old not in known and new.split()[0] in known, (old, new)


def test_a_list_option_given_as_words_says_how_to_write_a_list(capfd):
    """``--data.value_cols a b`` (argparse's spelling of a list in older versions): one line with the new one."""
    assert main(["benchmark", "--data.path", "x.csv", "--data.value_cols", "a", "b"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.value_cols" in err[0] and "[a, b]" in err[0], err


def test_an_old_key_in_a_config_file_names_the_new_option(tmp_path, capfd):
    path = tmp_path / "old.yaml"
    path.write_text("dataset: sine\ntask: forecast\n")
    assert main(["benchmark", "--config", str(path)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'task' (a key of the config file) is now --data.task" in err[0], err


@pytest.mark.slow
def test_a_fresh_process_runs_the_printed_config(tmp_path):
    """``ts-neuralode benchmark --print_config > c.yaml`` then ``--config c.yaml``, each in a process of its own
    (as a user runs them: nothing imported beforehand, as the other tests' imports would)."""
    import os
    import subprocess
    import sys

    import pandas as pd

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ts_neuralode.cli", "benchmark"]
    argv = [
        "--dataset",
        "sine",
        "--n_series",
        "12",
        "--n_points",
        "10",
        "--models",
        "latent_gru_flow,ode_rnn",
        "--epochs",
        "1",
        "--data.batch_size",
        "6",
        "--latency_reps",
        "1",
        "--tracking",
        "false",
        "--progress",
        "false",
        "--out",
        str(tmp_path / "b.csv"),
    ]
    printed = subprocess.run([*cmd, *argv, "--print_config"], capture_output=True, text=True, env=env, timeout=300)
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "c.yaml").write_text(printed.stdout)
    run = subprocess.run(
        [*cmd, "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(tmp_path / "b.csv")
    assert list(table["model"]) == ["latent_gru_flow", "ode_rnn", "locf", "mean", "linear"]
    assert (table["params"].iloc[:2] > 0).all() and table[["interp_mse", "extrap_mse"]].notna().all().all()
    assert "| ode_rnn |" in run.stdout and (tmp_path / "b.md").read_text().count("--config") == 1

"""Every subcommand reads its options the same way: ``--config FILE``, ``--print_config``, ``--help`` with defaults
and descriptions, one spelling (an old one fails with one line naming the new one), errors in the CLI's words."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from ts_neuralode.cli import main


def _err_lines(capfd) -> list[str]:
    return capfd.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("sub", ["forecast", "backtest", "generate", "fit"])
def test_help_lists_defaults_and_descriptions(sub, capsys):
    with pytest.raises(SystemExit) as stop:
        main([sub, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--print_config" in out and "default:" in out
    described = {
        "forecast": "predictive samples",
        "backtest": "horizon buckets",
        "generate": "number of series",
        "fit": "MLflow experiment",
    }[sub]
    assert described in " ".join(out.split())


def test_benchmark_help_names_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: 5)" in out and "default: cpu)" in out  # --epochs, --device


def test_generate_config_file_and_print_config(tmp_path, capsys):
    out = tmp_path / "s.csv"
    with pytest.raises(SystemExit):
        main(["generate", "sine", "--out", str(out), "--n_series", "3", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["n_series"] == 3 and cfg["name"] == "sine" and cfg["seed"] == 0
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump({**cfg, "n_points": 5}))
    assert main(["generate", "--config", str(path)]) == 0
    df = pd.read_csv(out)
    assert df["unique_id"].nunique() == 3 and len(df) == 15


@pytest.mark.parametrize(
    "argv,line",
    [
        (["generate", "sine", "--out", "x.csv", "--n-points", "4"], "--n-points is now --n_points"),
        (["generate", "sine", "--out", "x.csv", "--t-max=4"], "--t-max is now --t_max"),
        (
            ["forecast", "--model", "m", "--data.path", "h.csv", "--num-samples", "4"],
            "--num-samples is now --num_samples",
        ),
        (["backtest", "--model", "m", "--data.path", "h.csv", "--n-windows", "2"], "--n-windows is now --n_windows"),
        (["forecast", "--model", "m", "--data.path", "h.csv", "--no_plots"], "--no_plots is now --plots false"),
        (["forecast", "--model", "m", "--data.path", "h.csv", "--no-plots"], "--no-plots is now --plots false"),
        (
            ["forecast", "--model", "m", "--data.path", "h.csv", "--no_progress"],
            "--no_progress is now --progress false",
        ),
        (
            ["backtest", "--model", "m", "--data.path", "h.csv", "--no_tracking"],
            "--no_tracking is now --tracking false",
        ),
        (
            ["backtest", "--model", "m", "--data.path", "h.csv", "--no_progress"],
            "--no_progress is now --progress false",
        ),
    ],
)
def test_old_spellings_fail_with_one_line_naming_the_new_one(argv, line, capfd):
    assert main(argv) == 2
    err = _err_lines(capfd)
    assert len(err) == 1 and line in err[0], err


def test_forecast_config_file_reproduces_the_command_line(dt_fitted, dt_csv, tmp_path, capsys):
    base = [
        "--model",
        str(dt_fitted["model_dir"]),
        "--data.path",
        str(dt_csv),
        "--horizon",
        "6h",
        "--num_points",
        "3",
        "--num_samples",
        "4",
        "--level",
        "80",
        "--plots",
        "false",
        "--progress",
        "false",
    ]
    assert main(["forecast", *base, "--out", str(tmp_path / "a.csv")]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["forecast", *base, "--out", str(tmp_path / "b.csv"), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["path"] == str(dt_csv) and cfg["level"] == [80.0] and cfg["plots"] is False
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["forecast", "--config", str(tmp_path / "f.yaml")]) == 0
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    pd.testing.assert_frame_equal(a, b)


def test_missing_required_option_is_one_line(capfd):
    assert main(["backtest", "--data.path", "h.csv", "--horizon", "2h"]) == 2
    err = _err_lines(capfd)
    assert len(err) == 1 and "required: --model" in err[0], err


def test_data_errors_name_the_cli_option(dt_fitted, tmp_path, capfd):
    """A reading error of the API says ``pass time_col=...``; the command line says ``--data.time_col``."""
    bad = tmp_path / "bad.csv"
    bad.write_text("unique_id,when,y\na,1,2\na,2,3\n")
    assert (
        main(
            [
                "forecast",
                "--model",
                str(dt_fitted["model_dir"]),
                "--data.path",
                str(bad),
                "--horizon",
                "1h",
                "--out",
                str(tmp_path / "o.csv"),
                "--plots",
                "false",
                "--progress",
                "false",
            ]
        )
        == 2
    )
    err = _err_lines(capfd)
    assert len(err) == 1 and "missing time column" in err[0] and "--data.time_col" in err[0], err
    assert "time_col=" not in err[0]


@pytest.mark.parametrize("sub", ["forecast", "backtest"])
def test_sampling_defaults_are_the_apis(sub, capsys):
    """The command line's sampling defaults are those of Forecaster.predict and the backtest (one declaration)."""
    import inspect

    from ts_neuralode.api.backtest import cross_validation
    from ts_neuralode.api.predictor import Predictor

    with pytest.raises(SystemExit):
        main([sub, "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    for fn in (Predictor.predict, cross_validation):
        params = inspect.signature(fn).parameters
        for name in ("num_samples", "batch_size", "seed"):
            assert cfg[name] == params[name].default, (sub, fn.__qualname__, name)
        assert [float(v) for v in cfg["level"]] == [float(v) for v in params["level"].default]

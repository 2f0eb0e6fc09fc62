"""Failures outside the CSV (issue 17): an unreachable tracking store, unwritable output locations, far horizons
and damaged model files each end in one line and exit status 2, checked before the work starts.

The rows of the issue's table run through the real ``ts-neuralode`` console command, concurrently (each is a
fresh process: most of its time is importing torch). How long each takes is measured by
``scripts/check_failures.py``, never asserted here beyond a hang guard."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_FIT_ARGS, subprocess_env, wait_for_epoch
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.api.preflight import tracking_store, writable_dir, writable_file
from ts_neuralode.cli import main
from ts_neuralode.errors import ConfigError, ForecastError

CONSOLE = Path(sys.executable).with_name("ts-neuralode")
UNSAFE_ADVICE = "weights_only=False"


def _console() -> list[str]:
    return [str(CONSOLE)] if CONSOLE.exists() else [sys.executable, "-m", "ts_neuralode.cli"]


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def shown_lines(err: str) -> list[str]:
    """The non-blank lines a terminal shows for ``err``: a progress bar redrawn and cleared with carriage
    returns leaves only what follows its last one."""
    return [shown for ln in err.split("\n") if (shown := ln.rsplit("\r", 1)[-1]).strip()]


def _one_line(err: str) -> str:
    lines = shown_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def ode_model(tmp_path_factory, dt_fitted) -> Path:
    """A model directory with an ODE evolution (rk4, steps of 0.01 model units = 6 min on the dt data, its own
    max_steps 100) and the dt fit's transform; untrained weights serve the far-horizon checks."""
    from ts_neuralode.training import ForecastingModule

    fc = Forecaster.load(dt_fitted["model_dir"])
    hp = dict(fc.hparams)
    hp["evolution"] = {
        **dict(hp.get("evolution") or {}),
        "kind": "ode",
        "method": "rk4",
        "step_size": 0.01,
        "max_steps": 100,
    }
    torch.manual_seed(0)
    module = ForecastingModule.from_hparams(hp)
    out = tmp_path_factory.mktemp("ode_model") / "model"
    return Forecaster(module, fc.transform, fc.read_options, context=fc.context).save(out)


def _damaged(
    tmp_path: Path, model_dir: Path, name: str, weights: bytes | None = None, config: dict | str | None = None
) -> Path:
    d = tmp_path / name
    shutil.copytree(model_dir, d)
    if weights is not None:
        (d / "weights.pt").write_bytes(weights)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return d


@pytest.mark.slow
def test_issue_table_rows_one_line_each(tmp_path, dt_csv, dt_fitted, ode_model):
    """The five rows of the issue, as a user runs them: the console command, one line, exit 2, no traceback.
    The output-location rows name a missing history or model too: the location is reported, so it was checked
    before the data or the model was read."""
    blocked = tmp_path / "a_file"  # a path below a file cannot be created, on any OS
    blocked.write_text("x")
    random_weights = _damaged(tmp_path, dt_fitted["model_dir"], "random", weights=os.urandom(4096))
    fit = ["fit", "--data.time_unit", "h", *TINY_FIT_ARGS]
    rows = {
        "tracking server down": (
            [*fit, "--data.path", str(dt_csv), "--tracking_uri", _dead_url()],
            ["is not reachable", "--tracking_uri sqlite:///mlflow.db", "--tracking false", "start it"],
        ),
        "checkpoint dir": (
            [
                *fit,
                "--data.path",
                str(tmp_path / "missing.csv"),
                "--tracking",
                "false",
                "--checkpoint_dir",
                str(blocked / "ck"),
            ],
            [f"--checkpoint_dir {blocked / 'ck'}"],
        ),
        "forecast --out": (
            [
                "forecast",
                "--model",
                str(tmp_path / "no_model"),
                "--data.path",
                str(dt_csv),
                "--horizon",
                "2h",
                "--out",
                str(blocked / "o.csv"),
            ],
            [f"--out {blocked / 'o.csv'}"],
        ),
        "far horizon": (
            [
                "forecast",
                "--model",
                str(ode_model),
                "--data.path",
                str(dt_csv),
                "--horizon",
                "400D",
                "--num_points",
                "5",
                "--plots",
                "false",
                "--out",
                str(tmp_path / "far.csv"),
            ],
            [
                "max_steps=30000",
                "days past the last observation, of 400 days past it asked",
                "--max_steps",
                "nearer horizon",
            ],
        ),
        "random weights.pt": (
            [
                "forecast",
                "--model",
                str(random_weights),
                "--data.path",
                str(dt_csv),
                "--horizon",
                "2h",
                "--out",
                str(tmp_path / "r.csv"),
            ],
            ["not a torch file"],
        ),
    }
    procs = {
        name: subprocess.Popen(
            [*_console(), *argv], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, (argv, _) in rows.items()
    }
    for name, proc in procs.items():
        _, raw = proc.communicate(timeout=180)  # a hang guard (MLflow's retries took 4 min), not a timing test
        err = raw.decode()  # bytes: text mode would turn a progress bar's carriage returns into line breaks
        line = _one_line(err)
        assert proc.returncode == 2, (name, err)
        for fragment in rows[name][1]:
            assert fragment in line, (name, line)
        assert UNSAFE_ADVICE not in line
    assert not (tmp_path / "far.csv").exists()


# -- far horizons -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_far_horizon_gets_the_steps_it_needs(ode_model, dt_csv):
    """The model's own max_steps (100 steps of 6 min) does not reach 20 h; the forecast's default budget scales
    with the span, and an explicit max_steps below the need stops with one line saying how far it gets."""
    fc = Forecaster.load(ode_model)
    out = fc.predict(dt_csv, "20h", num_points=4, num_samples=2, series=["s0"])
    assert len(out) == 4 and out.iloc[:, 2].notna().all()
    with pytest.raises(ForecastError) as info:
        fc.predict(dt_csv, "20h", num_points=4, num_samples=2, series=["s0"], max_steps=50)
    msg = str(info.value)
    assert "max_steps=50" in msg and "raise --max_steps to at least" in msg
    assert "before the last observation, of 20 h past it asked" in msg  # the solve starts at the series start
    with pytest.raises(ForecastError, match="max_steps=0 must be a whole number"):
        fc.predict(dt_csv, "20h", max_steps=0)


def test_forecast_max_steps_option(ode_model, dt_csv, tmp_path, capfd):
    rc = main(
        [
            "forecast",
            "--model",
            str(ode_model),
            "--data.path",
            str(dt_csv),
            "--horizon",
            "20h",
            "--num_points",
            "3",
            "--plots",
            "false",
            "--progress",
            "false",
            "--num_samples",
            "2",
            "--max_steps",
            "20",
            "--out",
            str(tmp_path / "f.csv"),
        ]
    )
    line = _one_line(capfd.readouterr().err)
    assert rc == 2 and "max_steps=20" in line and "raise --max_steps to at least" in line, line


# -- model files ------------------------------------------------------------------------------------------------
def test_each_damaged_model_file_has_its_own_line(tmp_path, dt_fitted):
    """Not a torch file, truncated, empty, a pickle weights_only refuses, config.json from another version or
    malformed, options this version lacks: each its own one line, none advising unsafe loading."""
    src = dt_fitted["model_dir"]
    weights = (src / "weights.pt").read_bytes()
    config = json.loads((src / "config.json").read_text())
    pickled = tmp_path / "pickled.pt"
    torch.save({"state": torch.ones(2), "obj": ConfigError("x")}, pickled)
    cases = {
        "not a torch file": _damaged(tmp_path, src, "random", weights=b"\x13\x37" * 999),
        "truncated or damaged": _damaged(tmp_path, src, "trunc", weights=weights[: len(weights) // 2]),
        "is empty (0 bytes": _damaged(tmp_path, src, "empty", weights=b""),
        "holds an object of type ts_neuralode.errors.ConfigError": _damaged(
            tmp_path, src, "pickle", weights=pickled.read_bytes()
        ),
        "'ts_neuralode.model/9' written by ts_neuralode 9.0 is not one this version reads (ts_neuralode.model/2, "
        "ts_neuralode.model/1); it is newer than this ts_neuralode: upgrade": _damaged(
            tmp_path, src, "newer", config={**config, "format": "ts_neuralode.model/9", "ts_neuralode_version": "9.0"}
        ),
        "not valid JSON": _damaged(tmp_path, src, "json", config="{oops"),
        "module.hparams missing": _damaged(
            tmp_path, src, "nomodule", config={k: v for k, v in config.items() if k != "module"}
        ),
        "model options do not fit this version": _damaged(
            tmp_path,
            src,
            "option",
            config={
                **config,
                "module": {**config["module"], "hparams": {**config["module"]["hparams"], "option_from_the_future": 1}},
            },
        ),
    }
    for fragment, path in cases.items():
        with pytest.raises(ForecastError) as info:
            Forecaster.load(path)
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg and UNSAFE_ADVICE not in msg, (fragment, msg)
    with pytest.raises(ForecastError, match="not a torch file"):  # a .ckpt path too
        Forecaster.load(cases["not a torch file"] / "weights.pt")


# -- output locations and tracking stores -------------------------------------------------------------------------
def test_preflight_checks(tmp_path):
    afile = tmp_path / "f.txt"
    afile.write_text("not a database")
    with pytest.raises(ConfigError, match="is a directory; pass a file path"):
        writable_file(tmp_path, "--out")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        writable_dir(afile, "--checkpoint_dir")
    with pytest.raises(ConfigError, match=r"--plot_dir .*: cannot write there"):
        writable_dir(afile / "sub", "--plot_dir")
    assert writable_dir(tmp_path / "new" / "dir", "--x").is_dir()
    with pytest.raises(ConfigError, match="file is not a database"):
        tracking_store(f"sqlite:///{afile}")
    with pytest.raises(ConfigError, match="cannot create directory"):
        tracking_store(f"sqlite:///{afile / 'no_dir' / 'mlflow.db'}")
    assert tracking_store(f"sqlite:///{tmp_path / 'new_dir' / 'mlflow.db'}")  # created, as MLflow would the file
    with pytest.raises(ConfigError, match="is a directory; name a database file"):
        tracking_store(f"sqlite:///{tmp_path}")
    with pytest.raises(ConfigError, match="does not exist, so it holds no runs"):
        tracking_store(f"sqlite:///{tmp_path / 'ok.db'}", must_exist=True)
    assert tracking_store(f"sqlite:///{tmp_path / 'ok.db'}").endswith("ok.db")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]  # lowered where unset (MLflow's default waits minutes)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["forecast", "--mlflow_run", "0123456789abcdef"], "leave out --mlflow_run"),
        (["forecast", "--model", "runs:/0123456789abcdef/model"], "pass the model directory itself as --model"),
        (["benchmark", "--dataset", "sine", "--models", "latent_coupling_flow", "--epochs", "1"], "--tracking false"),
        (["backtest", "--horizon", "2h"], "--tracking false"),
    ],
)
def test_other_subcommands_probe_the_tracking_server(argv, fragment, dt_fitted, dt_csv, tmp_path, capfd):
    url = _dead_url()
    if argv[0] == "forecast":
        argv = [*argv, "--data.path", str(dt_csv), "--horizon", "2h", "--out", str(tmp_path / "o.csv")]
        if "--model" not in argv:
            argv += ["--model", str(dt_fitted["model_dir"])]
    elif argv[0] == "backtest":
        argv = [
            *argv,
            "--model",
            str(dt_fitted["model_dir"]),
            "--data.path",
            str(dt_csv),
            "--out",
            str(tmp_path / "o.csv"),
        ]
    else:
        argv = [*argv, "--out", str(tmp_path / "b.csv")]
    rc = main([*argv, "--tracking_uri", url])
    line = _one_line(capfd.readouterr().err)
    assert rc == 2 and f"MLflow tracking server {url} is not reachable" in line and fragment in line, line
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "b.csv").exists()


def test_backtest_output_checked_first(tmp_path, dt_fitted, capfd):
    """backtest --out_dir below a file: one line before the (missing) history is read or the model loaded."""
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    rc = main(
        [
            "backtest",
            "--model",
            str(tmp_path / "no_model"),
            "--data.path",
            str(tmp_path / "missing.csv"),
            "--horizon",
            "2h",
            "--tracking",
            "false",
            "--out_dir",
            str(afile / "bt"),
        ]
    )
    line = _one_line(capfd.readouterr().err)
    assert rc == 2 and "--out_dir" in line and "missing.csv" not in line and "no_model" not in line, line


def test_fit_model_dir_and_root_checked_first(tmp_path, capfd):
    """--model_dir naming a file, --trainer.default_root_dir below a file: one line before the (missing) data."""
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    base = ["fit", "--data.path", str(tmp_path / "missing.csv"), "--tracking", "false", *TINY_FIT_ARGS]
    for extra, fragment in [
        (["--model_dir", str(afile)], "--model_dir"),
        (["--trainer.default_root_dir", str(afile / "r")], "--trainer.default_root_dir"),
    ]:
        rc = main([*base, "--checkpoint_dir", str(tmp_path / "ck"), *extra])
        line = _one_line(capfd.readouterr().err)
        assert rc == 2 and fragment in line and "missing.csv" not in line, line


@pytest.mark.slow
def test_bad_ckpt_path_one_line(tmp_path, dt_csv, dt_fitted, capfd):
    """Lightning loads --ckpt_path for its hyperparameters before anything else: a random file or a model
    directory's weights.pt is one line there, not torch's traceback and its unsafe-loading advice."""
    rand = tmp_path / "rand.ckpt"
    rand.write_bytes(b"\x67\x22" * 500)
    for ckpt, fragment in [
        (rand, "not a torch file"),
        (dt_fitted["model_dir"] / "weights.pt", "not a Lightning checkpoint"),
    ]:
        rc = main(
            [
                "validate",
                "--data.path",
                str(dt_csv),
                "--data.time_unit",
                "h",
                "--tracking",
                "false",
                "--ckpt_path",
                str(ckpt),
            ]
        )
        line = _one_line(capfd.readouterr().err)
        assert rc == 2 and f"--ckpt_path {ckpt}" in line and fragment in line and UNSAFE_ADVICE not in line, line


@pytest.mark.slow
def test_sigterm_during_fit_is_a_failure_with_one_line(tmp_path, tiny_csv):
    """Lightning stops a fit cleanly on SIGTERM but exits 0 (its SIGTERMException is a SystemExit without a
    status): a script could not tell that fit from a finished one. Now: one line, status 143, checkpoints kept."""
    args = [a for a in TINY_FIT_ARGS]
    args[args.index("--trainer.max_epochs") + 1] = "1000"
    ck = tmp_path / "ck"
    proc = subprocess.Popen(
        [*_console(), "fit", "--data.path", str(tiny_csv), "--tracking", "false", "--checkpoint_dir", str(ck), *args],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for_epoch(proc, ck / "last.ckpt", 1) is not None, "the fit did not reach epoch 1"
        proc.send_signal(signal.SIGTERM)
        _, raw = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = shown_lines(raw.decode())[-1]
    assert proc.returncode == 143 and "Traceback" not in raw.decode(), raw.decode()[-2000:]
    assert (
        last == "ts-neuralode fit: stopped by SIGTERM; the checkpoints of finished epochs are kept: continue "
        "with --ckpt_path last"
    ), last
    assert (ck / "last.ckpt").is_file()

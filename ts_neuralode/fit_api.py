"""Training from Python in one call: :meth:`Forecaster.fit <ts_neuralode.forecaster.Forecaster.fit>`.

It runs exactly what ``ts-neuralode fit`` runs — the same LightningCLI, callbacks, checkpoints, model export and
MLflow tracking (:func:`ts_neuralode.cli.run_lightning`, in-process) — on a command line built from the
arguments, then loads the model directory the fit wrote::

    fc = Forecaster.fit("data/demo.csv", "configs/demo.yaml", trainer={"max_epochs": 3}, tracking=False)
    fc = Forecaster.fit(df, "ode_rnn", data={"future_cols": ["rate"]}, model={"evolution": {"kind": "gru_flow"}},
                        trainer={"max_epochs": 20}, tracking_uri="sqlite:///mlflow.db", experiment_name="pk")

A DataFrame is written to ``<output_dir>/data.csv`` first (the recorded config then names a file that reproduces
the run with the CLI). Errors are the CLI's, raised as the project's exceptions (one line each).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ts_neuralode.errors import ConfigError

#: option groups flattened into dotted options (``{"evolution": {"kind": "ode"}}`` -> ``--model.evolution.kind``)
NESTED = {"evolution"}


def _value(v: Any) -> str:
    """A command-line value jsonargparse reads back as ``v`` (lists and dicts as JSON, None as null)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def options_to_argv(group: str, options: Mapping[str, Any] | None) -> list[str]:
    """``{"lr": 0.01, "evolution": {"kind": "gru_flow"}}`` -> ``["--model.lr", "0.01", "--model.evolution.kind",
    "gru_flow"]``."""
    out: list[str] = []
    for key, val in (options or {}).items():
        if key in NESTED and isinstance(val, Mapping):
            out += options_to_argv(f"{group}.{key}", val)
        else:
            out += [f"--{group}.{key}" if group else f"--{key}", _value(val)]
    return out


def fit_argv(data: Any, model: str | os.PathLike | None, *, data_options: Mapping[str, Any] | None = None,
             model_options: Mapping[str, Any] | None = None, trainer: Mapping[str, Any] | None = None,
             output_dir: str | os.PathLike = "ts_neuralode_fit", tracking: bool = True,
             tracking_uri: str | None = None, experiment_name: str | None = None, run_name: str | None = None,
             log_model: bool = True, seed: int | None = 0, extra_args: Sequence[str] = ()
             ) -> tuple[list[str], Path]:
    """The ``ts-neuralode fit`` command line of :func:`fit` and the model directory it will write.

    ``model`` None: no model option (``extra_args`` give it); ``extra_args``: more ``fit`` options (e.g. the
    backtest's refit options ``--config configs/demo.yaml --trainer.max_epochs 20``), placed after the model and
    before the data path and the output directories, which they cannot override; ``seed`` None: no
    ``--seed_everything`` (the config's or ``extra_args``' stands)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pd.DataFrame):
        path = out / "data.csv"
        data.to_csv(path, index=False)
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
    else:
        raise ConfigError(f"data of type {type(data).__name__} is not supported; pass a pandas DataFrame or a CSV path")
    argv = ["fit"]
    m = "" if model is None else str(model)
    if model is None:
        pass
    elif m.endswith((".yaml", ".yml", ".json")) or Path(m).is_file():
        if not Path(m).is_file():
            raise ConfigError(f"model={m!r}: config file not found; pass a model name (latent_ode, ode_rnn, gru_ode) "
                              "or the path of a config such as configs/ode_rnn.yaml")
        argv += ["--config", m]
    else:
        argv += ["--model.model", m]
    model_dir = out / "model"
    argv += [*extra_args, "--data.path", str(path), *options_to_argv("data", data_options),
             *options_to_argv("model", model_options), *options_to_argv("trainer", trainer),
             "--trainer.default_root_dir", str(out), "--checkpoint_dir", str(out / "checkpoints"),
             "--model_dir", str(model_dir), *([] if seed is None else ["--seed_everything", str(int(seed))]),
             "--tracking", _value(bool(tracking)), "--log_model", _value(bool(log_model))]
    for name, val in (("tracking_uri", tracking_uri), ("experiment_name", experiment_name), ("run_name", run_name)):
        if val is not None:
            argv += [f"--{name}", str(val)]
    return argv, model_dir


def run_fit(argv: list[str], model_dir: Path, what: str = "Forecaster.fit", callbacks: Sequence | None = None):
    """Run the ``ts-neuralode fit`` command line ``argv`` in-process and load the model directory it wrote (the one
    code path of :func:`fit` and the backtest's refits). ``callbacks``: extra Lightning callbacks for the Trainer."""
    import argparse

    from ts_neuralode.cli import run_lightning
    from ts_neuralode.forecaster import Forecaster
    from ts_neuralode.tracking import RUN_FILE, read_run_file

    checkpoints = model_dir.parent / "checkpoints"
    stale = _stamp(checkpoints / RUN_FILE)  # a run file left by an earlier fit in this directory is not this fit's
    try:
        cli = run_lightning(argv, callbacks)
    except argparse.ArgumentError as err:  # jsonargparse: an unknown or ill-typed option
        raise ConfigError(f"{what}: {' '.join(str(err).split())}") from err
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{what}: the fit wrote no model directory at {model_dir} (no fitted weights)")
    fc = Forecaster.load(model_dir)
    fresh = _stamp(checkpoints / RUN_FILE)
    info = (read_run_file(checkpoints) or {}) if fresh is not None and fresh != stale else {}
    fc.fit_info = {"argv": argv, "model_dir": str(model_dir), "checkpoint_dir": str(checkpoints),
                   "run_id": info.get("run_id"), "tracking_uri": info.get("tracking_uri"),
                   **_best(cli)}  # monitor / best_score: the model choice's contract with Forecaster.fit
    return fc


def _best(cli) -> dict:
    """``{"monitor": "val_loss", "best_score": 0.42}`` of the fit's checkpoint callback (None where it has none)."""
    ckpt = getattr(getattr(cli, "trainer", None), "checkpoint_callback", None)
    score = getattr(ckpt, "best_model_score", None)
    return {"monitor": getattr(ckpt, "monitor", None), "best_score": None if score is None else float(score)}


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime ns, inode) of ``path``, None when it does not exist: whether a fit (re)wrote it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


def fit(data: Any, model: str | os.PathLike = "latent_ode", callbacks: Sequence | None = None, **kwargs: Any):
    """Train like ``ts-neuralode fit`` and return the fitted :class:`~ts_neuralode.forecaster.Forecaster` (see
    :meth:`Forecaster.fit <ts_neuralode.forecaster.Forecaster.fit>` for the arguments)."""
    argv, model_dir = fit_argv(data, model, **kwargs)
    return run_fit(argv, model_dir, callbacks=callbacks)


__all__ = ["fit", "fit_argv", "options_to_argv", "run_fit"]

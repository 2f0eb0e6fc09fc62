"""``ts-neuralode fit --model auto``: parse the command line and call :func:`ts_neuralode.api.model_choice.fit_auto`.

    ts-neuralode fit --model auto --data.path data/demo.csv --data.horizon 2D --data.time_unit h \\
        --budget.trials 20 --budget.time 1h --ensemble 3 --storage sqlite:///study.db --study_name demo

``--data.*``, ``--model.*`` and ``--trainer.*`` options are fixed for every trial (values read as YAML: ``2D``,
``0.01``, ``[a, b]``, ``null``); ``--config FILE`` gives them from a YAML file's ``data``/``model``/``trainer``
sections (the command line wins). ``--worker`` only runs trials (a worker of a shared ``--storage``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ts_neuralode.api import model_choice
from ts_neuralode.errors import ConfigError, OneLineArgumentParser

PROG = "ts-neuralode fit --model auto"
GROUPS = ("data", "model", "trainer")


def wants_auto(argv: Sequence[str]) -> bool:
    """Whether a ``fit`` command line asks for the model choice (``--model auto`` / ``--model=auto``)."""
    argv = list(argv)
    return "--model=auto" in argv or any(a == "--model" and i + 1 < len(argv) and argv[i + 1] == "auto"
                                         for i, a in enumerate(argv))


def _parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=PROG, description="Search the model families and evolutions with Optuna on the "
                              "forecast task's time split; refit the winner (or keep the top k as an ensemble).",
                              epilog="--data.*, --model.*, --trainer.* options (as for 'ts-neuralode fit') are fixed "
                                     "for every trial and not searched; --data.path and --data.horizon are required.")
    p.add_argument("--model", choices=["auto"], required=True)
    p.add_argument("--config", default=None, help="YAML file whose data/model/trainer sections fix those options")
    p.add_argument("--budget.trials", dest="trials", type=int, default=None,
                   help="trials of the study in total, across workers and resumes (default 20 without --budget.time)")
    p.add_argument("--budget.time", dest="time", default=None, help="wall time of this search (e.g. 30min, 2h)")
    p.add_argument("--metric", default="val_mae", help="validation metric to minimise (default val_mae)")
    p.add_argument("--ensemble", type=int, default=1, help="keep the top k trials as a mixture (default 1)")
    p.add_argument("--refit", type=_bool, default=True,
                   help="retrain the choice on train + validation (default true; false: the trials' own models)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (sqlite:///study.db, postgresql://...): resume, several workers")
    p.add_argument("--study_name", default=None, help="study in the storage (default ts_neuralode_auto)")
    p.add_argument("--worker", action="store_true", help="only run trials (a worker of a shared --storage)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a trial after this many validations without improvement")
    p.add_argument("--output_dir", default="ts_neuralode_auto",
                   help="trials, refits and the model directory (<output_dir>/model)")
    p.add_argument("--tracking", type=_bool, default=True, help="record the search in MLflow (default true)")
    p.add_argument("--tracking_uri", default=None)
    p.add_argument("--experiment_name", default=None)
    p.add_argument("--run_name", default=None, help="MLflow name of the search's parent run")
    p.add_argument("--log_model", type=_bool, default=True)
    p.add_argument("--seed", "--seed_everything", dest="seed", type=int, default=0)
    p.add_argument("--no_progress", action="store_true", help="print nothing per trial")
    return p


def _bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _grouped(rest: list[str]) -> dict[str, dict[str, Any]]:
    """``--data.horizon 2D --model.evolution.kind ode`` -> ``{"data": {"horizon": "2D"}, "model": {"evolution":
    {"kind": "ode"}}, "trainer": {}}``."""
    out: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    i = 0
    while i < len(rest):
        arg = rest[i]
        name, eq, value = arg.partition("=")
        group = name[2:].split(".", 1)[0] if name.startswith("--") else ""
        if group not in GROUPS or "." not in name:
            raise ConfigError(f"{PROG}: unknown option {arg!r}; see '{PROG} --help' (fixed options are --data.*, "
                              "--model.*, --trainer.*)")
        if not eq:
            if i + 1 >= len(rest):
                raise ConfigError(f"{PROG}: {name} needs a value")
            value = rest[i + 1]
            i += 1
        i += 1
        path = name[2:].split(".")[1:]
        node = out[group]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _value(value)
    return out


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _from_config(path: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {g: {} for g in GROUPS}
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: cannot read it ({type(err).__name__}); pass a YAML config file") from err
    return {g: dict(cfg.get(g) or {}) for g in GROUPS}


def main(argv: Sequence[str]) -> int:
    args, rest = _parser().parse_known_args(list(argv))
    given = _merge(_from_config(args.config), _grouped(rest))
    data = given["data"].pop("path", None)
    if data is None:
        raise ConfigError(f"{PROG}: pass --data.path (the CSV or Parquet file to search on)")
    budget: dict[str, Any] = {"trials": args.trials, "time": args.time}
    if args.trials is None and args.time is None:
        budget["trials"] = 20

    common = dict(data_options=given["data"], model_options=given["model"], trainer=given["trainer"],
                  output_dir=args.output_dir, tracking=args.tracking, tracking_uri=args.tracking_uri,
                  experiment_name=args.experiment_name, run_name=args.run_name, seed=args.seed, budget=budget,
                  metric=args.metric, storage=args.storage, study_name=args.study_name, patience=args.patience,
                  progress=False if args.no_progress else None)
    try:
        if args.worker:
            result = model_choice.search(data, **common)
            print(f"worker ran trials {result.ran} of study {result.study.study_name} (stopped: "
                  f"{result.stop_reason})")
            print(model_choice.summary(result), end="")
            return 0
        fc = model_choice.fit_auto(data, ensemble=args.ensemble, refit=args.refit, log_model=args.log_model,
                                   **common)
    except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit(1); SIGTERM likewise
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        hint = ("run the same command again to resume the study" if args.storage else
                "pass --storage sqlite:///study.db to make a search resumable")
        print(f"{PROG}: interrupted; {hint}", file=sys.stderr)
        return 130
    info = fc.fit_info
    print(f"best trial {info['best_trial']} ({info['metric']}={info['best_value']:.4g}): {info['params']}")
    print(f"trials: {info['trials']} (stopped: {info['stop_reason']})")
    kind = f"ensemble of trials {info['members']}" if len(info["members"]) > 1 else "model"
    print(f"{kind} directory: {info['model_dir']}  (ts-neuralode forecast --model {info['model_dir']} ...)")
    if info.get("parent_run_id"):
        print(f"MLflow parent run {info['parent_run_id']} at {info['tracking_uri']}")
    return 0


__all__ = ["main", "wants_auto"]

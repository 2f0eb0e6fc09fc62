"""``ts-neuralode fit --model auto``: parse the command line and call :func:`ts_neuralode.api.model_choice.fit_auto`.

    ts-neuralode fit --model auto --data.path data/demo.csv --data.horizon 2D --data.time_unit h \\
        --budget.trials 20 --budget.time 1h --ensemble 3 --storage sqlite:///study.db --study_name demo

A jsonargparse subcommand (``--config FILE``, ``--print_config``, ``--help`` with defaults and descriptions) whose
options are read from the declarations they set, each declared once:

* the search's options (``--metric``, ``--ensemble``, ``--refit``, ``--storage``, ``--study_name``, ``--patience``,
  ``--output_dir``, ``--tracking`` ..., ``--seed``, ``--progress``): the signature and docstring of
  :func:`~ts_neuralode.api.model_choice.fit_auto`; ``--budget.trials`` / ``--budget.time`` its ``budget``;
* the options fixed for every trial, ``--data.*``, ``--model.*``, ``--trainer.*``: those of ``ts-neuralode fit``
  (the signatures of :class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule`,
  :class:`~ts_neuralode.training.ForecastingModule` and Lightning's ``Trainer``), type-checked here; only the ones
  given (on the command line or in the ``--config`` file) are fixed, the others are searched or left at their
  defaults, so ``--print_config`` prints the given ones only and its YAML given back as ``--config`` is the same
  search;
* ``--worker`` (only run trials: a worker of a shared ``--storage``): here.

Older spellings (``--no_progress``, ``--seed_everything``) fail with one line naming the new one
(:data:`AUTO_RENAMES`).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from lightning.pytorch import Trainer

from ts_neuralode.api import model_choice
from ts_neuralode.api.model_choice_study import DEFAULT_TRIALS
from ts_neuralode.cli.args import parse, subcommand_parser
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.errors import ConfigError
from ts_neuralode.training import ForecastingModule
from ts_neuralode.training.options import check_option_spelling

PROG = "ts-neuralode fit --model auto"
#: the option groups fixed for every trial, and the class whose signature declares each
GROUPS = {"data": IrregularTimeSeriesDataModule, "model": ForecastingModule, "trainer": Trainer}
#: fit_auto's arguments that are no option of their own: the data (``--data.path``), the fixed options
#: (``--data.*``, ``--model.*``, ``--trainer.*``), the budget (``--budget.*``) and Python objects
_NOT_OPTIONS = {
    "data",
    "data_options",
    "model_options",
    "trainer",
    "budget",
    "callbacks",
    "space",
    "pruner",
    "enqueue",
    "forecaster_cls",
}
#: the options of ``fit --model auto`` in older versions and their spelling now
AUTO_RENAMES = {"--no_progress": "--progress false", "--seed_everything": "--seed"}


def wants_auto(argv: Sequence[str]) -> bool:
    """Whether a ``fit`` command line asks for the model choice (``--model auto`` / ``--model=auto``)."""
    argv = list(argv)
    return "--model=auto" in argv or any(
        a == "--model" and i + 1 < len(argv) and argv[i + 1] == "auto" for i, a in enumerate(argv)
    )


def _without_model_auto(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--model auto`` (the word that chose this subcommand: ``prog`` says it)."""
    out: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == "--model=auto":
            continue
        elif a == "--model" and i + 1 < len(argv) and argv[i + 1] == "auto":
            skip = True
        else:
            out.append(a)
    return out


def _options() -> list[str]:
    """fit_auto's arguments that are options of this command (``--metric``, ``--ensemble`` ...): its own and those
    of :func:`~ts_neuralode.api.model_choice.search`, which it passes its ``**options`` on to."""
    own = inspect.signature(model_choice.fit_auto).parameters
    searched = inspect.signature(model_choice.search).parameters
    names = [n for n, p in own.items() if p.kind is not p.VAR_KEYWORD] + list(searched)
    return [name for name in dict.fromkeys(names) if name not in _NOT_OPTIONS]


def parser():
    """The ``ts-neuralode fit --model auto`` parser (see the module docstring for where each option is declared)."""
    p = subcommand_parser(
        "fit --model auto",
        "Search the model families and evolutions with Optuna on the forecast task's time split; refit the winner "
        "(or keep the top k as an ensemble).",
    )
    p.epilog = (
        "--data.*, --model.*, --trainer.* are 'ts-neuralode fit''s options (see 'ts-neuralode fit --help'); "
        "those given are fixed for every trial, the others searched; --data.path and --data.horizon are "
        "required."
    )
    p.add_function_arguments(model_choice.fit_auto, skip=_NOT_OPTIONS)
    p.set_defaults(output_dir="ts_neuralode_auto")  # the command line's own directory (the API's: ts_neuralode_fit)
    g = p.add_argument_group("budget (the search ends at the first reached)")
    g.add_argument(
        "--budget.trials",
        type=int | None,
        default=None,
        help=f"trials of the study in total, across workers and resumes (default {DEFAULT_TRIALS} "
        "without --budget.time)",
    )
    g.add_argument(
        "--budget.time",
        type=float | str | None,
        default=None,
        help="wall time of this search: seconds or a duration such as 30min, 2h",
    )
    p.add_argument("--worker", action="store_true", help="only run trials (a worker of a shared --storage)")
    for name, cls in GROUPS.items():
        p.add_class_arguments(cls, name, instantiate=False, fail_untyped=False)
    for group in p._action_groups:  # jsonargparse titles a group with its function's or class's docstring
        dests = {a.dest.split(".", 1)[0] for a in group._group_actions}
        if dests & set(_options()):
            group.title = "the search (fit_auto's options)"
        elif len(dests) == 1 and (name := next(iter(dests))) in GROUPS:
            group.title = f"--{name}.*: fixed for every trial when given ({GROUPS[name].__name__})"
    return p


def _given(p, argv: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``--data.*``, ``--model.*``, ``--trainer.*`` options given (command line and ``--config`` file; the
    command line wins), as nested dicts: ``{"data": {"horizon": "2D"}, "model": {"evolution": {"kind": "ode"}},
    "trainer": {}}``."""
    try:
        cfg = parse(p, argv, AUTO_RENAMES, defaults=False).as_dict()
    except ConfigError as err:
        text, n = re.subn("unrecognized arguments", "unknown option(s)", str(err), flags=re.IGNORECASE)
        if n:
            raise ConfigError(
                text.replace("; see", " (the fixed options are --data.*, --model.*, --trainer.*); see", 1)
            ) from None
        raise
    return {g: dict(cfg.get(g) or {}) for g in GROUPS}


def _grouped(rest: list[str]) -> dict[str, dict[str, Any]]:
    """The fixed options of command line words ``rest`` (values read as typed by ``ts-neuralode fit``)."""
    return _given(parser(), rest)


def _from_config(path: str | None) -> dict[str, dict[str, Any]]:
    """The fixed options of a ``--config`` file (its ``data``/``model``/``trainer`` sections)."""
    return _grouped(["--config", path]) if path is not None else {g: {} for g in GROUPS}


def _merge(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``, nested dicts merged (as a ``--config`` file and the command line are)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config(argv: Sequence[str]) -> dict[str, Any]:
    """The options of a ``fit --model auto`` command line (``--model auto`` included or not) as the nested dict
    ``--print_config`` prints and ``--config`` reads: every search option (with its default), the budget, and the
    fixed ``data``/``model``/``trainer`` options given."""
    argv = _without_model_auto([a for a in argv if not a.startswith("--print_config")])
    check_option_spelling(argv)  # --model.method rk4 (older versions) -> --model.evolution.method
    p = parser()
    fixed = _given(p, argv)
    args = parse(p, argv, AUTO_RENAMES).as_dict()
    out = {k: v for k, v in args.items() if k != "config" and not k.startswith("__") and k not in GROUPS}
    return {**out, **fixed}


def main(argv: Sequence[str]) -> int:
    """``ts-neuralode fit --model auto ...`` (``argv``: the words after ``fit``); returns the exit status."""
    argv = list(argv)
    cfg = config(argv)
    if any(a.startswith("--print_config") for a in argv):
        sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    data = cfg["data"].pop("path", None)
    if data is None:
        raise ConfigError(f"{PROG}: pass --data.path (the CSV or Parquet file to search on)")
    budget = dict(cfg["budget"])
    if budget["trials"] is None and budget["time"] is None:
        budget["trials"] = DEFAULT_TRIALS
    options = {name: cfg[name] for name in _options()}
    searched = inspect.signature(model_choice.search).parameters  # fit_auto's options but the finish's
    common = dict(
        data_options=cfg["data"],
        model_options=cfg["model"],
        trainer=cfg["trainer"],
        budget=budget,
        **{k: v for k, v in options.items() if k in searched},
    )
    finish = {k: v for k, v in options.items() if k not in searched}  # ensemble, refit, log_model
    try:
        if cfg["worker"]:
            result = model_choice.search(data, **common)
            print(f"worker ran trials {result.ran} of study {result.study.study_name} (stopped: {result.stop_reason})")
            print(model_choice.summary(result), end="")
            return 0
        fc = model_choice.fit_auto(data, **common, **finish)
    except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit(1); SIGTERM likewise
        if isinstance(err, SystemExit) and err.code in (0, None):
            raise
        hint = (
            "run the same command again to resume the study"
            if cfg["storage"]
            else "pass --storage sqlite:///study.db to make a search resumable"
        )
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


__all__ = ["AUTO_RENAMES", "config", "main", "parser", "wants_auto"]

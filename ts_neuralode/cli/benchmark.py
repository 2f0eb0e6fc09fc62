"""``ts-neuralode benchmark``: a jsonargparse subcommand (``--config FILE``, ``--print_config``, ``--help``) whose
options are read from the declarations they set, each declared once:

* the benchmark's own (``--dataset``, ``--models``, ``--epochs`` ...): the fields of
  :class:`~ts_neuralode.api.benchmark.config.BenchmarkConfig`;
* the data options ``--data.*`` (:data:`~ts_neuralode.api.benchmark.config.DATA_FIELDS` and
  :data:`~ts_neuralode.api.benchmark.config.READ_OPTIONS`): the data module's signature
  (:class:`~ts_neuralode.data.datamodule.IrregularTimeSeriesDataModule`, as in ``fit``), with BenchmarkConfig's
  defaults (the data module's, but for ``layout``: ``auto``);
* the model options every model shares (``--latent_dim``, ``--lr``, ``--rtol`` ...): ForecastingModule's signature
  and :class:`~ts_neuralode.models.evolution_config.EvolutionConfig` (default: each model's own);
* ``--tracking``, ``--tracking_uri``, ``--experiment_name``, ``--run_name``, ``--progress``: the signature of
  :func:`~ts_neuralode.api.benchmark.runner.run_benchmark` (the command line tracks by default);
* ``--out``, ``--plot``, ``--title`` (the files this command writes): here.

Older spellings (``--task``, ``--horizon``, ``--batch_size`` ..., ``--no_tracking``, ``--no_progress``,
``--n-series``) fail with one line naming the new one (:data:`BENCHMARK_RENAMES`).
"""

from __future__ import annotations

import inspect
import shlex
import sys
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import docstring_parser

from ts_neuralode.api.benchmark.config import (
    DATA_FIELDS,
    MODEL_SPECS,
    PROG,
    READ_OPTIONS,
    SHARED_MODEL_OPTIONS,
    BenchmarkConfig,
    BenchmarkResult,
)
from ts_neuralode.api.benchmark.report import markdown_table, write_outputs
from ts_neuralode.api.benchmark.runner import run_benchmark
from ts_neuralode.api.preflight import tracking_store, writable_file
from ts_neuralode.cli.args import parse, subcommand_parser
from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import NAMES
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri
from ts_neuralode.models.evolution_config import EvolutionConfig
from ts_neuralode.training import ForecastingModule

#: the options of ``benchmark`` in older versions and their spelling now
BENCHMARK_RENAMES = {
    **{f"--{name}": f"--data.{name}" for name in DATA_FIELDS if name != "path"},
    "--no_tracking": "--tracking false",
    "--no_progress": "--progress false",
}
#: BenchmarkConfig fields the command line does not set (the data options are ``--data.*``; model options per model
#: are for scripts)
_NOT_OPTIONS = {*DATA_FIELDS, "read_options", "model_options", "model_overrides"}
_RUN_OPTIONS = ("tracking", "tracking_uri", "experiment_name", "run_name", "progress")


#: what each shared model option does, in the words of a benchmark (its type and the models' default are read from
#: where it is declared: :func:`_shared_model_option`)
_SHARED_HELP = {
    "latent_dim": "state size of every model",
    "hidden_dim": "width of every model's networks",
    "num_layers": "hidden layers of the vector fields' / flows' networks",
    "flow_layers": "stacked flow layers of every flow",
    "lr": "Adam's learning rate",
    "rtol": "relative tolerance of the adaptive ODE solvers (dopri5)",
    "atol": "absolute tolerance of the adaptive ODE solvers (dopri5)",
    "step_size": "fixed step of rk4 (None: from output time to output time)",
}


def _descriptions(owner: Any) -> dict[str, str]:
    """The parameter/attribute descriptions of ``owner``'s docstring."""
    return {
        p.arg_name: " ".join((p.description or "").split())
        for p in docstring_parser.parse(inspect.getdoc(owner) or "").params
    }


def _retitle(parser, dest: str, title: str) -> None:
    """Title the help group of option ``dest`` (jsonargparse titles a class's group with its docstring)."""
    for group in parser._action_groups:
        if any(a.dest == dest for a in group._group_actions):
            group.title = title


def _shared_model_option(name: str) -> tuple[Any, Any]:
    """The type and default of a shared model option, where it is declared: ForecastingModule's signature, else an
    EvolutionConfig field."""
    params = inspect.signature(ForecastingModule.__init__).parameters
    if name in params:
        return typing.get_type_hints(ForecastingModule.__init__)[name], params[name].default
    declared = {f.name: f for f in fields(EvolutionConfig)}[name]
    return typing.get_type_hints(EvolutionConfig)[name], declared.default


def parser():
    """The ``ts-neuralode benchmark`` parser (see the module docstring for where each option is declared)."""
    p = subcommand_parser(
        "benchmark",
        "Train Neural ODE and Neural Flow models on the same data, seed and budget; report parameters, epoch time, "
        "latency, NFE and test MSE, with naive baselines scored by the same code (table, CSV, PNG, MLflow).",
    )
    p.add_class_arguments(BenchmarkConfig, skip=_NOT_OPTIONS, instantiate=False)

    # the data options: the data module's, with the benchmark's defaults and descriptions of its fields
    data_params = set(inspect.signature(IrregularTimeSeriesDataModule.__init__).parameters) - {"self"}
    p.add_class_arguments(
        IrregularTimeSeriesDataModule, "data", instantiate=False, skip=data_params - {*DATA_FIELDS, *READ_OPTIONS}
    )
    defaults = {f.name: f.default for f in fields(BenchmarkConfig) if f.default is not MISSING}
    p.set_defaults({f"data.{name}": defaults[name] for name in DATA_FIELDS})
    bench_docs = _descriptions(BenchmarkConfig)
    for action in p._actions:
        key = action.dest.removeprefix("data.")
        if action.dest.startswith("data.") and key in DATA_FIELDS and bench_docs.get(key):
            action.help = bench_docs[key]
        elif action.dest in ("models", "dataset"):  # the names to choose from
            names = MODEL_SPECS if action.dest == "models" else NAMES
            action.help = f"{action.help.rstrip('.')}; from: {', '.join(names)}."

    g = p.add_argument_group("model options, the same for every model (default: each model's own)")
    for name in SHARED_MODEL_OPTIONS:
        typ, own = _shared_model_option(name)
        g.add_argument(f"--{name}", type=typ | None, default=None, help=f"{_SHARED_HELP[name]} (models: {own})")

    p.add_function_arguments(run_benchmark, skip={"cfg", "artifacts"})
    p.set_defaults(tracking=True)  # a command line run is recorded unless it says not to
    _retitle(p, "dataset", "the benchmark (models, budget, synthetic data)")
    _retitle(p, "data.path", "data (--dataset, or --data.path with its reading options) and task")
    _retitle(p, "tracking", "MLflow and progress")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=str, default="benchmark.csv", help="the result CSV; the PNG and markdown go beside it")
    o.add_argument("--plot", type=str | None, default=None, help="the PNG chart (default <out stem>.png)")
    o.add_argument(
        "--title",
        type=str | None,
        default=None,
        help="title of the chart and the markdown (default: Neural ODE vs Neural Flow — <data set>)",
    )
    return p


def config_from_args(args) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of parsed options (a jsonargparse Namespace)."""
    data = args.data
    own = {f.name: args[f.name] for f in fields(BenchmarkConfig) if f.name not in _NOT_OPTIONS}
    read_defaults = inspect.signature(IrregularTimeSeriesDataModule.__init__).parameters
    read = {k: data[k] for k in READ_OPTIONS if data[k] != read_defaults[k].default}
    if read and data.path is None:
        raise ConfigError(f"--data.{next(iter(read))} applies to a CSV only; pass --data.path FILE.csv too")
    shared = {k: args[k] for k in SHARED_MODEL_OPTIONS if args[k] is not None}
    return BenchmarkConfig(**own, **{k: data[k] for k in DATA_FIELDS}, read_options=read, model_options=shared)


def _preflight(args) -> None:
    """Output paths and the tracking store, checked before any data is generated or model trained."""

    writable_file(args.out, "--out")
    if args.plot:
        writable_file(args.plot, "--plot")
    if args.tracking:
        tracking_store(resolve_tracking_uri(args.tracking_uri), off="--tracking false")


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``ts-neuralode benchmark ...``; returns the exit status (user errors raise ConfigError/DataError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(parser(), argv, BENCHMARK_RENAMES)
    cfg = config_from_args(args)
    cfg.validate()
    _preflight(args)
    command = f"{PROG} " + " ".join(shlex.quote(a) for a in argv)
    title = args.title or f"Neural ODE vs Neural Flow — {cfg.dataset or Path(cfg.path).name}"
    out_csv = Path(args.out)
    written: list[Path] = []

    def _artifacts(res: BenchmarkResult) -> list[Path]:
        written.extend(write_outputs(res, out_csv, command, title, args.plot))
        return written

    result = run_benchmark(cfg, **{k: args[k] for k in _RUN_OPTIONS}, artifacts=_artifacts)
    if not written:
        written.extend(write_outputs(result, out_csv, command, title, args.plot))
    print(markdown_table(result.table))
    print(f"\nwrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if result.parent_run_id:
        print(
            f"MLflow parent run {result.parent_run_id} ({len(result.child_run_ids)} nested) at {result.tracking_uri}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    import contextlib

    with contextlib.suppress(BrokenPipeError):
        sys.exit(cli_main())

"""``ts-neuralode benchmark``: its options, turned into a :class:`BenchmarkConfig` and run."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ts_neuralode.api.benchmark.config import DEFAULT_MODELS, LAYOUTS, MODEL_SPECS, PROG, SPLITS, TASKS, BenchmarkConfig
from ts_neuralode.api.benchmark.report import markdown_table, write_outputs
from ts_neuralode.api.benchmark.runner import BenchmarkResult, run_benchmark
from ts_neuralode.api.preflight import tracking_store, writable_file
from ts_neuralode.cli.args import DefaultsHelpFormatter, name_defaults
from ts_neuralode.errors import ConfigError, OneLineArgumentParser
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri


# ------------------------------------------------------------------------------------------------ CLI
def _float_or_auto(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog=PROG, formatter_class=DefaultsHelpFormatter, description="Train Neural ODE and "
                                                                                            "Neural Flow models on the "
                                                                                            "same data, seed and "
                "budget; report parameters, epoch time, latency, NFE and test MSE (table, CSV, PNG, MLflow).")
    src = p.add_argument_group("data (one of --dataset / --data.path)")
    src.add_argument("--dataset", default=None, help="synthetic set (ts-neuralode generate names), e.g. sine")
    src.add_argument("--n_series", type=int, default=1000, help="series of the synthetic set (default 1000)")
    src.add_argument("--n_points", type=int, default=None, help="points per synthetic series (default: the set's)")
    src.add_argument("--data.path", dest="path", default=None, help="CSV file (long or wide format)")
    src.add_argument("--data.format", dest="format", choices=("long", "wide"), default=None)
    src.add_argument("--data.id_col", dest="id_col", default=None)
    src.add_argument("--data.time_col", dest="time_col", default=None)
    src.add_argument("--data.value_cols", dest="value_cols", nargs="+", default=None)
    src.add_argument("--data.mask_cols", dest="mask_cols", nargs="+", default=None)
    src.add_argument("--data.time_unit", dest="time_unit", default=None)
    src.add_argument("--data.duplicates", dest="duplicates", choices=("error", "mean"), default=None)
    src.add_argument("--data.layout", "--layout", dest="layout", choices=LAYOUTS, default="auto",
                     help="auto (union when series share times, else padded)")
    src.add_argument("--data.scaler", "--scaler", dest="scaler", default="standard",
                     choices=("standard", "minmax", "robust", "none"))
    src.add_argument("--data.time_scale", dest="time_scale", type=_float_or_auto, default="auto")
    task = p.add_argument_group("task")
    task.add_argument("--task", "--data.task", dest="task", choices=TASKS, default="interpolation",
                      help="training task (interpolation and extrapolation are both scored; forecast adds its own "
                           "test, see --split_by); default interpolation")
    task.add_argument("--horizon", "--data.horizon", dest="horizon", default=None,
                      help="forecast task: how far after the cutoff targets are scored (e.g. 2D, 52W or a number of "
                           "time units); required with --task forecast")
    task.add_argument("--context", "--data.context", dest="context", default=None,
                      help="forecast task: how much history before the cutoff the models see (default: all)")
    task.add_argument("--windows_per_series", "--data.windows_per_series", dest="windows_per_series",
                      default="auto", help="forecast task: training windows per series per epoch (default auto: "
                                           "about one per horizon of the series)")
    task.add_argument("--split_by", "--data.split_by", dest="split_by", choices=SPLITS, default=None,
                      help="forecast task: hold out the last horizons of every series (time, the default) or whole "
                           "series (series)")
    task.add_argument("--obs_fraction", "--data.obs_fraction", dest="obs_fraction", type=float, default=0.5)
    task.add_argument("--cut", "--data.cut", dest="cut", type=float, default=0.5)
    task.add_argument("--extrap_obs_fraction", "--data.extrap_obs_fraction", dest="extrap_obs_fraction",
                      type=float, default=1.0)
    m = p.add_argument_group("models and budget")
    m.add_argument("--baselines", default=None,
                   help="naive baselines with rows of their own, comma-separated (locf, nearest, linear, mean, "
                        "seasonal) or 'none'; default locf,mean,linear (+ seasonal with --season)")
    m.add_argument("--season", "--data.season", dest="season", default=None,
                   help="period of the seasonal naive baseline: a duration (24h, 365D) or a number of time units")
    m.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma- or space-separated subset of: {', '.join(MODEL_SPECS)} (default: "
                        f"{', '.join(DEFAULT_MODELS)})")
    m.add_argument("--epochs", type=int, default=5)
    m.add_argument("--batch_size", "--data.batch_size", dest="batch_size", type=int, default=50)
    m.add_argument("--seed", type=int, default=0, help="data generation, split, subsampling and model init")
    m.add_argument("--latent_dim", type=int, default=None)
    m.add_argument("--hidden_dim", type=int, default=None)
    m.add_argument("--num_layers", type=int, default=None)
    m.add_argument("--flow_layers", type=int, default=None)
    m.add_argument("--lr", type=float, default=None)
    m.add_argument("--rtol", type=float, default=None)
    m.add_argument("--atol", type=float, default=None)
    m.add_argument("--step_size", type=float, default=None, help="fixed step of rk4 (default: output spacing)")
    m.add_argument("--gradient_clip", type=float, default=1.0)
    m.add_argument("--latency_reps", type=int, default=3)
    m.add_argument("--device", default="cpu", help="cpu or cuda")
    m.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these small models run fastest and least noisily on one "
                        "thread per process, especially on a shared machine; 0 = torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="benchmark.csv", help="CSV path; the PNG and markdown go beside it")
    o.add_argument("--plot", default=None, help="PNG path (default <out stem>.png)")
    o.add_argument("--title", default=None)
    o.add_argument("--tracking_uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    o.add_argument("--experiment_name", default="ts_neuralode_benchmark")
    o.add_argument("--run_name", default=None)
    o.add_argument("--no_tracking", action="store_true", help="do not record MLflow runs")
    o.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    name_defaults(p)
    return p


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    read = {k: getattr(args, k) for k in ("format", "id_col", "time_col", "value_cols", "mask_cols", "time_unit",
                                          "duplicates") if getattr(args, k) is not None}
    if read and args.path is None:
        raise ConfigError(f"--data.{next(iter(read))} applies to a CSV only; pass --data.path FILE.csv too")
    models = tuple(m for m in args.models.replace(",", " ").split() if m)
    shared = {k: getattr(args, k) for k in ("latent_dim", "hidden_dim", "num_layers", "flow_layers", "lr", "rtol",
                                            "atol", "step_size") if getattr(args, k) is not None}
    baselines = None
    if args.baselines is not None:
        baselines = tuple(b for b in args.baselines.replace(",", " ").split() if b and b != "none")
    return BenchmarkConfig(
        dataset=args.dataset, path=args.path, read_options=read, n_series=args.n_series, n_points=args.n_points,
        models=models, task=args.task, horizon=args.horizon, context=args.context,
        windows_per_series=args.windows_per_series, split_by=args.split_by, baselines=baselines, season=args.season,
        obs_fraction=args.obs_fraction, cut=args.cut,
        extrap_obs_fraction=args.extrap_obs_fraction, layout=args.layout, scaler=args.scaler,
        time_scale=args.time_scale, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        model_options=shared, gradient_clip=args.gradient_clip, latency_reps=args.latency_reps,
        device=args.device, threads=args.threads or None,
    )


def _preflight(args: argparse.Namespace) -> None:
    """Output paths and the tracking store, checked before any data is generated or model trained."""

    writable_file(args.out, "--out")
    if args.plot:
        writable_file(args.plot, "--plot")
    if not args.no_tracking:
        tracking_store(resolve_tracking_uri(args.tracking_uri), off="--no_tracking")


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``ts-neuralode benchmark ...``; returns the exit status (user errors raise ConfigError/DataError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    cfg.validate()
    _preflight(args)
    command = "ts-neuralode benchmark " + " ".join(shlex.quote(a) for a in argv)
    title = args.title or f"Neural ODE vs Neural Flow — {cfg.dataset or Path(cfg.path).name}"
    out_csv = Path(args.out)
    written: list[Path] = []

    def _artifacts(res: BenchmarkResult) -> list[Path]:
        written.extend(write_outputs(res, out_csv, command, title, args.plot))
        return written

    result = run_benchmark(cfg, tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                           experiment_name=args.experiment_name, run_name=args.run_name,
                           progress=not args.no_progress, artifacts=_artifacts)
    if not written:
        written.extend(write_outputs(result, out_csv, command, title, args.plot))
    print(markdown_table(result.table))
    print(f"\nwrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if result.parent_run_id:
        print(f"MLflow parent run {result.parent_run_id} ({len(result.child_run_ids)} nested) at "
              f"{result.tracking_uri}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import contextlib

    with contextlib.suppress(BrokenPipeError):
        sys.exit(cli_main())

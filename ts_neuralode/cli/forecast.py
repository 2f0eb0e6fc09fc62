"""``ts-neuralode forecast``: forecast a history with a trained model (CSV + PNGs, optionally logged to an MLflow
run); the history and sampling options declared here are shared with ``backtest`` (:mod:`ts_neuralode.cli.backtest`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.api.preflight import tracking_store, writable_dir, writable_file
from ts_neuralode.cli.args import parse, subcommand_parser
from ts_neuralode.core.atomic import atomic_write_bytes, load_json
from ts_neuralode.core.sampling import SAMPLING
from ts_neuralode.data.io import frame_bytes
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow.tracking import RUN_FILE, resolve_tracking_uri
from ts_neuralode.training.options import TrackingOptions

PROG = "ts-neuralode"


def _forecast_parser():

    p = subcommand_parser(
        "forecast",
        "Forecast every series of a history CSV at future (or any) times with a trained model; writes a "
        "Nixtla-style CSV (unique_id, ds, <model>, <model>-lo-L, <model>-hi-L) and one PNG per series.",
    )
    forecast_options(p, context="before each series' last observation")
    g = p.add_argument_group("query times (horizon [+ freq | num_points], or times)")
    horizon_option(g, "how far past each series' last observation")
    g.add_argument(
        "--freq", type=str | None, default=None, help="regular step of the query grid (number or duration, e.g. 1D)"
    )
    g.add_argument(
        "--num_points", type=int | None, default=None, help="evenly spaced query points (default: 50 when no --freq)"
    )
    g.add_argument("--times", type=str, nargs="+", default=None, help="explicit query times shared by all series")
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="stretch the bands by the model's conformal calibration (an error when it has none); the "
        "default stretches them whenever the model has one (fit calibrates on its validation windows)",
    )
    p.add_argument(
        "--raw_bands",
        action="store_true",
        help="the model's own (uncalibrated) bands, even when the model has a calibration",
    )
    p.add_argument("--quantiles", type=float, nargs="*", default=None, help="extra quantiles in (0, 1)")
    p.add_argument("--series", type=str, nargs="+", default=None, help="only these series ids")
    p.add_argument(
        "--max_steps",
        type=int | None,
        default=None,
        help="ODE solver steps per solve (default: what the horizon needs, at least the model's own "
        "max_steps, at most 30000); raise it for horizons far past the history",
    )
    p.add_argument("--out", type=str, default="forecast.csv", help="output file (.parquet for Parquet)")
    p.add_argument("--plot_dir", type=str | None, default=None, help="PNG per series here (default: <out stem>_plots/)")
    p.add_argument("--max_plots", type=int, default=20, help="plot at most this many series")
    p.add_argument(
        "--plot_history",
        type=str | None,
        default=None,
        help="show only this much history before each series' end in the PNGs (e.g. 5D; default all)",
    )
    p.add_argument("--plots", type=bool, default=True, help="write a PNG per series (false: none)")
    # the tracking URI of runs:/ model URIs and --mlflow_run
    p.add_class_arguments(TrackingOptions, None, instantiate=False, skip={"experiment_name", "run_name", "tracking"})
    run_options(p, "also attach the CSV and PNGs to it (artifacts forecast/)")
    return p


def run_options(p, mlflow_run: str) -> None:
    """The options ``forecast`` and ``backtest`` share after their own: ``--mlflow_run`` (``mlflow_run``: what the
    command logs to that run) and ``--progress``."""
    p.add_argument(
        "--mlflow_run",
        type=str | None,
        default=None,
        help=f"an existing MLflow run, a run id or the checkpoint directory of a fit (its mlflow_run.json names the "
        f"run and tracking URI): {mlflow_run}",
    )
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar (false: none)")


#: the options of ``forecast`` (and ``backtest``) in older versions and their spelling now
FORECAST_RENAMES = {"--no_plots": "--plots false", "--no_progress": "--progress false"}

#: options ``forecast`` and ``backtest`` cannot run without (not required by the parser, so that
#: ``--print_config`` and ``--config`` work without them)
REQUIRED = ("--model", "--data.path")


def horizon_option(p, what: str) -> None:
    """``--horizon`` of ``forecast`` and ``backtest``; ``what``: how far from where."""
    p.add_argument(
        "--horizon", type=str | None, default=None, help=f"{what}: a number of time units or a duration such as 2D, 12h"
    )


def forecast_options(p, context: str) -> None:
    """The options ``forecast`` and ``backtest`` share (one definition, so they cannot drift): the model, the
    history's reading options, known-future covariates and the predictive distribution. ``context``: where the
    conditioning window of ``--context`` ends ("before each series' last observation", "before each cutoff")."""
    g = p.add_argument_group("model, history and predictive samples")
    g.add_argument(
        "--model",
        type=str | None,
        default=None,
        help="(required) model directory (from fit: <checkpoint_dir>/model, or MLflow artifact 'model'), "
        "a .ckpt, or runs:/<run_id>/model to fetch it from MLflow",
    )
    g.add_argument(
        "--transform",
        type=str | None,
        default=None,
        help="for a .ckpt without a data transform: a model directory or its config.json",
    )
    g.add_argument(
        "--data.path",
        type=str | None,
        default=None,
        help="(required) history file, CSV or Parquet (.parquet) (observed values)",
    )
    g.add_argument(
        "--data.format",
        type=Literal["long", "wide"] | None,
        default=None,
        help="long or wide (default: the model's, from fit)",
    )
    for col, what in (("id_col", "series id"), ("time_col", "time")):
        g.add_argument(
            f"--data.{col}",
            type=str | None,
            default=None,
            help=f"the history's {what} column (default: the model's, from fit; for a file whose columns are "
            "named otherwise)",
        )
    g.add_argument(
        "--data.value_cols",
        type=str,
        nargs="+",
        default=None,
        help="the history's value columns, in the order of the model's channels (default: the model's)",
    )
    g.add_argument(
        "--data.mask_cols",
        type=str,
        nargs="+",
        default=None,
        help="0/1 mask columns, one per value column (default: the model's)",
    )
    g.add_argument(
        "--data.duplicates",
        type=Literal["error", "mean"] | None,
        default=None,
        help="rows sharing a series and time: error or mean (default: the model's)",
    )
    g.add_argument(
        "--future",
        type=str | None,
        default=None,
        help="CSV of known-future covariate values after the history (id, time and the model's "
        "future_cols), for a model trained with --data.future_cols; per series and column its "
        "values replace the history's from its first time on",
    )
    g.add_argument(
        "--context",
        type=str | None,
        default=None,
        help=f"condition on only this much recent history {context} (a duration such as 30D or a number "
        "of time units; 'all': the whole history; default: the context the model was trained with "
        "on the forecast task, else the whole history)",
    )
    # the defaults are the API's (forecast_frame.SAMPLING), so the command line and Forecaster.predict agree
    g.add_argument("--num_samples", type=int, default=SAMPLING.num_samples, help="predictive samples")
    g.add_argument(
        "--level", type=float, nargs="*", default=list(SAMPLING.level), help="central interval levels in percent"
    )
    g.add_argument("--batch_size", type=int, default=SAMPLING.batch_size, help="series per forward pass")
    g.add_argument("--seed", type=int, default=SAMPLING.seed, help="sampling seed")


def parse_forecast_like(parser, argv: Sequence[str], renames: Mapping[str, str] = FORECAST_RENAMES):
    """Parse ``forecast`` / ``backtest`` options; one line when ``--model`` or ``--data.path`` is missing, or for an
    option spelled as in older versions (``renames``)."""

    args = parse(parser, _join_negative_values(argv), renames)
    missing = [o for o in REQUIRED if args.get(o[2:]) is None]
    if missing:
        raise ConfigError(
            f"{parser.prog}: the following arguments are required: {', '.join(missing)}; see '{parser.prog} --help'"
        )
    return args


def read_options(args) -> dict:
    """The history's reading options given by :func:`forecast_options`' ``--data.*`` flags."""
    keys = ("format", "id_col", "time_col", "value_cols", "mask_cols", "duplicates")
    return {k: args.data[k] for k in keys if args.data[k] is not None}


def _resolve_model_path(model: str, tracking_uri: str | None) -> str:
    if not model.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return model
    import mlflow

    mlflow.set_tracking_uri(
        tracking_store(
            resolve_tracking_uri(tracking_uri), off="pass the model directory itself as --model", must_exist=True
        )
    )
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=model)
    except Exception as err:  # MlflowException, OSError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--model {model}: cannot fetch it from MLflow ({first}); check the run id and --tracking_uri"
        ) from err


def _parse_times(values: list[str]) -> list:
    out: list = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            out.append(v)
    return out


_DURATION_OPTIONS = ("--horizon", "--freq", "--plot_history", "--context")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--horizon -1D`` -> ``--horizon=-1D``: argparse would take ``-1D`` for an option and say "expected one
    argument"; joined, the value reaches the forecaster, which explains what is wrong with it."""
    out: list[str] = []
    it = iter(range(len(argv)))
    argv = list(argv)
    for i in it:
        a = argv[i]
        if a in _DURATION_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            next(it, None)
        else:
            out.append(a)
    return out


def forecast_main(argv: Sequence[str]) -> int:
    args = parse_forecast_like(_forecast_parser(), argv)
    if args.horizon is None and args.times is None:
        raise ConfigError(
            f"{PROG} forecast: no query times; pass --horizon (e.g. 2D, 12h or a number of time "
            "units, with --freq or --num_points) or --times T1 T2 ..."
        )

    writable_file(args.out, "--out")  # before the work: a forecast computed and then not written is lost
    if args.plots:
        writable_dir(_plot_dir(args), "--plot_dir")
    run_target = _resolve_run(args.mlflow_run, args.tracking_uri) if args.mlflow_run else None
    path = _resolve_model_path(args.model, args.tracking_uri)
    fc = Forecaster.load(path, transform=args.transform)
    read = read_options(args)
    out = fc.predict(
        args.data.path,
        args.horizon,
        times=_parse_times(args.times) if args.times else None,
        freq=args.freq,
        num_points=args.num_points,
        num_samples=args.num_samples,
        level=args.level,
        quantiles=args.quantiles,
        series=args.series,
        batch_size=args.batch_size,
        progress=args.progress,
        seed=args.seed,
        context=args.context,
        future=args.future,
        max_steps=args.max_steps,
        calibrated=False if args.raw_bands else (True if args.calibrated else None),
        **read,
    )
    out_path = Path(args.out)
    _write_csv(out, out_path)
    n_series = out["unique_id"].nunique()
    print(f"wrote {out_path}: {len(out)} rows, {n_series} series, columns {', '.join(map(str, out.columns))}")
    pngs: list[Path] = []
    if args.plots:
        plot_dir = _plot_dir(args)
        pngs = fc.plot(
            args.data.path, out, plot_dir, max_series=args.max_plots, history_window=args.plot_history, **read
        )
        print(f"wrote {len(pngs)} plot(s) to {plot_dir}/")
    if run_target is not None:
        run_id, uri = _log_forecast_to_run(run_target, out_path, pngs)
        print(f"attached the forecast to MLflow run {run_id} at {uri} (artifacts forecast/)")
    return 0


def _plot_dir(args) -> Path:
    out = Path(args.out)
    return Path(args.plot_dir) if args.plot_dir else out.with_name(out.stem + "_plots")


def _write_csv(frame, path: Path) -> None:
    """Atomically (a kill during the write leaves the previous file); one line when the path is not writable.
    Parquet for a .parquet / .pq path, else CSV."""

    try:
        atomic_write_bytes(path, frame_bytes(frame, path))
    except OSError as err:
        raise ConfigError(
            f"--out {path}: cannot write it ({err.strerror or type(err).__name__}); pass a writable path"
        ) from err


def _resolve_run(spec: str, tracking_uri: str | None):
    """``--mlflow_run``: (client, run id, tracking URI) of an existing run; checked before anything is written."""
    p = Path(spec)
    info: dict = {"run_id": spec}
    if p.is_dir() or p.is_file():
        f, info = load_json(
            p,
            RUN_FILE,
            lambda f, err: ConfigError(
                f"--mlflow_run {spec}: cannot read {f} ({type(err).__name__}); pass a run id or the "
                "checkpoint directory of a fit (it holds mlflow_run.json)"
            ),
        )
        if not info.get("run_id"):
            raise ConfigError(f"--mlflow_run {spec}: {f} names no run_id; pass a run id instead")

    uri = tracking_store(
        resolve_tracking_uri(tracking_uri or info.get("tracking_uri")), off="leave out --mlflow_run", must_exist=True
    )
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    try:
        client.get_run(info["run_id"])
    except Exception as err:  # MlflowException (no such run, store unreachable)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"--mlflow_run {spec}: no run {info['run_id']} at {uri} ({first}); check the run id and --tracking_uri"
        ) from err
    return client, str(info["run_id"]), uri


def _log_forecast_to_run(target, csv_path: Path, pngs: list[Path]) -> tuple[str, str]:
    """Log the forecast CSV and PNGs to the run resolved by :func:`_resolve_run`; returns (run id, URI)."""
    client, run_id, uri = target
    try:
        client.log_artifact(run_id, str(csv_path), "forecast")
        for png in pngs:
            client.log_artifact(run_id, str(png), "forecast/plots")
    except Exception as err:  # MlflowException, OSError (artifact store not writable)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--mlflow_run: cannot log artifacts to run {run_id} at {uri} ({first})") from err
    return run_id, uri

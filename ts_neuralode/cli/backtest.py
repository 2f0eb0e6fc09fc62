"""``ts-neuralode backtest``: rolling-origin backtest of a trained model on a history file.

    ts-neuralode backtest --model demo_output/model --data.path data/demo.csv --horizon 2D --n_windows 4 \\
        --step 1D --out_dir demo_output/backtest --mlflow_run demo_output/checkpoints

Writes ``<out_dir>/cv.csv`` (the Nixtla-style rows of :func:`ts_neuralode.api.backtest.cross_validation`),
``metrics.csv`` (:func:`ts_neuralode.api.backtest.evaluate`: overall, per series, per horizon bucket),
``report.md`` and ``error_vs_horizon.png``, and logs the overall and per-bucket metrics (step = bucket) and
those files to MLflow: to the run of ``--mlflow_run`` (a run id or a fit's checkpoint directory), else to a new
run in ``--experiment_name``, opened once the backtest has been computed (``--tracking false``: none). A model with
known-future covariates reads them from the history file and ``--future FILE`` (values after its end). The model,
history and sampling options are ``forecast``'s (:func:`ts_neuralode.cli.forecast_options`).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ts_neuralode.api import backtest
from ts_neuralode.api.forecaster import Forecaster
from ts_neuralode.api.preflight import tracking_store, writable_dir, writable_file
from ts_neuralode.cli.args import subcommand_parser
from ts_neuralode.cli.forecast import (
    _parse_times,
    _resolve_model_path,
    _resolve_run,
    _write_csv,
    forecast_options,
    horizon_option,
    parse_forecast_like,
    read_options,
    run_options,
)
from ts_neuralode.core.atomic import atomic_write_text
from ts_neuralode.errors import ConfigError
from ts_neuralode.integrations.mlflow.io import log_batch, open_run
from ts_neuralode.integrations.mlflow.tracking import resolve_tracking_uri
from ts_neuralode.training.options import TrackingOptions

PROG = "ts-neuralode"


def parser():
    p = subcommand_parser(
        "backtest",
        "Rolling-origin backtest: forecast each series from several cutoffs, score the observations within the "
        "horizon after each in the data's units (MAE, RMSE, MAE relative to the last value carried forward, CRPS, "
        "interval coverage / width / Winkler score), overall, per series and per horizon bucket; writes a CSV of "
        "every forecast, the metrics, a markdown report and a plot.",
    )
    forecast_options(p, context="before each cutoff")
    horizon_option(p, "(required) how far after each cutoff to score")
    g = p.add_argument_group("windows (--n_windows [--step], or --cutoffs)")
    g.add_argument(
        "--n_windows",
        type=int | None,
        default=None,
        help="windows per series, the last one ending at the series' last observation (default 3 without --cutoffs)",
    )
    g.add_argument("--step", type=str | None, default=None, help="distance between windows (default: the horizon)")
    g.add_argument("--cutoffs", type=str, nargs="+", default=None, help="explicit cutoff times shared by every series")
    p.add_argument(
        "--refit",
        type=int,
        default=0,
        help="train a new model every K windows on the history before the cutoff (0: never; 1: every "
        "window); needs --fit_args",
    )
    p.add_argument(
        "--fit_args",
        type=str | None,
        default=None,
        help="options of 'ts-neuralode fit' for --refit, as one string, e.g. \"--config "
        'configs/demo.yaml --trainer.max_epochs 20"',
    )
    p.add_argument(
        "--series",
        type=str,
        nargs="+",
        default=None,
        help="backtest only these series ids (e.g. those the fit held out; Forecaster.split_ids)",
    )
    p.add_argument("--buckets", type=int, default=4, help="horizon buckets of the per-horizon metrics")
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="score the bands as calibrated by the model's conformal calibration (from --calibrate)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit a conformal calibration of the bands per horizon bucket on these windows' residuals and "
        "store it in the model directory (calibration.json; used by forecast --calibrated; not in the "
        "MLflow model that fit logged earlier)",
    )
    p.add_argument("--out_dir", type=str, default="backtest", help="output directory")
    p.add_argument(
        "--out",
        type=str | None,
        default=None,
        help="the forecasts' file (default <out_dir>/cv.csv; .parquet for Parquet)",
    )
    p.add_class_arguments(TrackingOptions, None, instantiate=False)
    run_options(p, "log the backtest there instead of to a new run")
    return p


#: the options of ``backtest`` in older versions and their spelling now
BACKTEST_RENAMES = {"--no_tracking": "--tracking false", "--no_progress": "--progress false"}


def main(argv: Sequence[str]) -> int:
    args = parse_forecast_like(parser(), argv, BACKTEST_RENAMES)
    if args.horizon is None:
        raise ConfigError(
            f"{PROG} backtest: the following arguments are required: --horizon; see '{PROG} backtest --help'"
        )
    if args.n_windows is None and args.cutoffs is None:
        args.n_windows = 3
    if args.calibrate and args.calibrated:
        raise ConfigError("--calibrate fits the calibration from the uncalibrated bands; drop --calibrated")
    if args.refit < 0:
        raise ConfigError(f"--refit {args.refit}: pass 0 (never), 1 (every window) or K (every K windows)")

    out_dir = writable_dir(args.out_dir, "--out_dir")  # before the work: a backtest computed and not written is lost
    cv_path = writable_file(args.out, "--out") if args.out else out_dir / "cv.csv"
    target = None  # the store is probed before the work; a new run is opened after it (no orphan RUNNING run)
    if args.tracking:
        target = (
            _resolve_run(args.mlflow_run, args.tracking_uri) if args.mlflow_run else _probe_store(args.tracking_uri)
        )
    model_path = _resolve_model_path(args.model, args.tracking_uri)
    if args.calibrate and not Path(model_path).is_dir():
        raise ConfigError(
            f"--calibrate stores the calibration in the model directory; --model {args.model} is not "
            "one (pass the model directory written by fit)"
        )
    fc = Forecaster.load(model_path, transform=args.transform)
    read = read_options(args)
    cv = backtest.cross_validation(
        fc,
        args.data.path,
        args.horizon,
        n_windows=args.n_windows,
        step=args.step,
        cutoffs=_parse_times(args.cutoffs) if args.cutoffs else None,
        refit=args.refit,
        fit_args=shlex.split(args.fit_args) if args.fit_args else None,
        level=args.level,
        num_samples=args.num_samples,
        context=args.context,
        seed=args.seed,
        batch_size=args.batch_size,
        calibrated=args.calibrated,
        progress=args.progress,
        future=args.future,
        series=args.series,
        **read,
    )
    codec = fc.transform.codec
    h = codec.duration(args.horizon, "horizon", ConfigError)
    unit_ns = codec.unit_ns if codec.is_datetime else None
    metrics = backtest.evaluate(cv, h, buckets=args.buckets, unit_ns=unit_ns)
    _write_csv(cv, cv_path)
    metrics_path = out_dir / "metrics.csv"
    _write_csv(metrics, metrics_path)
    png = backtest.plot_error_vs_horizon(
        metrics, out_dir / "error_vs_horizon.png", unit=getattr(codec, "unit", "") if codec.is_datetime else ""
    )
    command = f"{PROG} backtest " + " ".join(shlex.quote(a) for a in argv)
    report = backtest.markdown_report(cv, metrics, f"Backtest of {fc.name}", command)

    report_path = out_dir / "report.md"
    atomic_write_text(report_path, report + "\n")
    print(f"wrote {cv_path} ({len(cv)} rows), {metrics_path}, {report_path}, {png}")
    if args.calibrate:
        cal = backtest.calibrate(
            fc,
            cv,
            args.horizon,
            args.buckets,
            history=args.data.path,
            save_to=model_path,
            refit=bool(args.refit),
            **read,
        )
        factors = "; ".join(f"{lv}%: " + ", ".join(f"{c:.3g}" for c in f) for lv, f in cal["factors"].items())
        print(f"calibration (band stretch per horizon bucket) {factors}: stored in {model_path}/calibration.json")
    overall = metrics[metrics["scope"] == "overall"].set_index("model")
    for model, row in overall.iterrows():
        cov = "  ".join(f"{c} {row[c]:.3f}" for c in overall.columns if c.startswith("coverage-") and row[c] == row[c])
        print(
            f"  {model}: MAE {row['mae']:.4g}  RMSE {row['rmse']:.4g}  scaled MAE {row['scaled_mae']:.3f}"
            + (f"  CRPS {row['crps']:.4g}" if row.get("crps") == row.get("crps") else "")
            + (f"  {cov}" if cov else "")
        )
    if isinstance(target, str):  # the tracking URI probed above: the backtest's own run, opened now
        target = _new_run(target, args.experiment_name, args.run_name)
    if target is not None:
        files = [cv_path, metrics_path, report_path, png] + (
            [Path(model_path) / "calibration.json"] if args.calibrate else []
        )
        run_id, uri = _log_to_run(target, metrics, files)
        print(f"logged the backtest to MLflow run {run_id} at {uri} (metrics backtest/..., artifacts backtest/)")
    return 0


def _probe_store(tracking_uri: str | None) -> str:
    """The tracking URI, its store probed (ConfigError before any work when it cannot be used)."""

    return tracking_store(resolve_tracking_uri(tracking_uri), off="--tracking false")


def _new_run(uri: str, experiment: str, run_name: str | None):
    client, _, run = open_run(uri, experiment, run_name or "backtest", {"ts_neuralode.subcommand": "backtest"})
    return client, run.info.run_id, uri, True


def _log_to_run(target, metrics, files: list[Path]) -> tuple[str, str]:
    client, run_id, uri = target[:3]
    try:
        log_batch(client, run_id, metrics=backtest.mlflow_metrics(metrics))
        for f in files:
            client.log_artifact(run_id, str(f), "backtest")
        if len(target) > 3:  # a run this command opened
            client.set_terminated(run_id)
    except Exception as err:  # MlflowException, OSError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot log the backtest to MLflow run {run_id} at {uri} ({first})") from err
    return run_id, uri


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))

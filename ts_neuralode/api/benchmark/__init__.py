"""``ts-neuralode benchmark``: Neural ODE vs Neural Flow models, same data, seed and budget.

    ts-neuralode benchmark --dataset sine --epochs 5
    ts-neuralode benchmark --data.path series.csv --models latent_ode_dopri5,latent_gru_flow --epochs 20

Every selected model (:data:`MODEL_SPECS`; default all of them) is built by
:class:`~ts_neuralode.training.ForecastingModule` with the same options, seeded with the same seed, and
trained by a Lightning ``Trainer`` for the same number of epochs on the same
:class:`~ts_neuralode.data.IrregularTimeSeriesDataModule` (training task ``--data.task``). Then it is scored on
the test split of BOTH tasks (the data modules share the split: same seed, same series):

* ``interp_mse``: interpolation test set, held-out points (condition on ``obs_fraction`` of each series);
* ``extrap_mse``: extrapolation test set, points after the cut (condition on the points before it);
* ``forecast_mse`` (training task ``forecast`` only): the last ``--data.horizon`` of each test series, conditioned on
  the ``--data.context`` before it. With ``--data.split_by time`` (the forecast task's default) every series is in
  training, so only this column is scored (the interpolation/extrapolation test series would overlap the
  training data); with ``--data.split_by series`` all three are, on the same held-out series.

Naive baselines (:mod:`ts_neuralode.models.baselines`; ``--baselines``, default ``locf, mean, linear`` plus
``seasonal`` with ``--data.season``) get rows of their own, scored by the same ``trainer.test`` of the same
:class:`~ts_neuralode.training.ForecastingModule` code on the same test sets (nothing to train: no epoch
time). Every row has a skill per task, ``<task>_skill = <task>_mse / LOCF's <task>_mse`` (below 1: better
than carrying the last value forward).

MSE is in model units (values after the data module's scaler; ``--data.scaler none`` keeps the original
units). Reported per model: trainable parameters, training time per epoch (median over epochs; the
``Trainer`` runs no validation and no logger while training, so the epoch time is the training loop only:
data loading, forward, backward, optimiser step), inference latency per test batch (``model.predict`` at the
batch's times, one deterministic sample, no grad; p50 and p95 over ``--latency_reps`` passes over the test
batches after one warm-up pass), function evaluations per forward (training forward and inference forward,
mean per sample; 0 for flows), and the two test MSEs.

Outputs: a markdown table on stdout (and ``<out stem>.md`` with the command that produced it), the CSV
``--out``, a PNG chart of epoch time against test MSE (log-log) and, unless ``--tracking false``, an MLflow parent
run (params: the shared settings; artifacts: CSV, PNG, markdown) with one nested run per model (params: the
model's config; metrics: the row, plus ``epoch/epoch_time_s`` and ``epoch/train_loss`` with ``step = epoch``).
The tracking URI follows the project convention
(:func:`ts_neuralode.integrations.mlflow.tracking.resolve_tracking_uri`).
MLflow is written only between models, never inside a timed loop.

A model whose solver fails (:class:`~ts_neuralode.solvers.SolverError`, e.g. step size underflow on stiff
dynamics) gets its error in the ``error`` column and the benchmark goes on with the next one.

The package, one job a module: :mod:`~ts_neuralode.api.benchmark.config` (model table, columns, settings),
:mod:`~ts_neuralode.api.benchmark.runner` (data, training, scoring), :mod:`~ts_neuralode.api.benchmark.tracker`
(MLflow runs), :mod:`~ts_neuralode.api.benchmark.report` (table, chart, results/ files),
:mod:`~ts_neuralode.cli.benchmark` (the subcommand's options; imported by the command line only, not here).
"""

from ts_neuralode.api.benchmark.config import (
    COLUMNS,
    DEFAULT_MODELS,
    MODEL_SPECS,
    PROG,
    SCORES,
    TASKS,
    BenchmarkConfig,
    BenchmarkResult,
    scored_tasks,
)
from ts_neuralode.api.benchmark.report import (
    describe,
    markdown_table,
    plot_time_vs_mse,
    publish_report,
    script_command,
    script_parser,
    write_outputs,
    write_report,
)
from ts_neuralode.api.benchmark.runner import (
    benchmark_baseline,
    benchmark_model,
    choose_layout,
    load_frame,
    make_datamodules,
    measure_latency,
    module_options,
    run_benchmark,
)

__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "COLUMNS",
    "DEFAULT_MODELS",
    "MODEL_SPECS",
    "PROG",
    "SCORES",
    "TASKS",
    "benchmark_baseline",
    "benchmark_model",
    "choose_layout",
    "describe",
    "load_frame",
    "make_datamodules",
    "markdown_table",
    "measure_latency",
    "module_options",
    "plot_time_vs_mse",
    "run_benchmark",
    "scored_tasks",
    "publish_report",
    "script_command",
    "script_parser",
    "write_outputs",
    "write_report",
]

"""Every shipped config on real irregular data, as a new user runs it: skill against the naive forecasts.

For each data set and each ``configs/*.yaml`` this runs exactly what the README tells a user to run —

    ts-neuralode fit  --config configs/X.yaml --data.path FILE <the data set's options>
    ts-neuralode test --config configs/X.yaml --data.path FILE <the same options> --ckpt_path <best checkpoint>

— in-process (``ts_neuralode.cli.main``), with MLflow on a throwaway sqlite store, and reads the test metrics
that ``test`` logged: the model's forecast MSE on the held-out horizons and the same MSE of the naive
baselines scored by the same code (``test_extrap_mse_locf`` …). Skill = model MSE / LOCF MSE (< 1: better than
carrying the last value forward). Everything the config says (model, optimiser, schedule, early stopping) is
used as shipped; only the data options below are given, as a user would for their CSV, and the epoch budget
(``--epochs``, default 30).

Data sets (the forecast task: condition on the history before a cutoff, score the horizon after it):

* ``pbcseq`` — PBC sequential labs (312 patients, 7 channels, irregular visits over years; not bundled,
  write it with ``scripts/make_pbcseq.py``): forecast the last year of each held-out patient's record from
  everything before it (split by patient, horizon 365 days).
* ``co2`` — Mauna Loa weekly CO₂ (``data/co2_mauna_loa.csv``, one series with real gaps): forecast 52 weeks
  from the 260 weeks before, training on random cutoffs; validation = the year before the test year.
* ``demo`` — the demo sensors (``data/demo.csv``): forecast 2 days from the day before, split by time; and
  ``configs/demo.yaml`` itself, as shipped (its own task, context and epochs: what ``scripts/demo.sh`` trains).

    python scripts/real_data_skill.py                      # every config on every data set found (~1 h, CPU)
    python scripts/real_data_skill.py --datasets co2 --configs ode_rnn,latent_ode_dopri5

Writes results/real_data_skill.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ts_neuralode.api.benchmark import publish_report
from ts_neuralode.training.metrics import skill

ROOT = Path(__file__).resolve().parents[1]
PBC_LABS = "[bili, chol, albumin, alk_phos, ast, platelet, protime]"
DATASETS = {
    "pbcseq": (
        "data/external/pbcseq.csv",
        [
            "--data.value_cols",
            PBC_LABS,
            "--data.task",
            "forecast",
            "--data.horizon",
            "365",
            "--data.split_by",
            "series",
            "--data.windows_per_series",
            "2",
            "--data.batch_size",
            "32",
        ],
    ),
    "co2": (
        "data/co2_mauna_loa.csv",
        [
            "--data.task",
            "forecast",
            "--data.horizon",
            "52W",
            "--data.context",
            "260W",
            "--data.season",
            "52W",
            "--data.time_unit",
            "D",
            "--data.batch_size",
            "16",
        ],
    ),
    "demo": (
        "data/demo.csv",
        [
            "--data.task",
            "forecast",
            "--data.horizon",
            "2D",
            "--data.context",
            "1D",
            "--data.season",
            "24h",
            "--data.time_unit",
            "h",
            "--data.batch_size",
            "16",
        ],
    ),
}
BASELINES = ("locf", "mean", "linear", "seasonal")


def _metrics(store: str, run_name: str) -> tuple[dict[str, float], int]:
    """The run's latest metrics and its number of training epochs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("real_data")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'")
    out: dict[str, float] = {}
    epochs = 0
    for run in runs:  # fit and test may land in one run (the checkpoint names it) or in two
        out.update(run.data.metrics)
        epochs = max(epochs, len(client.get_metric_history(run.info.run_id, "epoch/train_loss")))
    return out, epochs


def _has_test_split(config: Path, options: list[str]) -> bool:
    """False when the config or the options switch the test split off (``test_fraction: 0``, as the demo's)."""
    fraction = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("test_fraction")
    if "--data.test_fraction" in options:
        fraction = options[options.index("--data.test_fraction") + 1]
    return fraction is None or float(fraction) > 0


def run_one(config: Path, name: str, path: str, options: list[str], work: Path, store: str) -> dict:
    from ts_neuralode.cli import main

    run_name = f"{name}-{config.stem}"
    ckpt_dir = work / run_name
    common = [
        "--config",
        str(config),
        "--data.path",
        path,
        *options,
        "--tracking_uri",
        store,
        "--experiment_name",
        "real_data",
        "--run_name",
        run_name,
        "--checkpoint_dir",
        str(ckpt_dir),
        "--model_dir",
        str(ckpt_dir / "model"),
        "--artifact_location",
        str(work / "artifacts"),
        "--trainer.default_root_dir",
        str(ckpt_dir),
    ]  # nothing lands in the repository
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        rc = main(
            [
                "fit",
                *common,
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
                "--log_model",
                "false",
            ]
        )
        best = sorted(p for p in ckpt_dir.glob("epoch*.ckpt"))
        if rc == 0 and best:  # the best checkpoint, scored on the validation windows and on the test ones
            for stage in ("validate", "test") if _has_test_split(config, options) else ("validate",):
                rc = rc or main(
                    [stage, *common, "--ckpt_path", str(best[-1]), "--trainer.enable_progress_bar", "false"]
                )
    seconds = time.perf_counter() - t0
    row = {"data": name, "config": config.stem, "seconds": seconds, "error": ""}
    if rc != 0 or not best:
        row["error"] = (log.getvalue().strip().splitlines() or ["failed"])[-1][:160]
        return row
    m, row["epochs"] = _metrics(store, run_name)
    stage = "test" if "test_extrap_mse" in m else "val"
    row["scored"] = stage
    row["model"] = m.get(f"{stage}_extrap_mse", math.nan)
    for b in BASELINES:
        row[b] = m.get(f"{stage}_extrap_mse_{b}", math.nan)
    return row


def _f(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument(
        "--configs",
        default="",
        help="config stems (default: every configs/*.yaml; demo.yaml on the demo data only, as shipped)",
    )
    p.add_argument("--epochs", type=int, default=30, help="--trainer.max_epochs for every config (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--out", default="results/real_data_skill.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = [ROOT / "configs" / f"{c}.yaml" for c in args.configs.split(",") if c] or sorted(
        (ROOT / "configs").glob("*.yaml")
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for name in [d for d in args.datasets.split(",") if d]:
            path, options = DATASETS[name]
            if not (ROOT / path).is_file():
                print(f"skip {name}: {path} not found (see the script's docstring)", file=sys.stderr)
                continue
            for config in configs:
                if config.stem == "demo":  # the demo's own config, on its own data, exactly as shipped
                    if name != "demo":
                        continue
                    opts = []
                else:
                    opts = [*options, "--trainer.max_epochs", str(args.epochs)]
                row = run_one(config, name, str(ROOT / path), opts, Path(tmp), store)
                rows.append(row)
                print(
                    f"{name:7s} {config.stem:22s} model {_f(row.get('model'))} locf {_f(row.get('locf'))} "
                    f"({row['seconds']:.0f} s) {row['error']}",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        "| data | config | epochs run | scored on | MSE | skill vs LOCF | LOCF | mean | linear | seasonal | "
        "time s | error |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        model_skill = skill(r.get("model", math.nan), r.get("locf", math.nan))
        lines.append(
            f"| {r['data']} | {r['config']} | {_f(r.get('epochs'))} | {r.get('scored', '—')} | "
            f"{_f(r.get('model'))} | {_f(model_skill)} | "
            + " | ".join(_f(r.get(b)) for b in BASELINES)
            + f" | {r['seconds']:.0f} | {r['error']} |"
        )
    table = "\n".join(lines)
    notes = (
        "MSE in the data module's scaled units (standardised per channel on the training part) over the "
        "held-out horizons of the best checkpoint (by val_loss): the test windows, or the validation windows "
        "for a config without a test split (demo.yaml); every baseline column is scored by the same code on "
        "the same points. "
        "Skill < 1: better than carrying the last value forward. Options per data set: "
        + "; ".join(f"`{k}`: `{' '.join(v[1])}`" for k, v in DATASETS.items())
        + "."
    )
    return publish_report(
        args.out,
        "Real irregular data: every shipped config against the naive forecasts",
        "scripts/real_data_skill.py",
        argv,
        [notes, table],
        table,
    )


if __name__ == "__main__":
    sys.exit(main())

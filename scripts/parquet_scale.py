"""One epoch of a flow model from a partitioned Parquet folder at several sizes: time and peak RSS (issue 24, part 3).

For each size (series x 100 points) the folder is written by ``scripts/make_parquet_folder.py`` (double_ou, whole
series per part file, hive ``bucket=K`` folders) unless it is there already, then a fresh child process runs
``ts-neuralode fit --config configs/gru_flow.yaml --data.path FOLDER --trainer.max_epochs 1`` (one training epoch and
its validation pass, 1 torch thread, no MLflow) and reports its own peak RSS (``resource.getrusage``, the whole
process: Python, torch, the model, the shards) and where the time went: the scan (ids, scaler, split: the data
module's preparation), the training epoch, the validation pass, and the whole command. Also ``--data-only``: the scan
and one pass over the training batches without a model (what the data layer alone costs at a size too large to
train on here).

    python scripts/parquet_scale.py --quick                            # 0.2M rows (2,000 series)
    python scripts/parquet_scale.py --sizes 2000 20000       # 0.2M and 2M rows, writes results/parquet_scale.md
    python scripts/parquet_scale.py --sizes 200000 --data-only --no-write   # the data layer alone at 20M rows

Target (issue 24): 200k series / 20M rows with peak RSS <= 3 GB per process and time linear in the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gru_flow.yaml"


def child(folder: str, out_dir: str, data_only: bool, shard_rows: int, limit: int | None = None) -> dict:
    """Runs in the child process: the fit (or the data layer alone); returns timings and peak RSS."""
    import torch
    from lightning.pytorch import Callback

    from ts_neuralode.data import parquet_stream

    torch.set_num_threads(1)
    parquet_stream.ParquetFolderDataModule.shard_rows = shard_rows
    t0 = time.perf_counter()
    res: dict = {}
    if data_only:
        from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule

        dm = IrregularTimeSeriesDataModule(path=folder, task="extrapolation", cut=0.5, layout="padded", batch_size=50)
        dm.setup("fit")
        res["scan_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = sum(1 for _ in dm.train_dataloader())
        res["train_batches"] = n
        res["epoch_s"] = time.perf_counter() - t1
        res["series"], res["shards"] = len(dm.series_ids), len(dm.shards)
    else:
        from ts_neuralode.api.fitting import resolve_config, train

        class Timer(Callback):
            def on_fit_start(self, trainer, pl_module):
                res["scan_s"] = time.perf_counter() - t0  # the data module prepared (links size the model)
                dm = trainer.datamodule
                res["series"], res["shards"] = len(dm.series_ids), len(dm.shards)

            def on_train_epoch_start(self, trainer, pl_module):
                self.t = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module):
                res["epoch_s"] = time.perf_counter() - self.t
                res["train_batches"] = int(trainer.num_training_batches)

            def on_validation_epoch_start(self, trainer, pl_module):
                self.v = time.perf_counter()

            def on_validation_epoch_end(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    res["val_s"] = time.perf_counter() - self.v
                    res["val_batches"] = int(sum(trainer.num_val_batches))

        args = [
            "--config",
            str(CONFIG),
            "--data.path",
            folder,
            "--trainer.max_epochs",
            "1",
            "--tracking",
            "false",
            "--trainer.default_root_dir",
            out_dir,
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.enable_model_summary",
            "false",
        ]
        if limit:  # a part of the epoch: the scan and the first shards in full, the time per batch
            args += [
                "--trainer.limit_train_batches",
                str(limit),
                "--trainer.limit_val_batches",
                str(max(limit // 5, 1)),
            ]
        parser, cfg = resolve_config(fit_args=args, what="parquet_scale")
        result = train(parser, cfg, None, callbacks=[Timer()])
        res["val_loss"] = result.best_score
    res["total_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB
    return res


def measure(folder: Path, work: Path, data_only: bool, shard_rows: int, limit: int | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", str(folder), "--work", str(work), "--shard-rows", str(shard_rows)]
    if data_only:
        cmd.append("--data-only")
    if limit:
        cmd += ["--limit-batches", str(limit)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = wall  # the child process from start to exit (imports included)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="numbers of series (100 points each)")
    p.add_argument("--quick", action="store_true", help="one size, 2,000 series (0.2M rows)")
    p.add_argument("--data-only", action="store_true", help="the scan and one pass over the batches, no model")
    p.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="train on this many batches (validate on a fifth of it) instead of the whole epoch",
    )
    p.add_argument(
        "--data-dir",
        default=str(ROOT / "data" / "external" / "parquet_scale"),
        help="where the folders are written (and reused)",
    )
    p.add_argument("--shard-rows", type=int, default=500_000, help="ParquetFolderDataModule.shard_rows")
    p.add_argument("--out", default=str(ROOT / "results" / "parquet_scale.md"))
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--append", action="store_true", help="add the table to --out instead of replacing it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.work, a.data_only, a.shard_rows, a.limit_batches)))
        return 0
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_parquet_folder import write_folder

    sizes = [2000] if a.quick else a.sizes
    rows = []
    for n in sizes:
        folder = Path(a.data_dir) / f"double_ou_{n}x100"
        if not folder.exists():
            t = time.perf_counter()
            info = write_folder(folder, n, 100, series_per_file=min(10_000, max(n // 8, 1)))
            print(f"wrote {folder}: {info} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        res = measure(folder, Path(a.data_dir) / f"run_{n}", a.data_only, a.shard_rows, a.limit_batches)
        res["rows"] = n * 100
        rows.append(res)
        print(json.dumps(res), file=sys.stderr)
    kind = "data layer only (scan + one pass over the training batches)" if a.data_only else "gru_flow, 1 epoch"
    if a.limit_batches and not a.data_only:
        kind = f"gru_flow, first {a.limit_batches} training + {max(a.limit_batches // 5, 1)} validation batches"
    lines = [
        "| rows | series | shards | what | scan s | training batches | epoch s (train + val) | of which val s | "
        "s per training batch | whole child process s | peak RSS MB |",
        "|---" * 11 + "|",
    ]
    for r in rows:
        per = (r["epoch_s"] - r.get("val_s", 0.0)) / max(r["train_batches"], 1)
        lines.append(
            f"| {r['rows']:,} | {r['series']:,} | {r['shards']} | {kind} | {r['scan_s']:.1f} | "
            f"{r['train_batches']} | {r['epoch_s']:.1f} | {r.get('val_s', float('nan')):.1f} | {per:.3f} | "
            f"{r['process_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not a.no_write:
        cmd = "python scripts/parquet_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
        section = f"Command: `{cmd}`\n\n{table}\n"
        out = Path(a.out)
        if a.append and out.exists():
            out.write_text(out.read_text() + "\n" + section)
        else:
            out.write_text(f"# Parquet folder at scale (generated by scripts/parquet_scale.py)\n\n{section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

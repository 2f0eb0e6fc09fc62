"""Benchmark the data layer: read a long CSV + build the DataModule (setup), and collate batches.

Targets (issue 3): 1,000,000 rows / 10,000 series read + setup in <= 10 s with <= 2 GB peak memory;
collate a batch of 256 series in <= 5 ms.

Each measurement of setup runs in a fresh subprocess so its peak RSS (resource.getrusage) is its own.
Prints a markdown table and writes it to results/bench_data.md (with the command at the top).

    python scripts/bench_data.py                       # full scale (default)
    python scripts/bench_data.py --rows 100000 --series 1000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def make_csv(path: Path, rows: int, series: int, datetimes: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per = rows // series
    t = np.sort(rng.uniform(0.0, 1000.0, (series, per)), axis=1)
    ids = np.repeat(np.array([f"id{i:05d}" for i in range(series)], dtype=object), per)
    y = np.sin(t / 50.0) + rng.normal(0, 0.1, t.shape)
    y[rng.random(t.shape) < 0.05] = np.nan  # 5% missing cells
    order = rng.permutation(series * per)  # rows in random order
    ds = t.reshape(-1)
    if datetimes:
        ds = (pd.Timestamp("2020-01-01") + pd.to_timedelta(np.round(ds * 3600), unit="s")).strftime("%Y-%m-%d %H:%M:%S")
        ds = np.asarray(ds, dtype=object)
    df = pd.DataFrame({"unique_id": ids[order], "ds": np.asarray(ds)[order], "y": y.reshape(-1)[order], "static": "x"})
    if datetimes:
        df = df.drop_duplicates(["unique_id", "ds"])
    df.to_csv(path, index=False, float_format="%.9g")


CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
from ts_neuralode.data import IrregularTimeSeriesDataModule
t_import = time.perf_counter() - t0
path, layout, time_unit = sys.argv[1], sys.argv[2], (sys.argv[3] if sys.argv[3] != "-" else None)
t0 = time.perf_counter()
dm = IrregularTimeSeriesDataModule(path=path, layout=layout, time_unit=time_unit, batch_size=256, seed=0)
dm.setup("fit")
t_setup = time.perf_counter() - t0
import numpy as np
from ts_neuralode.data.batching import collate
rng = np.random.default_rng(0)
res = {"setup_s": t_setup, "import_s": t_import, "rows": int(len(dm.table.times)), "series": dm.table.n_series}
for name, spec in (("train (random subsample)", dm._specs["train"]), ("eval (fixed subsample)", dm._specs["val"])):
    for lay in ("padded", "union"):
        ts, cpu = [], []
        for _ in range(60):
            idx = rng.choice(dm.split["train"], 256, replace=False)
            t1, c1 = time.perf_counter(), time.process_time()
            b = collate(dm.arrays, idx, lay, spec)
            ts.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c1)
        res[f"collate {lay}, {name}"] = [float(np.median(ts[10:])), float(np.median(cpu[10:])),
                                         float(np.min(ts[10:])), list(b.values.shape)]
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
"""


def run_child(path: Path, layout: str, time_unit: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), layout, time_unit or "-"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_data.md"))
    ap.add_argument("--no-datetime", action="store_true", help="skip the datetime-column case")
    args = ap.parse_args(argv)
    cmd = "python scripts/bench_data.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        f"Command: `{cmd}`",
        "",
        f"Long CSV with {args.rows:,} rows, {args.series:,} series (rows shuffled, 5% empty values, one extra "
        "string column); setup = read + validate + split + fit scalers + precompute arrays, in a fresh "
        "process (peak RSS of that process, including torch/lightning imports, which are not in the "
        "setup time). Collate: 256 random training series, median of 50 calls. Machine: shared 2-core CPU "
        f"(timings noisy; 1-minute load average at start: {os.getloadavg()[0]:.1f}). On a loaded machine a "
        "collate that needs more than a scheduler slice is often preempted, so its median wall time exceeds "
        "its CPU time (process CPU time, single-threaded numpy); the minimum wall time is the quiet-machine "
        "figure. Union batches hold the union of 256 irregular series' times (T ≈ 24,000), so they are "
        "~100x larger than padded ones; use layout='padded' for such data.",
        "",
    ]
    rows_md = ["| case | setup (s) | target | peak RSS (MB) | target |", "|---|---|---|---|---|"]
    coll_md = [
        "| collate (256 series) | shape [B, T, D] | median wall (ms) | median CPU (ms) | min wall (ms) | target |",
        "|---|---|---|---|---|---|",
    ]
    cases = [("numeric times", False, None)] + (
        [] if args.no_datetime else [("datetime strings, time_unit='h'", True, "h")]
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, dt, unit in cases:
            path = Path(tmp) / ("dt.csv" if dt else "num.csv")
            make_csv(path, args.rows, args.series, dt)
            size_mb = path.stat().st_size / 2**20
            res = run_child(path, "padded", unit)
            rows_md.append(
                f"| {label} ({res['rows']:,} observed rows, {size_mb:.0f} MB file) | {res['setup_s']:.2f} | "
                f"≤ 10 | {res['peak_rss_mb']:.0f} | ≤ 2048 |"
            )
            if not dt:
                for k, (sec, cpu, best, shape) in ((k, v) for k, v in res.items() if k.startswith("collate")):
                    target = "≤ 5" if "padded" in k else "— (T = union of all times)"
                    coll_md.append(
                        f"| {k[8:]} | {shape} | {sec * 1e3:.2f} | {cpu * 1e3:.2f} | {best * 1e3:.2f} | {target} |"
                    )
    text = "\n".join(lines + rows_md + [""] + coll_md) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# Data layer benchmark\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write a large partitioned Parquet folder of synthetic series, part file by part file (bounded memory).

Each part file holds whole series (``--series_per_file``) of a ``ts-neuralode generate`` data set (default
``double_ou``: 2 channels, most rows observe one of them), generated with seed ``seed * 100003 + file``
and ids renamed to
be unique over the folder (``s0000000`` …); rows are shuffled within a file. Files go to hive folders
``bucket=K/part-NNNNN.parquet`` (K = file mod ``--buckets``), as a partitioned data lake would hold them.

    python scripts/make_parquet_folder.py --out data/lake --n_series 200000 --n_points 100   # 20M rows
    ts-neuralode fit --config configs/gru_flow.yaml --data.path data/lake --trainer.max_epochs 1

The same options always give the same folder. An existing folder is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def write_folder(
    out: str | os.PathLike,
    n_series: int,
    n_points: int,
    name: str = "double_ou",
    series_per_file: int = 10_000,
    buckets: int = 4,
    seed: int = 0,
) -> dict:
    """Write the folder; returns ``{"files": F, "series": S, "rows": N}``."""
    from ts_neuralode.data.generators import generate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, rows, done = 0, 0, 0
    while done < n_series:
        n = min(series_per_file, n_series - done)
        df = generate(name, n_series=n, n_points=n_points, seed=seed * 100_003 + files)
        codes = df["unique_id"].astype("category").cat.codes.to_numpy()
        df["unique_id"] = np.char.add("s", np.char.zfill((codes.astype(np.int64) + done).astype(str), 7))
        df = df.sample(frac=1.0, random_state=files).reset_index(drop=True)
        part = out / f"bucket={files % buckets}"
        part.mkdir(exist_ok=True)
        df.to_parquet(part / f"part-{files:05d}.parquet", index=False)
        rows += len(df)
        done += n
        files += 1
    return {"files": files, "series": done, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--n_series", type=int, default=200_000)
    p.add_argument("--n_points", type=int, default=100, help="points per series")
    p.add_argument("--name", default="double_ou", help="a ts-neuralode generate data set")
    p.add_argument("--series_per_file", type=int, default=10_000)
    p.add_argument("--buckets", type=int, default=4, help="hive folders bucket=0..K-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    a = p.parse_args(argv)
    if Path(a.out).exists():
        if not a.overwrite:
            print(f"{a.out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(a.out)
    t0 = time.perf_counter()
    info = write_folder(a.out, a.n_series, a.n_points, a.name, a.series_per_file, a.buckets, a.seed)
    print(
        f"wrote {a.out}: {info['series']} series, {info['rows']} rows in {info['files']} part files "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

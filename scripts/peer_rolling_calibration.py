"""Bands recalibrated on the preceding backtest windows: the coverage a user gets who calibrates as the data comes in.

Reads a contender's cached result of ``scripts/peer_benchmark.py`` (its own 90% band, ``<name>-own90lo/hi``, and the
band it scored, calibrated on the fit's validation windows) and, for each window k >= 1, stretches the own band by
the split-conformal factor (``ts_neuralode.api.calibration``: the same score ``|y - mid| / (half-width + floor)``
and quantile) of the points of the earlier windows that were observed by window k's cutoff (per series: at or before
that series' cutoff k). Coverage is counted on windows 1.. only, for all three bands on the same points.

    python scripts/peer_rolling_calibration.py --datasets bxlator,pbcseq,chickweight,demo --contender auto
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_benchmark as pb  # noqa: E402

from ts_neuralode.api.calibration import band_scores, conformal_factor, width_floor  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="bxlator,pbcseq,chickweight,demo")
    p.add_argument("--contender", default="auto")
    p.add_argument("--cutoffs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--level", type=float, default=90.0)
    p.add_argument("--cache", default=str(pb.VENV / "cache"))
    args = p.parse_args()
    name = args.contender
    print(
        f"| data | points (windows 1-{args.cutoffs - 1}) | cov{args.level:g} own band | calibrated on validation "
        "(scored on the page) | recalibrated on the earlier windows | factors (window 1..) |"
    )
    print("|---|---|---|---|---|---|")
    for ds_name in [d for d in args.datasets.split(",") if d]:
        ds = pb.DATASETS[ds_name]
        w = pb.windows(ds, args.cutoffs)
        cuts, rows = w.cuts, w.rows
        f = Path(args.cache) / f"{ds_name}-w{args.cutoffs}-{name}-e{args.epochs}.pkl"
        if not f.is_file():
            print(f"{ds_name}: {f} not in the cache", file=sys.stderr)
            continue
        cols = pd.read_pickle(f)["cols"]
        y = rows["y"].to_numpy(float)
        lo, hi = cols[f"{name}-own90lo"].to_numpy(float), cols[f"{name}-own90hi"].to_numpy(float)
        clo, chi = cols[f"{name}-lo-90"].to_numpy(float), cols[f"{name}-hi-90"].to_numpy(float)
        ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi) & np.isfinite(clo) & np.isfinite(chi)
        floor = width_floor(y[ok], lo[ok], hi[ok])
        scores = band_scores(y, lo, hi, floor)
        win = rows["window"].to_numpy()
        # each series' cutoff at every window: what had been observed by then
        cut_of = cuts.set_index(["unique_id", "window"])["cutoff"]
        new_lo, new_hi = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
        factors = []
        for k in range(1, args.cutoffs):
            ck = rows["unique_id"].map(cut_of.xs(k, level="window")).to_numpy(float)
            seen = ok & (win < k) & (rows["ds"].to_numpy(float) <= ck)
            c = conformal_factor(scores[seen], args.level)
            factors.append(c)
            at = win == k
            mid, half = (lo[at] + hi[at]) / 2, (hi[at] - lo[at]) / 2 + floor
            new_lo[at], new_hi[at] = mid - c * half, mid + c * half
        test = ok & (win >= 1)

        def cov(a, b, sel=test, y=y):
            return float(((y[sel] >= a[sel]) & (y[sel] <= b[sel])).mean())

        print(
            f"| {ds_name} | {int(test.sum())} | {cov(lo, hi):.3f} | {cov(clo, chi):.3f} | "
            f"{cov(new_lo, new_hi):.3f} | {' '.join(f'{c:.2f}' for c in factors)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

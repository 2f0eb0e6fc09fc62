"""How much a forecast can gain over the last value on a peer-benchmark data set: bounds measured in hindsight.

On the rows of ``scripts/peer_benchmark.py`` (same windows, same scaled MAE: ``ts_neuralode.api.backtest.evaluate``)
this scores forecasts that no model could make, to bound what any could gain over the last value carried forward:

* ``hindsight_linear``: ``last + a (context mean - last) + b slope Δ + c Δ`` with ``a, b, c`` per channel fitted by
  least absolute deviations on every scored row (in each series' last-value MAE units, the scaled MAE's own
  weights), i.e. the best forecast linear in those context features, tuned on the test rows themselves;
* ``locf`` split by lead: the last value's scaled MAE over the first and the last third of the horizon (noise of the
  observations themselves shows at the shortest leads).

    python scripts/peer_signal.py --dataset pbcseq
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_benchmark as pb  # noqa: E402


def features(long: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Per scored row: the last value, the context mean and least-squares slope, and Δ (time since the last one)."""
    by = {k: g.sort_values("t") for k, g in long.groupby(["unique_id", "channel"], sort=False)}
    parts = []
    for (u, ch, c), idx in rows.groupby(["unique_id", "channel", "cutoff"], sort=False).groups.items():
        h = by[(u, ch)]
        h = h[h["t"] <= c]
        t, y = h["t"].to_numpy(float), h["y"].to_numpy(float)
        slope = 0.0
        if len(t) >= 2 and np.ptp(t) > 0:
            slope = float(((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum())
        q = rows.loc[idx, "ds"].to_numpy(float)
        parts.append(pd.DataFrame({"last": y[-1], "ctx_mean": y.mean(), "slope": slope, "dt": q - t[-1]}, index=idx))
    return pd.concat(parts).reindex(rows.index)


def lad(x: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 60) -> np.ndarray:
    """Weighted least absolute deviations by iteratively reweighted least squares."""
    beta = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
    for _ in range(iters):
        r = np.abs(y - x @ beta)
        ww = w / np.maximum(r, 1e-6)
        sw = np.sqrt(ww)
        beta = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0]
    return beta


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="pbcseq")
    p.add_argument("--cutoffs", type=int, default=4)
    args = p.parse_args()
    ds = pb.DATASETS[args.dataset]
    w = pb.windows(ds, args.cutoffs)
    long, rows = w.long, w.rows
    f = features(long, rows)
    y = rows["y"].to_numpy(float)
    key = rows["unique_id"].astype(str) + "/" + rows["channel"].astype(str)
    scale = pd.Series(np.abs(rows["locf"].to_numpy(float) - y)).groupby(key.to_numpy()).transform("mean").to_numpy()
    w = 1.0 / np.where(scale > 0, scale, np.inf)
    lin = np.full(len(rows), np.nan)
    for ch, idx in rows.groupby("channel").indices.items():
        last = f["last"].to_numpy(float)[idx]
        x = np.column_stack(
            [
                f["ctx_mean"].to_numpy(float)[idx] - last,
                f["slope"].to_numpy(float)[idx] * f["dt"].to_numpy(float)[idx],
                f["dt"].to_numpy(float)[idx],
            ]
        )
        beta = lad(x, y[idx] - last, w[idx])
        lin[idx] = last + x @ beta
        print(f"{ch}: a {beta[0]:.3f}, b {beta[1]:.3f}, c {beta[2]:.3g}", file=sys.stderr)
    cols = pd.DataFrame({"hindsight_linear": lin}, index=rows.index)
    overall, _, _ = pb.score(rows, {c: {"cols": cols[[c]]} for c in cols}, ds.horizon)
    print(f"| {args.dataset} | scaled MAE | MAE |")
    print("|---|---|---|")
    for _, r in overall.sort_values("scaled_mae").iterrows():
        print(f"| {r['model']} | {r['scaled_mae']:.3g} | {r['mae']:.4g} |")
    # the last value by lead: its MAE over the first and the last third of the horizon (in the data's units)
    lead = rows["ds"].to_numpy(float) - rows["cutoff"].to_numpy(float)
    err = np.abs(rows["locf"].to_numpy(float) - y)
    rel = err * w
    for name, sel in (("first third", lead <= ds.horizon / 3), ("last third", lead > 2 * ds.horizon / 3)):
        print(f"| locf, {name} of the horizon | {np.nanmean(rel[sel]):.3g} | {np.nanmean(err[sel]):.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

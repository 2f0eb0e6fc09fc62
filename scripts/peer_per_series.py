"""Per-series errors of the peer benchmark's contenders, from its cache: where a pooled MAE and the scaled MAE disagree.

The scaled MAE (``ts_neuralode.api.backtest.evaluate``) divides each error by its series' last-value MAE, so a series
the last value forecasts almost exactly weighs far more than one it misses by much. This script reads the cached
results of ``scripts/peer_benchmark.py`` (same ``--cutoffs``/``--epochs``/``--max_steps`` as the run that filled
it) and prints, per contender, the pooled MAE, the scaled MAE, and how much of the scaled MAE the series with the
smallest last-value MAE carry; then the series that contribute most to the first contender's scaled MAE.

    python scripts/peer_per_series.py --dataset chickweight --contenders auto,sf_AutoTheta --epochs 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_benchmark as pb  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="chickweight")
    p.add_argument("--contenders", default="auto")
    p.add_argument("--cutoffs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--cache", default=str(pb.VENV / "cache"))
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    ds = pb.DATASETS[args.dataset]
    w = pb.windows(ds, args.cutoffs)
    long, cuts, rows = w.long, w.cuts, w.rows
    cache, tag = Path(args.cache), f"{args.dataset}-w{args.cutoffs}"
    peers = {}
    for fam in ("statsforecast", "neuralforecast"):
        work = cache / f"{tag}-peers-s{args.max_steps}"
        if (work / f"timings_{fam}.json").is_file():
            peers.update(pb.run_peers(ds, long, cuts, rows, [fam], args.max_steps, work, lambda m: None, run=False))
    cols = {}
    for name in [c for c in args.contenders.split(",") if c]:
        r = peers.get(name)
        if r is None:
            f = cache / f"{tag}-{name}-e{args.epochs}.pkl"
            r = pd.read_pickle(f) if f.is_file() else None
        if r is None or r.get("cols") is None:
            print(f"{name}: not in the cache", file=sys.stderr)
            continue
        cols[name] = r["cols"][name].to_numpy(float)
    # the last value up to each cutoff, per series and channel (the backtest's locf)
    last = []
    by = {k: g.sort_values("t") for k, g in long.groupby(["unique_id", "channel"], sort=False)}
    for (u, ch, c), idx in rows.groupby(["unique_id", "channel", "cutoff"], sort=False).groups.items():
        h = by[(u, ch)]
        h = h[h["t"] <= c]
        last.append(pd.Series(h["y"].iloc[-1] if len(h) else np.nan, index=idx))
    locf = pd.concat(last).reindex(rows.index).to_numpy(float)
    y = rows["y"].to_numpy(float)
    key = rows["unique_id"].astype(str) + "/" + rows["channel"].astype(str)
    ok = np.isfinite(y) & np.isfinite(locf) & np.all([np.isfinite(v) for v in cols.values()], axis=0)
    df = pd.DataFrame(
        {"key": key[ok].to_numpy(), "locf": np.abs(locf - y)[ok], **{n: np.abs(v - y)[ok] for n, v in cols.items()}}
    )
    scale = df.groupby("key")["locf"].transform("mean")
    keep = scale > 0
    df, scale = df[keep], scale[keep]
    per = df.groupby("key").mean()
    n = df.groupby("key").size()
    small = per["locf"].rank() <= max(1, len(per) // 5)  # the fifth of the series the last value forecasts best
    lines = [
        "| contender | pooled MAE | scaled MAE | share of the scaled MAE from the 20% of series the last value "
        "forecasts best |",
        "|---|---|---|---|",
    ]
    for name in ["locf", *cols]:
        contrib = (df[name] / scale).groupby(df["key"]).sum()
        total = contrib.sum()
        lines.append(f"| {name} | {df[name].mean():.4g} | {total / len(df):.3g} | {contrib[small].sum() / total:.2f} |")
    print("\n".join(lines))
    first = next(iter(cols), None)
    if first is not None:
        contrib = (df[first] / scale).groupby(df["key"]).sum() / len(df)
        top = contrib.sort_values(ascending=False).head(args.top)
        print()
        print(
            f"| series | points | last-value MAE | {' | '.join(f'{c} MAE' for c in cols)} | "
            f"share of {first}'s scaled MAE |"
        )
        print("|---|---|---|" + "---|" * len(cols) + "---|")
        for k in top.index:
            print(
                f"| {k} | {n[k]} | {per.loc[k, 'locf']:.3g} | "
                f"{' | '.join(f'{per.loc[k, c]:.3g}' for c in cols)} | {top[k] / contrib.sum():.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

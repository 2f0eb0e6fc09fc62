"""Regenerate the bundled CSVs of data/ (see data/README.md).

python data/make_data.py            # synthetic sets + demo.csv (needs only ts_neuralode)
python data/make_data.py --co2      # also co2_mauna_loa.csv (needs statsmodels installed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ts_neuralode.data.generators import generate  # noqa: E402

SYNTHETIC = {  # file: (generator name, n_series, seed)
    "sine.csv": ("sine", 60, 123),
    "sink.csv": ("sink", 60, 123),
    "periodic.csv": ("periodic", 60, 123),
    "double_ou.csv": ("double_ou", 200, 123),
}


def demo(seed: int = 7) -> pd.DataFrame:
    """12 temperature-like sensors, irregular timestamps over 14 days (UTC+01:00), a daily cycle, ~3% empty
    readings and a categorical 'site' column (ignored by the reader)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-08 00:00", tz="Europe/Berlin")
    frames = []
    for k in range(12):
        n = int(rng.integers(60, 100))
        hours = np.sort(rng.choice(14 * 24 * 60, n, replace=False)) / 60.0
        phase = rng.uniform(-1.0, 1.0)
        base = rng.uniform(15.0, 25.0)
        y = base + 4.0 * np.sin(2 * np.pi * hours / 24.0 + phase) + 0.05 * hours / 24.0 + rng.normal(0, 0.3, n)
        y[rng.random(n) < 0.03] = np.nan
        ds = (start + pd.to_timedelta(hours, unit="h")).strftime("%Y-%m-%dT%H:%M:%S%z")
        ds = [s[:-2] + ":" + s[-2:] for s in ds]  # +0100 -> +01:00
        frames.append(
            pd.DataFrame(
                {
                    "unique_id": f"sensor_{k + 1:02d}",
                    "ds": ds,
                    "y": np.round(y, 3),
                    "site": "north" if k < 6 else "south",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def co2() -> pd.DataFrame:
    try:
        import statsmodels.api as sm
    except ImportError:
        raise SystemExit(
            "error: --co2 needs statsmodels (pip install statsmodels, in a throwaway venv is fine)"
        ) from None
    d = sm.datasets.co2.load_pandas().data.dropna()
    return pd.DataFrame({"unique_id": "mauna_loa", "ds": d.index.strftime("%Y-%m-%d"), "y": d["co2"].to_numpy()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--co2", action="store_true", help="also write co2_mauna_loa.csv (needs statsmodels)")
    args = ap.parse_args(argv)
    for name, (gen, n_series, seed) in SYNTHETIC.items():
        generate(gen, n_series=n_series, seed=seed).to_csv(HERE / name, index=False, float_format="%.8g")
    demo().to_csv(HERE / "demo.csv", index=False)
    if args.co2:
        co2().to_csv(HERE / "co2_mauna_loa.csv", index=False)
    for p in sorted(HERE.glob("*.csv")):
        print(f"{p.name}: {p.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

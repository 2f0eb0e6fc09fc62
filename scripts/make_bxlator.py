"""Write GRU-ODE-Bayes' BXLator set (a 2-channel stochastic Brusselator, sparsely observed) as a ts_neuralode CSV.

1,000 series on t in [0, 50), 20–29 observation times each (random, irregular), 2 channels observed jointly or
one at a time (the rest masked). Source: the file ``gru_ode_bayes/datasets/BXLator/BXLator.csv`` of the
GRU-ODE-Bayes repository (De Brouwer et al., NeurIPS 2019; made by ``datagen.py`` there), MIT licence
(``License.md`` of that repository, Copyright (c) 2022 Edward De Brouwer). Not bundled here; this script converts
a copy of that CSV (``--src PATH``) or reads it from a local clone / bare git directory of the repository
(``--git-dir DIR``, read at its HEAD):

    python scripts/make_bxlator.py --git-dir /path/to/gru_ode_bayes/.git     # -> data/external/bxlator.csv
    python scripts/make_bxlator.py --src BXLator.csv

Input columns ``ID, Time, Value_1, Value_2, Mask_1, Mask_2, Cov`` (Cov is all 0: dropped). Output columns
``unique_id`` (``bxl_<ID>``), ``ds`` (the float time), ``x1``, ``x2`` (empty where the mask is 0), sorted by series
and time; a row with neither channel observed is dropped.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

GIT_PATH = "gru_ode_bayes/datasets/BXLator/BXLator.csv"
COLUMNS = ["ID", "Time", "Value_1", "Value_2", "Mask_1", "Mask_2"]


def convert(raw: pd.DataFrame) -> pd.DataFrame:
    """The repository's frame -> ``unique_id, ds, x1, x2`` (masked values empty)."""
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"the BXLator CSV lacks the columns {missing}; expected {COLUMNS} (+ Cov)")
    out = pd.DataFrame(
        {
            "unique_id": [f"bxl_{int(i):04d}" for i in raw["ID"]],
            "ds": raw["Time"].astype(float).round(6),
            "x1": raw["Value_1"].where(raw["Mask_1"] > 0, np.nan),
            "x2": raw["Value_2"].where(raw["Mask_2"] > 0, np.nan),
        }
    )
    out = out[out[["x1", "x2"]].notna().any(axis=1)]
    return out.sort_values(["unique_id", "ds"], kind="mergesort").reset_index(drop=True)


def read_source(src: str | None, git_dir: str | None) -> pd.DataFrame:
    if (src is None) == (git_dir is None):
        raise ValueError("pass exactly one of --src PATH (the BXLator.csv file) or --git-dir DIR (the repository)")
    if src is not None:
        return pd.read_csv(src)
    text = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"HEAD:{GIT_PATH}"], check=True, capture_output=True, text=True
    ).stdout
    return pd.read_csv(io.StringIO(text))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", help="path of BXLator.csv")
    p.add_argument("--git-dir", help="a clone (its .git) or bare git directory of the GRU-ODE-Bayes repository")
    p.add_argument("--out", default="data/external/bxlator.csv")
    args = p.parse_args(argv)
    try:
        d = convert(read_source(args.src, args.git_dir))
    except (ValueError, OSError, subprocess.CalledProcessError) as err:
        print(f"error: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    d.to_csv(out, index=False, float_format="%.7g")
    print(f"wrote {out}: {d['unique_id'].nunique()} series, {len(d)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

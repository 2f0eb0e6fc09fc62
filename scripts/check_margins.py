"""Rerun the tests that train or compare floats under several seeds and thread counts; report each check's worst margin.

    python scripts/check_margins.py                                   # seeds 0-4 x threads 1,2,4 (~20 min, 2 cores)
    python scripts/check_margins.py --seeds 0-1 --threads 1 -k overfit # a quick look at some tests
    python scripts/check_margins.py --out results/test_margins.md      # also write the table (with this command)

Every test that asserts through the ``margin`` fixture (tests/conftest.py; selected with ``pytest -m margin``) runs
once per (seed, threads): ``TS_NEURALODE_TEST_SEED`` seeds its model initialisation and data, and
``TS_NEURALODE_TEST_THREADS`` sets torch's thread count (the DDP test passes it to its worker processes as
``OMP_NUM_THREADS``). Each check records its *headroom*: limit / value for an upper bound (value / limit for a lower
one) — how many times the measured value could grow (shrink) before the check fails; for an exact bound checked
up to a rounding tolerance (``limit + tol``), tol / (value - limit): how many times the rounding excess could grow
(∞ when the exact bound holds). 1.0 is the knife edge; the table
shows the smallest headroom of every check over all runs and where it occurred. Exit status 1 when any run failed
or any headroom is below ``--min-headroom`` (default 1.25: statistical checks should keep 2 or more; a few
deterministic ones — the same value for every seed and thread count — sit by design between 1.25 and 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a '|' in a label would split the table cell


def _fmt(h: float | None) -> str:
    if h is None or not math.isfinite(h):
        return "∞"
    return f"{h:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,3 (default 0-4)")
    p.add_argument("--threads", default="1,2,4", help="torch thread counts (default 1,2,4)")
    p.add_argument("-k", default=None, help="pytest -k expression to run only some tests")
    p.add_argument("--out", default=None, help="also write the markdown table here (e.g. results/test_margins.md)")
    p.add_argument("--min-headroom", type=float, default=1.25, help="fail below this headroom (default 1.25)")
    args = p.parse_args(argv)
    seeds, threads = _ints(args.seeds), _ints(args.threads)

    records: list[dict] = []
    failures: list[str] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for th in threads:
            for seed in seeds:
                log = Path(tmp) / f"s{seed}_t{th}.jsonl"
                # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so that 2 and 4 threads on
                # a busy 2-core machine are not slowed down many times over (results do not depend on it)
                env = dict(
                    os.environ,
                    TS_NEURALODE_TEST_SEED=str(seed),
                    TS_NEURALODE_TEST_THREADS=str(th),
                    TS_NEURALODE_MARGIN_LOG=str(log),
                    OMP_WAIT_POLICY="PASSIVE",
                )
                cmd = [
                    sys.executable,
                    "-m",
                    "pytest",
                    "tests",
                    "-m",
                    "margin",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "-o",
                    "addopts=",
                    "-W",
                    "ignore::DeprecationWarning",
                ]
                if args.k:
                    cmd += ["-k", args.k]
                t0 = time.time()
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
                tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
                print(f"seed {seed} threads {th}: {tail} ({time.time() - t0:.0f} s)", flush=True)
                if proc.returncode != 0:
                    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
                    failures += [f"seed {seed} threads {th}: {ln}" for ln in failed] or [
                        f"seed {seed} threads {th}: pytest exit {proc.returncode}: {proc.stdout[-500:]}"
                    ]
                if log.is_file():
                    records += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    worst: dict[tuple[str, str], dict] = {}
    per_threads: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in records:
        key = (r["test"], r["check"])
        h = r["headroom"] if r["headroom"] is not None else math.inf
        if key not in worst or h < (worst[key]["headroom"] if worst[key]["headroom"] is not None else math.inf):
            worst[key] = r
        cur = per_threads[key].get(r["threads"], math.inf)
        per_threads[key][r["threads"]] = min(cur, h)

    cmd = "python scripts/check_margins.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    lines = [
        "# Test margins: worst headroom of every float check over seeds and thread counts",
        "",
        f"Command: `{cmd}`",
        "",
        f"Seeds {args.seeds}, threads {args.threads}; {platform.machine()} {platform.processor() or ''}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {_torch_version()}; {len(records)} checks recorded in {time.time() - started:.0f} s.",
        "",
        "Headroom = limit / value for an upper bound (value / limit for a lower bound): how many times the measured "
        "value may grow (shrink) before the check fails; for an exact bound checked up to a rounding tolerance "
        "(limit + tol), tol / (value − limit): how many times the rounding excess may grow (∞: the exact bound "
        "holds). 1.0 is the knife edge. Worst = the smallest over all runs.",
        "",
        "| test | check | worst headroom | at (seed, threads) | value | limit | "
        + " | ".join(f"worst, {t} thr" for t in threads)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(threads),
    ]
    low = []
    for (test, check), r in sorted(worst.items()):
        h = r["headroom"]
        if h is not None and h < args.min_headroom:
            low.append(f"{test} {check}: headroom {h:.3g}")
        cols = " | ".join(_fmt(per_threads[(test, check)].get(t)) for t in threads)
        limit = f"{'≥' if r['above'] else '≤'} {r['limit']:.4g}" + (f" + {r['tol']:g}" if r.get("tol") else "")
        lines.append(
            f"| {_cell(test.removeprefix('tests/'))} | {_cell(check)} | {_fmt(h)} | "
            f"({r['seed']}, {r['threads']}) | {r['value']:.4g} | {limit} | {cols} |"
        )
    lines.append("")
    listed = "" if not failures else "\n\n" + "\n".join(f"- {f}" for f in failures)
    lines.append(f"Failed runs: {len(failures)}" + listed)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    if low:
        print("headroom below --min-headroom:\n  " + "\n  ".join(low), file=sys.stderr)
    return 1 if failures or low else 0


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:  # pragma: no cover
        return "?"


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How long a ``ts-neuralode fit`` with ``--trainer.max_time`` really takes, phase by phase (issue 24, part 1).

Generates the sine set (``--n-series`` series of 100 points) in ``--workdir`` and runs ``fit --config
configs/ode_rnn.yaml`` with ``--trainer.max_time`` plus any extra options, in a child process; every stderr line
is printed with the seconds since start (start-up, trainer set-up, "Time limit reached", checkpoint written, exit).

    python scripts/max_time_check.py --max-time 00:00:00:30
    python scripts/max_time_check.py --max-time 00:00:00:30 -- --trainer.limit_val_batches 0.25
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("torch threads", "Time limit", "best checkpoint", "model directory", "limit_val_batches", "Error", "error")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-time", default="00:00:00:30")
    p.add_argument("--n-series", type=int, default=1000)
    p.add_argument("--workdir", default="/tmp/max_time_check")
    p.add_argument("extra", nargs="*", help="more fit options (after --)")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"sine_{args.n_series}.csv"
    cli = [sys.executable, "-u", "-m", "ts_neuralode.cli"]
    if not data.is_file():
        subprocess.run(
            [
                *cli,
                "generate",
                "sine",
                "--out",
                str(data),
                "--n-series",
                str(args.n_series),
                "--n-points",
                "100",
                "--seed",
                "0",
            ],
            check=True,
            cwd=work,
        )
    cmd = [
        *cli,
        "fit",
        "--config",
        str(ROOT / "configs" / "ode_rnn.yaml"),
        "--data.path",
        str(data),
        "--tracking",
        "false",
        "--trainer.max_time",
        args.max_time,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        "--checkpoint_dir",
        str(work / f"ck{time.time_ns()}"),
        *args.extra,
    ]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=work)
    for line in proc.stderr:
        if any(k in line for k in KEEP):
            print(f"{time.time() - t0:7.1f}s  {line.rstrip()[:160]}", flush=True)
    proc.wait()
    print(f"{time.time() - t0:7.1f}s  exit {proc.returncode} ({' '.join(args.extra) or 'no extra options'})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

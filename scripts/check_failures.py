"""Time the rows of issue 17 (failures outside the CSV) as a user runs them: target one line within 15 s each.

Fits the demo model for one epoch (tracking off) in a temporary directory, then runs each row of the issue's table
through the ``ts-neuralode`` console command, one at a time, and reports its exit status, wall and CPU time and
the line it printed. Writes results/failure_rows.md.

    python scripts/check_failures.py
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_S = 15.0


def console() -> list[str]:
    exe = Path(sys.executable).with_name("ts-neuralode")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ts_neuralode.cli"]


def run(argv: list[str], cwd: Path) -> tuple[int, float, float, int, str]:
    """Exit status, wall seconds, CPU seconds (user + sys of the child), stderr's line count and last line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*console(), *argv], cwd=cwd, capture_output=True, timeout=900)  # bytes: keep the \r
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # what a terminal shows: a progress bar cleared with carriage returns leaves what follows the last one
    lines = [shown for ln in proc.stderr.decode().split("\n") if (shown := ln.rsplit("\r", 1)[-1]).strip()]
    return proc.returncode, wall, cpu, len(lines), lines[-1] if lines else ""


def main() -> int:
    from ts_neuralode.api.benchmark.report import publish_report

    tmp = Path(tempfile.mkdtemp(prefix="check_failures_"))
    try:
        demo = [
            "--config",
            str(ROOT / "configs/demo.yaml"),
            "--data.path",
            str(ROOT / "data/demo.csv"),
            "--trainer.default_root_dir",
            str(tmp),
            "--checkpoint_dir",
            str(tmp / "checkpoints"),
            "--model_dir",
            str(tmp / "model"),
            "--tracking_uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifact_location",
            str(tmp / "mlartifacts"),
        ]
        rc, *_ = run(
            [
                "fit",
                *demo,
                "--trainer.max_epochs",
                "1",
                "--tracking",
                "false",
                "--trainer.enable_progress_bar",
                "false",
            ],
            tmp,
        )
        if rc != 0:
            raise SystemExit("the one-epoch demo fit failed")
        bad = tmp / "bad_model"
        shutil.copytree(tmp / "model", bad)
        (bad / "weights.pt").write_bytes(os.urandom(4096))
        nope = "/proc/nope" if Path("/proc").is_dir() else str(tmp / "a_file" / "nope")
        (tmp / "a_file").write_text("x")
        data = str(ROOT / "data/demo.csv")
        rows = {
            "fit, tracking server down": ["fit", *demo, "--tracking_uri", "http://127.0.0.1:1"],
            "fit, checkpoint dir cannot be created": ["fit", *demo, "--checkpoint_dir", nope],
            "forecast --out not writable": [
                "forecast",
                "--model",
                str(tmp / "model"),
                "--data.path",
                data,
                "--horizon",
                "2D",
                "--out",
                f"{nope}/o.csv",
            ],
            "forecast --horizon 20000D": [
                "forecast",
                "--model",
                str(tmp / "model"),
                "--data.path",
                data,
                "--horizon",
                "20000D",
                "--num_points",
                "5",
                "--out",
                str(tmp / "f.csv"),
            ],
            "forecast, weights.pt random bytes": [
                "forecast",
                "--model",
                str(bad),
                "--data.path",
                data,
                "--horizon",
                "2D",
                "--out",
                str(tmp / "f.csv"),
            ],
        }
        table = [
            "| row | exit | wall s | CPU s | stderr lines | met | the (last) line |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, argv in rows.items():
            rc, wall, cpu, n, line = run(argv, tmp)
            ok = "yes" if wall <= TARGET_S and rc == 2 and n == 1 else "NO"
            table.append(f"| {name} | {rc} | {wall:.1f} | {cpu:.1f} | {n} | {ok} | {line.replace('|', '/')} |")
            print(table[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = (
        f"Each row: a fresh `ts-neuralode` process (most of its time is importing torch, Lightning and MLflow) "
        f"on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end. Target: one line, exit "
        f"status 2, within {TARGET_S:g} s."
    )
    text = "\n".join(table)
    return publish_report(
        ROOT / "results/failure_rows.md",
        "Failures outside the CSV (issue 17)",
        "scripts/check_failures.py",
        sys.argv[1:],
        [note, text],
        text,
    )


if __name__ == "__main__":
    sys.exit(main())

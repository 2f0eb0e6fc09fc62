"""One epoch on many series, run as a user runs it (issue 24): the time of setup, training, validation and the
after-fit calibration, side by side with variants, written to ``results/many_series.md``.

```
python scripts/many_series_epoch.py                          # 5,000 series x 100 points, the page's figures
python scripts/many_series_epoch.py --baseline 2ee27c6       # ... and the package at that commit, interleaved
python scripts/many_series_epoch.py --quick                  # 500 series, a smoke run
```

Every run is a fresh process running the CLI exactly as a user types it::

    ts-neuralode generate sine --n_series 5000 --out sine5k.csv
    ts-neuralode fit --config configs/ode_rnn.yaml --data.path sine5k.csv --trainer.max_epochs 1 --tracking false

(``--tracking false``: no MLflow server is part of the measurement). The child process adds one passive Lightning
callback that reads the clock (it changes no option): *setup* is process start to the first training batch
(imports, reading and checking the CSV, building the model, Lightning's 2-batch sanity validation), *train* the
training batches, *val* the validation pass, *after fit* from the end of the fit to the command's return (the band
calibration on the validation windows and writing the model directory), *wall* the whole command as the parent saw
it. Variants:

* ``default``: no option and no thread variable (the package chooses the threads: ``ts_neuralode.core.threads``);
* ``threads1`` / ``threads2``: ``OMP_NUM_THREADS=1`` / ``2`` (the user's override);
* ``ddp``: a bigger ODE-RNN (``--ddp-size`` hidden/latent width) for ``--ddp-batches`` training batches of 100
  series, one process (batch 100) against 2 DDP processes on CPU (gloo, batch 50 each: the same global batches,
  ``--data.shuffle false``, ``--data.obs_fraction 1.0`` so that no rank draws its own random subsample); the
  validation losses must agree.

With ``--baseline REV`` the package at git revision REV (``git archive`` into a temporary folder) runs the same
variants, interleaved run by run with the working tree's (``base, new, base, new`` ...): the machine is shared, so
only ratios measured side by side mean anything; the page records the load average before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T_START = time.perf_counter()


# ----------------------------------------------------------------------------------------------- child process
def child(out_json: str, argv: list[str]) -> int:
    """Run ``ts-neuralode <argv>`` in this process with a clock-reading callback; write the times to out_json."""
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    rec: dict = {"rank": rank, "t_imported": time.perf_counter() - T_START, "train_batches": 0, "val_batches": 0}

    def now() -> float:
        return time.perf_counter() - T_START

    # The clock reads Lightning's hooks on the module class (not a callback in the Trainer's arguments: LightningCLI
    # builds the --trainer.* options from Trainer.__init__'s signature, which a wrapper would hide).
    from ts_neuralode.training import ForecastingModule as M

    def hook(name: str, fn):
        orig = getattr(M, name)

        def wrapped(self, *args, **kwargs):
            out = orig(self, *args, **kwargs)
            fn(self.trainer)
            return out

        setattr(M, name, wrapped)

    def train_batch_end(trainer):
        rec["train_end"] = now()
        rec["train_batches"] += 1

    def val_start(trainer):
        if not trainer.sanity_checking:
            rec["val_start"] = now()

    def val_batch_end(trainer):
        if not trainer.sanity_checking:
            rec["val_batches"] += 1

    def val_end(trainer):
        if not trainer.sanity_checking:
            rec["val_end"] = now()

    def fit_end(trainer):
        rec["fit_end"] = now()
        rec["metrics"] = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k in ("val_loss", "val_mse", "train_loss", "val_nfe", "nfe")
        }
        rec["world_size"] = trainer.world_size

    hook("on_train_epoch_start", lambda trainer: rec.setdefault("train_start", now()))
    hook("on_train_batch_end", train_batch_end)
    hook("on_validation_epoch_start", val_start)
    hook("on_validation_batch_end", val_batch_end)
    hook("on_validation_epoch_end", val_end)
    hook("on_train_end", fit_end)  # before the callbacks' on_fit_end (the export calibrates there)
    from ts_neuralode.cli.main import main
    from ts_neuralode.core.threads import current_choice

    rc = main(argv)
    rec["end"] = now()
    rec["rc"] = rc
    import torch

    choice = current_choice()
    rec["threads"] = torch.get_num_threads()
    rec["thread_line"] = choice.line if choice is not None else None
    Path(f"{out_json}.rank{rank}").write_text(json.dumps(rec))
    return int(rc or 0)


# ---------------------------------------------------------------------------------------------- parent process
def load1() -> float:
    return os.getloadavg()[0]


def run_variant(src: Path, csv: Path, variant: str, work: Path, args) -> dict:
    """One fresh process (two for DDP) running the fit; returns the rank-0 record with wall time and loads."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TS_NEURALODE_THREADS", "TS_NEURALODE_THREADS_CHOSEN")
    }
    env["PYTHONPATH"] = str(src)
    env["PYTHONWARNINGS"] = "ignore"
    fit = [
        "fit",
        "--config",
        str(ROOT / "configs" / "ode_rnn.yaml"),
        "--data.path",
        str(csv),
        "--trainer.max_epochs",
        "1",
        "--tracking",
        "false",
    ]
    if args.seed is not None:  # the training's seed (the config's seed_everything: 0): a spread of one-epoch results
        fit += ["--seed_everything", str(args.seed)]
    if variant == "threads1":
        env["OMP_NUM_THREADS"] = "1"
    elif variant == "threads2":
        env["OMP_NUM_THREADS"] = "2"
    elif variant.startswith("ddp"):
        env["OMP_NUM_THREADS"] = "1"  # one thread per process: two processes on the two cores
        n = args.ddp_size
        fit += [
            "--model.hidden_dim",
            str(n),
            "--model.latent_dim",
            str(n // 2),
            "--data.shuffle",
            "false",
            "--data.obs_fraction",
            "1.0",  # no random training subsample: each rank would draw its own
            "--trainer.limit_train_batches",
            str(args.ddp_batches),
            "--trainer.limit_val_batches",
            str(max(1, args.ddp_batches // 2)),
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.accelerator",
            "cpu",
        ]
        if variant == "ddp2":
            fit += ["--data.batch_size", "50", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
        else:
            fit += ["--data.batch_size", "100", "--trainer.devices", "1"]
    cwd = Path(tempfile.mkdtemp(dir=work, prefix=f"{variant}-"))
    out = cwd / "times.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--", *fit]
    before = load1()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:  # recorded as such: on a shared machine 2 threads can take 10x longer
        shutil.rmtree(cwd, ignore_errors=True)
        return {
            "variant": variant,
            "src": str(src),
            "timeout": args.timeout,
            "load_before": before,
            "load_after": load1(),
        }
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{variant} ({src}) failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(Path(f"{out}.rank0").read_text())
    rec.update(wall=wall, load_before=before, load_after=load1(), variant=variant, src=str(src))
    rec["setup"] = rec["train_start"]
    rec["train"] = rec["train_end"] - rec["train_start"]
    rec["val"] = rec.get("val_end", rec["train_end"]) - rec.get("val_start", rec["train_end"])
    rec["epoch"] = rec["train"] + rec["val"]
    rec["after_fit"] = rec["end"] - rec["fit_end"]
    rec["calibration"] = next((ln for ln in proc.stderr.splitlines() if "calibrated the" in ln), "")
    shutil.rmtree(cwd, ignore_errors=True)
    return rec


def machine_state() -> str:
    import torch

    cpus = len(os.sched_getaffinity(0))
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (
        f"{model}, {cpus} usable CPUs, torch {torch.__version__}, Python {platform.python_version()}; "
        f"`uptime` at the start: {up}"
    )


def fmt(x: float) -> str:
    return f"{x:.1f}"


def main() -> int:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        return child(sys.argv[i + 1], sys.argv[sys.argv.index("--") + 1 :])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n_series", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="500 series, no DDP")
    ap.add_argument("--baseline", default=None, help="git revision to run side by side (git archive)")
    ap.add_argument("--variants", default="default,threads1,threads2,ddp1,ddp2")
    ap.add_argument("--baseline_variants", default="default", help="variants the baseline also runs")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ddp_size", type=int, default=512, help="hidden width of the DDP variant (latent: half)")
    ap.add_argument("--ddp_batches", type=int, default=8, help="training batches (of 100 series) of the DDP variant")
    ap.add_argument("--seed", type=int, default=None, help="--seed_everything of every fit (default: the config's)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds before a run is killed (and reported so)")
    ap.add_argument("--out", default=str(ROOT / "results" / "many_series.md"))
    args = ap.parse_args()
    if args.quick:
        args.n_series = min(args.n_series, 500)
        args.variants = ",".join(v for v in args.variants.split(",") if not v.startswith("ddp"))
    work = Path(tempfile.mkdtemp(prefix="many_series_"))
    state = machine_state()
    srcs = {"new": ROOT}
    if args.baseline:
        base = work / "baseline"
        base.mkdir()
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline, "ts_neuralode"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=tar, check=True)
        srcs["base"] = base
    csv = work / f"sine{args.n_series}.csv"
    gen = [
        sys.executable,
        "-m",
        "ts_neuralode.cli",
        "generate",
        "sine",
        "--n_series",
        str(args.n_series),
        "--out",
        str(csv),
    ]
    subprocess.run(gen, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    plan = []
    for variant in args.variants.split(","):
        for _ in range(args.repeats):
            for name in (["base"] if "base" in srcs and variant in args.baseline_variants.split(",") else []) + ["new"]:
                plan.append((name, variant))
    rows = []
    for name, variant in plan:
        rec = run_variant(srcs[name], csv, variant, work, args)
        rec["code"] = name
        rows.append(rec)
        if "timeout" in rec:
            print(f"{name:4s} {variant:9s} did not finish within {args.timeout} s", flush=True)
            continue
        print(
            f"{name:4s} {variant:9s} wall {rec['wall']:6.1f}s setup {rec['setup']:5.1f} train {rec['train']:6.1f} "
            f"({rec['train_batches']}) val {rec['val']:5.1f} ({rec['val_batches']}) "
            f"after-fit {rec['after_fit']:5.1f} "
            f"load {rec['load_before']:.1f}->{rec['load_after']:.1f} {rec.get('metrics')}",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    write_page(args, state, rows, " ".join(["python", "scripts/many_series_epoch.py", *sys.argv[1:]]))
    return 0


def write_page(args, state: str, rows: list[dict], command: str) -> None:
    lines = [
        "# One epoch on many series (issue 24)",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"Data: `ts-neuralode generate sine --n_series {args.n_series}` ({args.n_series} series x 100 points). Each "
        "row is a fresh process running `ts-neuralode fit --config configs/ode_rnn.yaml --data.path <csv> "
        "--trainer.max_epochs 1 --tracking false` (the DDP rows add the options named below). Seconds; *setup*: "
        "process start to the first training batch (imports, data, model, 2 sanity-check validation batches); "
        "*epoch* = *train* + *val*; *after fit*: band calibration and model directory (scripts/many_series_epoch.py "
        "explains each).",
        "",
        f"Machine: {state}. **Shared machine**: other sessions ran beside it; compare rows measured side by side "
        "(their load averages are given), not absolute figures across pages.",
        "",
        "| code | variant | threads | train s (batches) | val s (batches) | epoch s | setup s | after fit s | wall s "
        "| val_loss | load before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "timeout" in r:
            lines.append(
                f"| {r['code']} | {r['variant']} | | not done in {r['timeout']} s (killed) | | | | | "
                f"> {r['timeout']} | | {r['load_before']:.1f} → {r['load_after']:.1f} |"
            )
            continue
        m = r.get("metrics") or {}
        lines.append(
            f"| {r['code']} | {r['variant']} | {r['threads']} | {fmt(r['train'])} ({r['train_batches']}) | "
            f"{fmt(r['val'])} ({r['val_batches']}) | **{fmt(r['epoch'])}** | {fmt(r['setup'])} | {fmt(r['after_fit'])} "
            f"| {fmt(r['wall'])} | {m.get('val_loss', float('nan')):.4f} | {r['load_before']:.1f} → "
            f"{r['load_after']:.1f} |"
        )
    lines += [
        "",
        "Thread choice reported by the default run: "
        + next(
            (
                f"`{r['thread_line']}`"
                for r in rows
                if r["variant"] == "default" and r.get("thread_line") and r["code"] == "new"
            ),
            "(none)",
        ),
        "",
    ]
    cal = next((r["calibration"] for r in rows if r.get("calibration") and r["code"] == "new"), "")
    if cal:
        lines += [f"After-fit line of the default run: `{cal.strip()}`", ""]
    ddp = [r for r in rows if r["variant"].startswith("ddp")]
    if ddp:
        n = args.ddp_size
        lines += [
            f"DDP rows: ODE-RNN with `--model.hidden_dim {n} --model.latent_dim {n // 2}`, "
            f"`--trainer.limit_train_batches {args.ddp_batches}` global batches of 100 series, "
            f"`--trainer.limit_val_batches {max(1, args.ddp_batches // 2)}`, `--data.shuffle false`, "
            "`--data.obs_fraction 1.0` (a random training subsample would be drawn per rank), "
            "`--trainer.num_sanity_val_steps 0`, `OMP_NUM_THREADS=1` per process; ddp1: one process, "
            "`--data.batch_size 100`; ddp2: `--trainer.devices 2 --trainer.strategy ddp --data.batch_size 50` "
            "(gloo on CPU).",
            "",
        ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())

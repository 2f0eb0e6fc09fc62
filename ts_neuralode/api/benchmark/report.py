"""The benchmark's outputs: markdown table, epoch-time-vs-MSE chart, description, and the results/ report files
that the reproduction scripts write."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ts_neuralode.api.benchmark.config import MD_COLUMNS, MD_OPTIONAL, BenchmarkConfig, BenchmarkResult, scored_tasks


# ---------------------------------------------------------------------------------------------- output
def _fmt(value: Any, col: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if col in ("params", "epochs"):
        return f"{int(value):,}"
    if col.endswith("_mse"):
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    if col.endswith("_skill"):
        return f"{value:.3g}" if abs(value) >= 1e3 else f"{value:.3f}"
    if col.endswith("_nfe"):
        return f"{value:.1f}"
    if col.endswith("_ms"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def markdown_table(df: pd.DataFrame, columns: Sequence[tuple[str, str]] = MD_COLUMNS) -> str:
    """A GitHub markdown table of the result frame (an ``error`` column is added when a model failed; MSE and
    skill columns of tasks no row was scored on are left out)."""
    cols = [
        (c, h)
        for c, h in columns
        if c not in MD_OPTIONAL or (c in df and pd.to_numeric(df[c], errors="coerce").notna().any())
    ]
    if "error" in df and df["error"].fillna("").astype(str).str.len().gt(0).any():
        cols.append(("error", "error"))
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c), c) for c, _ in cols) + " |")
    return "\n".join(lines)


def plot_time_vs_mse(df: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Scatter of median training epoch time (x) against test MSE (y), log-log; one colour per model,
    circles for interpolation and triangles for extrapolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    cmap = plt.get_cmap("tab10")
    plotted = False
    for i, (_, r) in enumerate(df.iterrows()):
        x = r.get("epoch_time_s")
        for col, marker, label in (("interp_mse", "o", "interp"), ("extrap_mse", "^", "extrap")):
            y = r.get(col)
            if x is None or y is None or not (np.isfinite(x) and np.isfinite(y)) or x <= 0 or y <= 0:
                continue
            ax.scatter([x], [y], color=cmap(i % 10), marker=marker, s=60, label=f"{r['model']} ({label})")
            ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
            plotted = True
    if plotted:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no finite results", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training time per epoch, median [s]")
    ax.set_ylabel("test MSE (o interpolation, ^ extrapolation)")
    ax.set_title(title or "epoch time vs test MSE")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(cfg: BenchmarkConfig, layout: str, dms: dict[str, Any]) -> str:
    """One paragraph saying what was run (data, split, tasks, budget, machine)."""
    dm = dms[cfg.task]
    src = f"synthetic `{cfg.dataset}` ({cfg.n_series} series)" if cfg.dataset else f"`{cfg.path}`"
    n = {k: len(dm.split[k]) for k in ("train", "val", "test")}
    shared = {k: v for k, v in cfg.model_options.items()}
    if cfg.task == "forecast":
        how = "by time (every series in each; test = its last horizon)" if dm.split_by == "time" else "by series"
        task = (
            f"forecast windows (horizon {cfg.horizon}, context {cfg.context or 'all history'}, "
            f"{dm.train_items_per_epoch} training windows per epoch; split {how})"
        )
    else:
        task = f"{cfg.task} (obs_fraction {cfg.obs_fraction}, cut {cfg.cut})"
    what = {
        "interpolation": "interp = held-out points of the interpolation task",
        "extrapolation": "extrap = points after the cut of the extrapolation task",
        "forecast": "forecast = the last horizon of each test series",
    }
    return (
        f"Data: {src}, {dm.num_channels} channel(s), split train/val/test = {n['train']}/{n['val']}/{n['test']} "
        f"series, layout {layout}, scaler {cfg.scaler}. Training task: {task}; {cfg.epochs} epoch(s), batch "
        f"{cfg.batch_size}, seed {cfg.seed}, gradient clip {cfg.gradient_clip}, model options {shared or 'defaults'}. "
        f"Test MSE in {'data' if cfg.scaler == 'none' else 'model (scaled)'} units on the test split: "
        f"{'; '.join(what[t] for t in scored_tasks(cfg))}. Baseline rows (no training) are naive forecasts scored "
        f"by the same code; skill = MSE / the LOCF row's MSE of the same task (< 1: better than LOCF). "
        f"Device {cfg.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)."
    )


def write_outputs(
    result: BenchmarkResult, out_csv: str | Path, command: str, title: str = "", plot: str | Path | None = None
) -> tuple[Path, Path, Path]:
    """CSV, PNG chart and markdown (command, description, table) beside each other; returns their paths."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out_csv, index=False)
    png = Path(plot) if plot else out_csv.with_suffix(".png")
    plot_time_vs_mse(result.table, png, title)
    md = write_report(
        out_csv.with_suffix(".md"),
        title or "ts-neuralode benchmark",
        command,
        [result.description, markdown_table(result.table), f"![epoch time vs test MSE]({png.name})"],
    )
    return out_csv, png, md


# ------------------------------------------------------------------------------- reproduction scripts
def script_command(script: str, argv: Sequence[str]) -> str:
    """The command line that reproduces a scripts/ run (for the header of its results file)."""
    return " ".join(["python", script, *(shlex.quote(a) for a in argv)])


def write_report(path: str | Path, title: str, command: str, sections: Sequence[str]) -> Path:
    """A results/ markdown file: title, the producing command, then the given sections (paragraphs, tables)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"# {title}", "", "Produced by:", "", "```", command, "```", ""]
    for sec in sections:
        body += [sec.rstrip(), ""]
    path.write_text("\n".join(body))
    return path


def publish_report(
    out: str | Path, title: str, script: str, argv: Sequence[str], sections: Sequence[str], shown: str
) -> int:
    """The end of a results script: :func:`write_report` with ``script``'s command line, ``shown`` on stdout, the
    path written on stderr; returns the exit status 0."""
    path = write_report(out, title, script_command(script, argv), sections)
    print(shown)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def script_parser(doc: str, out: str, seed: int = 0) -> argparse.ArgumentParser:
    """The options every reproduction script shares: --epochs, --n_series, --full, --device, --threads, --seed,
    --out (the defaults of --epochs / --n_series depend on --full; each script documents them)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: see the docstring)")
    p.add_argument("--n_series", type=int, default=None, help="series in the data set (default: see the docstring)")
    p.add_argument("--full", action="store_true", help="the paper's scale (for a GPU machine: --device cuda)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--out", default=out, help=f"results markdown (default {out})")
    return p

"""Interval coverage of every model family before and after conformal calibration, on held-out windows.

For each data set and model family (``latent_ode``, ``ode_rnn``, ``gru_ode``) this

1. trains the model through ``ts-neuralode fit`` on the data up to a time ``T1`` only (``backtest.refit_forecaster``:
   the same path as the CLI; the config's own validation split holds out the last horizon of that part);
2. backtests it on windows with cutoffs in ``[T1, T2)`` (after everything it trained on): the calibration set,
   from which ``backtest.calibrate`` fits the conformal band factors per horizon bucket;
3. backtests it on windows with cutoffs in ``[T2, end - horizon]``: the held-out test set, scored with the raw and
   with the calibrated bands (``Forecaster.predict(calibrated=True)``), beside the LOCF baseline's MAE.

Data sets:

* ``demo`` — ``data/demo.csv`` with ``configs/demo.yaml`` (the family swapped with ``--model.model``): 12 sensors,
  14 days; train on days 1–8, calibrate on cutoffs of days 8–10, test on cutoffs of days 10–12 (2-day horizon,
  so the test targets reach the end of day 14), cutoffs every 6 h;
* ``synthetic`` — 12 noisy sines (period 8, amplitude 2, Gaussian noise sd 0.4, random phase and offset) at random
  times (about 4 a time unit) over [0, 60]: train on t ≤ 36, calibrate on cutoffs in [36, 46), test on cutoffs
  in [46, 55]; horizon 5, context 15, cutoffs every 1.

Targets (the issue): the 90% band covers 87–93% and the 50% band 47–53% of the held-out points (issue 25: the
default bands, calibrated by ``fit`` itself on its validation windows, 87–93% and 45–55%).

    python scripts/calibration_study.py                  # ~25 min on 2 loaded CPU cores (--epochs 30)
    python scripts/calibration_study.py --epochs 5 --datasets synthetic --families ode_rnn   # smoke run

Writes results/calibration.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ts_neuralode.api import backtest  # noqa: E402
from ts_neuralode.api.backtest import md_table as markdown_table  # noqa: E402
from ts_neuralode.api.benchmark.report import publish_report  # noqa: E402
from ts_neuralode.api.forecast_frame import band_col  # noqa: E402

FAMILIES = ("latent_ode", "ode_rnn", "gru_ode", "latent_ode:coupling_flow", "ode_rnn:gru_flow")  # model[:evolution]
LEVELS = (50, 90)
TARGETS = {50: (0.45, 0.55), 90: (0.87, 0.93)}


def synthetic(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(12):
        t = np.unique(np.round(rng.uniform(0, 60, rng.poisson(240)), 4))
        y = 2 * np.sin(2 * np.pi * t / 8 + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 1) + rng.normal(0, 0.4, len(t))
        frames.append(pd.DataFrame({"unique_id": f"s{k:02d}", "ds": t, "y": np.round(y, 4)}))
    return pd.concat(frames, ignore_index=True)


def datasets(epochs: int) -> dict:
    common = [
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    demo = pd.read_csv(ROOT / "data" / "demo.csv")
    start = pd.Timestamp("2024-01-08T00:00:00+01:00")
    day = pd.Timedelta("1D")
    return {
        "demo": dict(
            frame=demo,
            time=lambda d: pd.to_datetime(d["ds"]),
            t1=start + 8 * day,
            cal=pd.date_range(start + 8 * day, start + 10 * day, freq="6h", inclusive="left"),
            test=pd.date_range(start + 10 * day, start + 12 * day, freq="6h"),
            horizon="2D",
            fit_args=["--config", str(ROOT / "configs" / "demo.yaml"), *common],
            what="data/demo.csv, configs/demo.yaml (ODE-RNN settings: rk4 3 h steps, context 4D, horizon 2D)",
        ),
        "synthetic": dict(
            frame=synthetic(),
            time=lambda d: d["ds"].astype(float),
            t1=36.0,
            cal=np.arange(36.0, 46.0, 1.0),
            test=np.arange(46.0, 55.01, 1.0),
            horizon=5.0,
            fit_args=[
                "--config",
                str(ROOT / "configs" / "demo.yaml"),
                "--data.time_unit",
                "null",
                "--data.time_scale",
                "4",
                "--data.horizon",
                "5",
                "--data.context",
                "15",
                "--data.season",
                "8",
                *common,
            ],
            what="12 noisy sines, configs/demo.yaml's options with horizon 5, context 15, time_scale 4, season 8",
        ),
    }


def coverage(cv: pd.DataFrame, name: str, level: int) -> tuple[float, float]:
    lo, hi = cv[band_col(name, "lo", level)], cv[band_col(name, "hi", level)]
    return float(((cv["y"] >= lo) & (cv["y"] <= hi)).mean()), float((hi - lo).mean())


def run_one(ds: dict, family: str, work: Path, num_samples: int) -> dict:
    frame = ds["frame"]
    train = frame[ds["time"](frame) <= ds["t1"]]
    model, _, kind = family.partition(":")
    args = [*ds["fit_args"], "--model.model", model] + (["--model.evolution.kind", kind] if kind else [])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fc = backtest.refit_forecaster(args, train, work)
    fit_s = time.perf_counter() - t0
    kw = dict(level=list(LEVELS), num_samples=num_samples, quantiles=None)
    fit_cal = fc.calibration  # what fit itself fitted on its held-out validation windows (the default bands)
    cv_fit_test = (
        fc.cross_validation(frame, ds["horizon"], cutoffs=list(ds["test"]), calibrated=True, **kw)
        if fit_cal is not None
        else None
    )
    cv_cal = fc.cross_validation(frame, ds["horizon"], cutoffs=list(ds["cal"]), **kw)
    cal = backtest.calibrate(fc, cv_cal, ds["horizon"], buckets=4, history=frame)
    cv_raw = fc.cross_validation(frame, ds["horizon"], cutoffs=list(ds["test"]), **kw)
    cv_cal_test = fc.cross_validation(frame, ds["horizon"], cutoffs=list(ds["test"]), calibrated=True, **kw)
    name = fc.name
    row = {
        "model": name,
        "fit_s": round(fit_s),
        "cal_points": len(cv_cal),
        "fit_cal_points": (fit_cal or {}).get("fitted_on", {}).get("points", 0),
        "test_points": len(cv_raw),
        "distinct_test_points": len(cv_raw.drop_duplicates(["unique_id", "ds"])),
        "mae": float((cv_raw[name] - cv_raw["y"]).abs().mean()),
        "locf_mae": float((cv_raw["locf"] - cv_raw["y"]).abs().mean()),
    }
    for lv in LEVELS:
        row[f"cov{lv}_raw"], row[f"width{lv}_raw"] = coverage(cv_raw, name, lv)
        row[f"cov{lv}_cal"], row[f"width{lv}_cal"] = coverage(cv_cal_test, name, lv)
        row[f"cov{lv}_fit"], row[f"width{lv}_fit"] = (
            coverage(cv_fit_test, name, lv) if cv_fit_test is not None else (float("nan"), float("nan"))
        )
        row[f"fit_factors{lv}"] = (
            ", ".join(f"{c:.2f}" for c in fit_cal["factors"][str(lv)]) if fit_cal is not None else "none"
        )
        row[f"cal{lv}_in_sample"] = coverage(
            fc.cross_validation(frame, ds["horizon"], cutoffs=list(ds["cal"]), calibrated=True, **kw), name, lv
        )[0]
        row[f"factors{lv}"] = ", ".join(f"{c:.2f}" for c in cal["factors"][str(lv)])
    return row


def verdict(row: dict, kind: str = "cal") -> str:
    out = []
    for lv in LEVELS:
        lo, hi = TARGETS[lv]
        c = row[f"cov{lv}_{kind}"]
        out.append(f"{lv}% " + ("met" if lo <= c <= hi else f"off by {min(abs(c - lo), abs(c - hi)) * 100:.1f} pts"))
    return "; ".join(out)


def reading(table: pd.DataFrame) -> str:
    """What the table says: the targets met, the misses, the two kinds of raw band (sampled from the latent initial
    state vs a Gaussian predictive std, told apart by their raw 90% coverage) and the sampling noise of a coverage."""
    met = sum(str(v).count("met") for v in table["targets (calibrated)"])
    misses = [
        f"{r['data']} {r['model']} {lv}% ({r[f'cov{lv}_cal']:.3f})"
        for _, r in table.iterrows()
        for lv in LEVELS
        if not TARGETS[lv][0] <= r[f"cov{lv}_cal"] <= TARGETS[lv][1]
    ]
    n = int(table["distinct_test_points"].min())
    sd50, sd90 = (100 * np.sqrt(p * (1 - p) / n) for p in (0.5, 0.9))

    def kind(rows: pd.DataFrame) -> tuple[str, float, float]:
        f = [float(x) for c in ("factors50", "factors90") for v in rows[c] for x in str(v).split(",")]
        return ", ".join(dict.fromkeys(rows["model"])), min(f), max(f)

    sampled, gauss = table[table["cov90_raw"] < 0.5], table[table["cov90_raw"] >= 0.5]
    parts = [
        f"**Reading.** {met} of {2 * len(table)} calibrated coverages are inside their target range"
        + (f"; off: {', '.join(misses)}" if misses else "")
        + "."
    ]
    if len(sampled):
        names, lo, hi = kind(sampled)
        parts.append(
            f"The raw bands of {names} cover almost nothing (their samples carry only the spread of the "
            "latent initial state, not the observation noise), so their calibrated bands are essentially "
            f"the conformal quantile of their own residuals (factors {lo:.0f}-{hi:.0f})."
        )
    if len(gauss):
        names, lo, hi = kind(gauss)
        parts.append(f"{names} have a Gaussian predictive std and need factors near 1 ({lo:.2f}-{hi:.2f}).")
    parts.append(
        "The stretch is about each band's own midpoint (ts_neuralode.api.calibration), so a sample mean that "
        "lies outside its band does not push the band to one side. Split-conformal coverage is guaranteed "
        "for points exchangeable with the calibration points, and on the calibration windows themselves "
        "every model reaches its level (the in-sample columns); the held-out windows come later, and a model "
        "whose error grows or shrinks with the distance from its training data drifts off. Sampling noise "
        f"alone: with {n} distinct held-out observations (each scored from several overlapping windows, so "
        f"fewer independent ones), a coverage has a standard error of at least {sd50:.1f} points at 50% and "
        f"{sd90:.1f} at 90%: misses of that size are noise, larger ones are drift."
    )
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--datasets", default="demo,synthetic")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--num_samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "calibration.md"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    all_ds = datasets(args.epochs)
    rows, sections = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for dname in args.datasets.split(","):
            ds = all_ds[dname]
            for fam in args.families.split(","):
                row = run_one(ds, fam, Path(tmp) / f"{dname}_{fam}", args.num_samples)
                row = {"data": dname, **row}
                row["targets (calibrated)"] = verdict(row)
                row["targets (fit's default bands)"] = verdict(row, "fit")
                rows.append(row)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    table = pd.DataFrame(rows)
    show = table[
        [
            "data",
            "model",
            "test_points",
            "distinct_test_points",
            "mae",
            "locf_mae",
            "cov50_raw",
            "cov50_cal",
            "cov90_raw",
            "cov90_cal",
            "width90_raw",
            "width90_cal",
            "targets (calibrated)",
        ]
    ]
    fit_show = table[
        [
            "data",
            "model",
            "test_points",
            "fit_cal_points",
            "cov50_raw",
            "cov50_fit",
            "cov90_raw",
            "cov90_fit",
            "width90_fit",
            "fit_factors50",
            "fit_factors90",
            "targets (fit's default bands)",
        ]
    ]
    factors = table[
        ["data", "model", "cal_points", "factors50", "factors90", "cal50_in_sample", "cal90_in_sample", "fit_s"]
    ]
    desc = (
        "Coverage = fraction of held-out observations inside the band (`raw`: the model's own band; `cal`: "
        "stretched by the conformal factors fitted on the calibration windows, per horizon bucket of a quarter "
        "of the horizon). Held-out windows lie after every training and calibration cutoff; their cutoffs are "
        "6 h (demo) / 1 time unit (synthetic) apart, so windows overlap and one observation is scored from "
        "several cutoffs (`test_points` rows, `distinct_test_points` observations). MAE in data units, beside "
        "the LOCF baseline scored by the same code. Training: `--trainer.max_epochs "
        f"{args.epochs}`, everything else as the config says, 1 CPU thread; {args.num_samples} predictive "
        "samples (models that sample). Data: "
        + "; ".join(f"`{k}`: {all_ds[k]['what']}" for k in args.datasets.split(","))
        + "."
    )
    fit_desc = (
        "The default bands: what `fit` calibrates by itself, on the held-out validation windows of its own "
        "training data (the last horizon before `T1`, cutoffs a quarter horizon apart; "
        "`ts_neuralode.api.backtest.fit_calibration`), with no backtest step; scored on the same held-out test "
        "windows as above (`fit_cal_points`: the points it calibrated on)."
    )
    sections = [
        desc,
        "## Held-out coverage of the default bands (calibrated by fit)",
        fit_desc,
        markdown_table(fit_show),
        "## Held-out coverage before / after calibration on a separate calibration set",
        markdown_table(show),
        reading(table),
        "## Calibration factors (band stretch per horizon bucket, nearest first) and in-sample coverage",
        markdown_table(factors),
    ]
    return publish_report(
        args.out,
        "Conformal calibration of the forecast bands",
        "scripts/calibration_study.py",
        sys.argv[1:] if argv is None else argv,
        sections,
        markdown_table(show),
    )


if __name__ == "__main__":
    sys.exit(main())

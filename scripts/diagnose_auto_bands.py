"""Why the automatic choice's 90% band covered 17% of BXLator's points (results/peers.md): a measured diagnosis.

Fits ``Forecaster.fit(data, "auto", budget=…)`` exactly as ``scripts/peer_benchmark.py`` does (each series' data up
to its first cutoff, the data set's forecast options), then scores on the benchmark's own windows:

* the returned model's own bands (what the peer benchmark scored), and whether it has a band calibration and which
  correction weight its window model uses;
* every completed trial's model (trained with the validation split): its correction weight, its 90% calibration
  factors, and the coverage of its own and of its calibrated bands on the same windows.

    python scripts/diagnose_auto_bands.py --dataset bxlator --budget 4 --epochs 4

Prints one table (markdown) to stdout; the machine and threads as in peer_benchmark.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_benchmark as pb  # noqa: E402


def coverage(cv, name: str) -> float:
    lo, hi = cv[f"{name}-lo-90"].to_numpy(float), cv[f"{name}-hi-90"].to_numpy(float)
    y = cv["y"].to_numpy(float)
    return float(np.mean((y >= lo) & (y <= hi)))


def scaled_mae(cv, name: str, horizon) -> float:
    from ts_neuralode.api.backtest import evaluate

    met = evaluate(cv, horizon, models=["locf", name])
    ov = met[met["scope"] == "overall"].set_index("model")
    return float(ov.loc[name, "scaled_mae"])


def correction_weight(fc) -> str:
    from ts_neuralode.api.correction_gate import window_model

    wm = window_model(fc)
    return "—" if wm is None else f"{float(wm.correction_scale):.2f}"


def in_sample_calibration(fc, source, transfer: dict) -> dict | None:
    """The refit's calibration from its own errors on its trial's validation windows (which it trained on)."""
    from ts_neuralode.api import calibration as c
    from ts_neuralode.api.held_out import window_forecasts, windows_from_record

    record = (transfer.get("fitted_on") or {}).get("windows")
    if not record:
        return None
    levels = [float(lv) for lv in transfer["factors"]]
    cv, table, h, _ = window_forecasts(fc, source, windows_from_record(record), levels=levels)
    lead = c.lead_since_last(table, cv["unique_id"], cv["ds"], cv["cutoff"])
    unit_ns = table.codec.unit_ns if table.codec.is_datetime else None
    return c.fit(cv, fc.name, h, len(transfer["edges"]) - 1, unit_ns, lead=lead, drop_unreachable=True)


def mean_calibration(a: dict, b: dict) -> dict:
    """``a`` with each factor and floor the geometric mean of ``a``'s and ``b``'s (levels both have)."""
    factors = {
        lv: [float(np.sqrt(x * y)) for x, y in zip(f, b["factors"][lv], strict=True)]
        for lv, f in a["factors"].items()
        if lv in b["factors"]
    }
    floors = {lv: float(np.sqrt(a["floors"][lv] * b["floors"][lv])) for lv in factors}
    return {**a, "factors": factors, "floors": floors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="bxlator")
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--cutoffs", type=int, default=4)
    p.add_argument(
        "--alternatives",
        action="store_true",
        help="also score the returned model with its bands calibrated in-sample, and by the geometric mean of that "
        "and the transfer's factors",
    )
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from ts_neuralode.api.forecaster import Forecaster

    ds = pb.DATASETS[args.dataset]
    w = pb.windows(ds, args.cutoffs)
    raw, origin, aware, cuts = w.raw, w.origin, w.aware, w.cuts
    train = pb.training_rows(ds, raw, cuts, origin)
    opts = pb.fit_options(ds, "auto")
    trainer = {"max_epochs": args.epochs, "enable_progress_bar": False, "enable_model_summary": False}

    def backtest(fc, calibrated=False):
        kw = {"level": [90], "num_samples": 50, "seed": 0, "calibrated": calibrated}
        if ds.shared:
            stamps = [pb.to_stamp(c, ds, origin, aware) for c in sorted(cuts["cutoff"].unique())]
            return fc.cross_validation(raw, ds.horizon_arg, cutoffs=stamps, **kw)
        return fc.cross_validation(raw, ds.horizon_arg, n_windows=args.cutoffs, step=ds.step, **kw)

    lines = [
        "| model | configuration | correction weight | has calibration | 90% factors | scaled MAE | "
        "cov90 own bands | cov90 calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fc = Forecaster.fit(
            train,
            "auto",
            budget=args.budget,
            data_options=opts,
            trainer=trainer,
            output_dir=Path(tmp) / "auto",
            tracking=False,
            log_model=False,
            seed=0,
            storage=f"sqlite:///{Path(tmp) / 'study.db'}",
        )
        print(
            f"auto fit {time.perf_counter() - t0:.0f}s; best trial {fc.fit_info['best_trial']}: "
            f"{fc.fit_info['params']}",
            file=sys.stderr,
        )

        def row(label, what, f):
            cv = backtest(f)
            cal = getattr(f, "calibration", None)
            f90 = (cal or {}).get("factors", {}).get("90")
            cov_cal = f"{coverage(backtest(f, True), f.name):.3f}" if cal is not None else "—"
            factors = "—" if not f90 else " ".join(f"{x:.2f}" for x in f90)
            lines.append(
                f"| {label} | {what} | {correction_weight(f)} | {'yes' if cal else 'no'} | "
                f"{factors} | {scaled_mae(cv, f.name, ds.horizon_arg):.3f} | "
                f"{coverage(cv, f.name):.3f} | {cov_cal} |"
            )

        from ts_neuralode.api.model_choice_space import describe

        row("auto (returned)", describe(fc.fit_info["params"]), fc)
        if args.alternatives and fc.calibration is not None:
            # the refit's calibration made other ways, on the same windows (its trial's validation windows)
            transfer = fc.calibration
            own = in_sample_calibration(fc, train, transfer)
            if own is not None:
                for label, cal in (
                    ("in-sample: its own errors on the windows it trained on", own),
                    ("geometric mean of the transfer's and the in-sample factors", mean_calibration(transfer, own)),
                ):
                    fc.calibration = cal
                    row(f"auto (returned), {label}", describe(fc.fit_info["params"]), fc)
            fc.calibration = transfer
        import optuna

        study = optuna.load_study(study_name=fc.fit_info["study_name"], storage=f"sqlite:///{Path(tmp) / 'study.db'}")
        for tr in study.trials:
            mdir = Path(tmp) / "auto" / "trials" / f"trial_{tr.number:04d}" / "model"
            if mdir.is_dir():
                row(
                    f"trial {tr.number} ({tr.user_attrs.get('outcome')}, val {tr.value})",
                    describe(tr.params),
                    Forecaster.load(mdir),
                )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What closes the gap to the naive and classical forecasts on real data: ablations of the forecast-task options.

Every variant is trained through ``Forecaster.fit`` (the code path of ``ts-neuralode fit``) on the part of the data
before the test windows, then backtested with ``Forecaster.cross_validation`` on rolling-origin windows (several
cutoffs, at the series' real observation times) and scored by ``ts_neuralode.api.backtest.evaluate`` (MAE in the data's
units, MASE-style scaled MAE, CRPS, 90% coverage), beside the naive forecasts on the same points: last value
(``locf``), the series mean up to the cutoff (``mean``), seasonal naive (the package's ``seasonal`` baseline, whole
history) and the bases a model can correct (``--model.base``, scored with a zero correction: what the model adds
to them is the model's own skill).

Data sets and protocol (``--quick``: fewer epochs):

* ``co2`` — Mauna Loa weekly CO₂ (one series, real gaps): 52-week horizon, cutoffs one, two and three years before
  the end; trained on everything up to a year before the first cutoff, validated on that year.
* ``demo`` — the demo sensors (12 series, 14 days, irregular minutes): 2-day horizon, cutoffs 4, 3 and 2 days
  before each sensor's end; trained up to 2 days before the first cutoff.
* ``pbcseq`` — PBC labs (312 patients, 7 channels, irregular visits; ``scripts/make_pbcseq.py``): a 20% of the
  patients held out (seed 0); their last two years, one-year horizon, from everything before; trained on the
  others (validation: 20% of those).
* ``bxlator`` (optional, ``--datasets``) — GRU-ODE-Bayes' BXLator set (``data/external/bxlator.csv``, see
  ``--bxlator``): 200 held-out series as PBC.

    python scripts/ablate_forecast.py --quick                      # every data set found, every variant
    python scripts/ablate_forecast.py --datasets co2 --variants plain,norm,norm_seasonal_trend

Writes results/forecast_ablations.md (and the raw metrics as results/forecast_ablations.csv). One thread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ts_neuralode.api.backtest import evaluate  # noqa: E402
from ts_neuralode.api.forecaster import Forecaster  # noqa: E402
from ts_neuralode.models.window import SEASONAL_BASES  # noqa: E402
from ts_neuralode.training import ForecastingModule  # noqa: E402

PBC_LABS = ["bili", "chol", "albumin", "alk_phos", "ast", "platelet", "protime"]


@dataclass
class DataSet:
    name: str
    path: str
    horizon: str | float
    data: dict
    n_windows: int
    step: str | float
    season: bool
    split: str = "time"  # time: train before the first cutoff; series: train on other series
    holdout: int | None = None  # series held out (split by series)
    notes: str = ""
    extra: dict = field(default_factory=dict)


DATASETS = {
    "co2": DataSet(
        "co2",
        "data/co2_mauna_loa.csv",
        "52W",
        {
            "task": "forecast",
            "horizon": "52W",
            "context": "260W",
            "season": "52W",
            "time_unit": "D",
            "batch_size": 16,
            "layout": "padded",
        },
        3,
        "52W",
        True,
    ),
    "demo": DataSet(
        "demo",
        "data/demo.csv",
        "2D",
        {
            "task": "forecast",
            "horizon": "2D",
            "context": "1D",
            "season": "24h",
            "time_unit": "h",
            "batch_size": 16,
            "layout": "padded",
        },
        3,
        "1D",
        True,
    ),
    "pbcseq": DataSet(
        "pbcseq",
        "data/external/pbcseq.csv",
        365.0,
        {
            "task": "forecast",
            "horizon": 365,
            "value_cols": PBC_LABS,
            "split_by": "series",
            "val_fraction": 0.2,
            "test_fraction": 0.0,
            "batch_size": 32,
            "layout": "padded",
        },
        2,
        365.0,
        False,
        split="series",
        holdout=62,
    ),
    "bxlator": DataSet(
        "bxlator",
        "data/external/bxlator.csv",
        10.0,
        {
            "task": "forecast",
            "horizon": 10.0,
            "split_by": "series",
            "val_fraction": 0.2,
            "test_fraction": 0.0,
            "batch_size": 50,
            "layout": "padded",
        },
        2,
        10.0,
        False,
        split="series",
        holdout=200,
    ),
}

#: variant -> (model options, data options, seasonal data only, datetime data only)
VARIANTS = {
    "plain": ({}, {}, False, False),
    "norm": ({"normalize": "window"}, {}, False, False),
    "last": ({"base": "last"}, {}, False, False),
    "norm_last": ({"normalize": "window", "base": "last"}, {}, False, False),
    "norm_trend": ({"normalize": "window", "base": "trend"}, {}, False, False),
    "norm_seasonal": ({"normalize": "window", "base": "seasonal"}, {}, True, False),
    "norm_seasonal_trend": ({"normalize": "window", "base": "seasonal_trend"}, {}, True, False),
    "seasonal_trend": ({"base": "seasonal_trend"}, {}, True, False),
    "norm_harmonic": ({"normalize": "window", "base": "harmonic"}, {}, True, False),
    "norm_harmonic_long": ({"normalize": "window", "base": "harmonic"}, {"context": "long"}, True, False),
    "norm_harmonic_mse": (
        {"normalize": "window", "base": "harmonic", "model_kwargs": {"loss": "mse"}},
        {},
        True,
        False,
    ),
    "norm_harmonic_lr3": ({"normalize": "window", "base": "harmonic", "lr": 1e-3}, {}, True, False),
    "harmonic": ({"base": "harmonic"}, {}, True, False),
    "norm_seasonal_trend_cal": ({"normalize": "window", "base": "seasonal_trend"}, {"calendar": "auto"}, True, True),
    "norm_seasonal_cal": ({"normalize": "window", "base": "seasonal"}, {"calendar": "auto"}, True, True),
    "norm_seasonal_long": ({"normalize": "window", "base": "seasonal"}, {"context": "long"}, True, False),
    "cal": ({}, {"calendar": "auto"}, False, True),
    "norm_seasonal_trend_mse": (
        {"normalize": "window", "base": "seasonal_trend", "model_kwargs": {"loss": "mse"}},
        {},
        True,
        False,
    ),
    "norm_seasonal_trend_lr3": ({"normalize": "window", "base": "seasonal_trend", "lr": 1e-3}, {}, True, False),
    "norm_last_lr3": ({"normalize": "window", "base": "last", "lr": 1e-3}, {}, False, False),
    "last_mse": ({"base": "last", "model_kwargs": {"loss": "mse"}}, {}, False, False),
    "norm_seasonal_trend_long": ({"normalize": "window", "base": "seasonal_trend"}, {"context": "long"}, True, False),
    "norm_last_long": ({"normalize": "window", "base": "last"}, {"context": "long"}, False, False),
}
#: calendar features per data set (``calendar: auto``) and the longer context of ``context: long``
CALENDAR = {"co2": ["day_of_year"], "demo": ["time_of_day"]}
LONG_CONTEXT = {"co2": "520W", "demo": "4D", "pbcseq": None, "bxlator": None}
BASE_REFERENCES = ("last", "trend", "seasonal_trend", "harmonic")  # zero-correction bases scored beside the models


OLD_SUFFIX = " (random-init correction)"
#: the epoch budgets of the runs at commit 2902cc5 (their CSVs predate the max_epochs column)
OLD_EPOCHS = {"co2": 8, "demo": 12, "pbcseq": 12}


def is_reference(variant: str) -> bool:
    """A naive forecast or a zero-correction base (nothing trained)."""
    return variant in ("locf", "mean", "seasonal_naive") or variant.startswith("base_")


#: the protocol line of each data set (what run_dataset writes into DataSet.notes), for --merge
NOTES = {
    "co2": "test cutoffs 3, 2 and 1 years (52W) before the end (3 windows); trained on windows before a year "
    "before the first cutoff, validated on that year",
    "demo": "test cutoffs 4, 3 and 2 days before each sensor's end (3 windows of 2 days); trained on windows before "
    "2 days before the first cutoff, validated on those 2 days",
    "pbcseq": "62 held-out patients (seed 0), their last 2 years (one-year horizon, 2 windows); trained on the other "
    "250 (20% of them validate)",
    "bxlator": "200 held-out series (seed 0), their last 2 horizons of 10 time units; trained on the other 800",
}


def quiet():
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def test_cutoffs(ds: DataSet, frame: pd.DataFrame) -> tuple[pd.Timestamp | float, pd.Timestamp | float]:
    """(first test cutoff, train_end) for a time split: the earliest nominal cutoff of the backtest, and one horizon
    before it (the validation window ends where the test windows start)."""
    times = pd.to_datetime(frame["ds"], utc=False, format="ISO8601")
    last = times.groupby(frame["unique_id"]).max().min()
    h, step = pd.Timedelta(ds.horizon), pd.Timedelta(ds.step)
    first = last - h - (ds.n_windows - 1) * step
    return first, first - h


def split_series(ds: DataSet, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = np.array(sorted(frame["unique_id"].unique()))
    rng = np.random.default_rng(0)
    test = set(rng.choice(ids, size=min(ds.holdout, len(ids) // 5), replace=False))
    held = frame["unique_id"].isin(test)
    return frame[~held], frame[held]


def baseline_forecaster(
    fc: Forecaster, model: str, name: str, normalize: str = "none", base: str = "none", context=None
) -> Forecaster:
    """A parameter-free forecaster on ``fc``'s data transform: the seasonal baseline (``model='seasonal'``) or a
    window model whose correction is zeroed (exactly its base)."""
    hp = fc.hparams
    input_dim = int(hp["input_dim"])
    period = hp.get("season_period")
    if model == "seasonal":
        mod = ForecastingModule(model="seasonal", input_dim=input_dim, season_period=period, baselines=[])
    else:
        mod = ForecastingModule(
            model="ode_rnn",
            input_dim=input_dim,
            season_period=period,
            baselines=[],
            normalize=normalize,
            base=base,
            latent_dim=2,
            hidden_dim=4,
            evolution={"kind": "resnet_flow"},
        )
        head = mod.model.inner.head[-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    return Forecaster(mod, fc.transform, fc.read_options, name=name, context=context)


def run_variant(ds: DataSet, variant: str, train, history, epochs: int, config: str, workdir: Path, seed: int):
    mopts, dopts, _, _ = VARIANTS[variant]
    data = dict(ds.data)
    model = dict(mopts)
    model.setdefault("evolution", {"method": "euler", "step_size": 0.1})
    for k, v in dopts.items():
        if k == "calendar":
            data["calendar"] = CALENDAR[ds.name]
        elif k == "context":
            long = LONG_CONTEXT[ds.name]
            if long is None:
                data.pop("context", None)
            else:
                data["context"] = long
        else:
            data[k] = v
    if ds.split == "time":
        data["train_end"] = ds.extra["train_end"]
    trainer = {"max_epochs": epochs, "enable_progress_bar": False, "enable_model_summary": False}
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        fc = Forecaster.fit(
            train,
            config,
            data_options=data,
            model_options=model,
            trainer=trainer,
            output_dir=workdir / f"{ds.name}_{variant}",
            tracking=False,
            log_model=False,
            seed=seed,
        )
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cv = backtest(fc, ds, history)
    return fc, cv, fit_s, time.perf_counter() - t0


def backtest(fc: Forecaster, ds: DataSet, history) -> pd.DataFrame:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fc.cross_validation(
            history, ds.horizon, n_windows=ds.n_windows, step=ds.step, level=[90], num_samples=100, seed=0
        )


def merge_column(cv: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.DataFrame:
    keys = [c for c in ("unique_id", "ds", "channel", "cutoff") if c in cv.columns]
    out = cv.merge(other[keys + [name]], on=keys, how="left")
    if out[name].isna().any():
        raise RuntimeError(f"{name}: {int(out[name].isna().sum())} rows of the backtest have no forecast")
    return out


def score(cv: pd.DataFrame, ds: DataSet, fc: Forecaster, models: list[str]) -> pd.DataFrame:
    unit_ns = fc.transform.codec.unit_ns if fc.transform.codec.is_datetime else None
    horizon = ds.horizon if unit_ns is not None else float(ds.horizon)
    m = evaluate(cv, horizon, models=models, unit_ns=unit_ns)
    overall = m[m["scope"] == "overall"].set_index("model")
    cols = [c for c in ("mae", "scaled_mae", "crps", "coverage-90") if c in overall.columns]
    res = overall[cols].copy()
    # the last window alone (CO2: the last year, the protocol)
    last = cv[cv["cutoff"] == cv["cutoff"].max()]
    res["mae_last_window"] = [float((last[c] - last["y"]).abs().mean()) for c in res.index]
    return res


def run_dataset(
    ds: DataSet,
    variants: list[str],
    epochs: int,
    config: str,
    workdir: Path,
    seed: int,
    log,
    partial: Path | None = None,
) -> pd.DataFrame:
    frame = pd.read_csv(ROOT / ds.path)
    if ds.split == "time":
        first, train_end = test_cutoffs(ds, frame)
        ds.extra["train_end"] = train_end.isoformat()
        train, history = ROOT / ds.path, ROOT / ds.path
        ds.notes = (
            f"test cutoffs from {first.isoformat()} every {ds.step} ({ds.n_windows} windows); trained on "
            f"windows before {ds.extra['train_end']}, validated on the horizon after it"
        )
    else:
        tr, te = split_series(ds, frame)
        train, history = workdir / f"{ds.name}_train.csv", workdir / f"{ds.name}_test.csv"
        tr.to_csv(train, index=False)
        te.to_csv(history, index=False)
        ds.notes = (
            f"{te['unique_id'].nunique()} held-out series (seed 0), their last {ds.n_windows} horizons "
            f"(step {ds.step}); trained on the other {tr['unique_id'].nunique()}"
        )
    rows, cv_all, ref_fc = [], None, None
    for v in variants:
        mopts, dopts, seasonal_only, dt_only = VARIANTS[v]
        if seasonal_only and not ds.season:
            continue
        if dt_only and ds.name not in CALENDAR:
            continue
        if v.endswith("_long") and LONG_CONTEXT[ds.name] is None and "context" not in ds.data:
            continue
        try:
            fc, cv, fit_s, cv_s = run_variant(ds, v, train, history, epochs, config, workdir, seed)
        except Exception as err:  # noqa: BLE001 - a failing variant is a row of the table, not the end of the run
            log(f"{ds.name} {v}: FAILED {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            rows.append(pd.DataFrame({"variant": [v], "error": [f"{type(err).__name__}: {str(err)[:120]}"]}))
            continue
        cv = cv.rename(columns={fc.name: v})
        cols = [v] + [c for c in cv.columns if c.startswith(f"{fc.name}-")]
        cv = cv.rename(columns={c: c.replace(f"{fc.name}-", f"{v}-") for c in cols[1:]})
        if cv_all is None:
            cv_all, ref_fc = cv, fc
        else:
            cv_all = merge_column(cv_all, cv, v)
            for c in [c for c in cv.columns if c.startswith(f"{v}-")]:
                cv_all = merge_column(cv_all, cv, c)
        s = score(cv, ds, fc, [v, "locf", "mean"]).loc[[v]]
        s.insert(0, "variant", v)
        s["fit_s"], s["cv_s"], s["max_epochs"] = fit_s, cv_s, epochs
        rows.append(s.reset_index(drop=True))
        log(f"{ds.name} {v}: mae {s['mae'].iloc[0]:.4g} scaled {s['scaled_mae'].iloc[0]:.4g} fit {fit_s:.0f}s")
        if partial is not None:  # what is done so far, in case the run is cut short
            pd.concat(rows, ignore_index=True).assign(data=ds.name).to_csv(partial, index=False)
    if ref_fc is None:
        return pd.DataFrame()
    # naive forecasts and zero-correction bases on the same points
    refs = {}
    if ds.season:
        refs["seasonal_naive"] = baseline_forecaster(ref_fc, "seasonal", "seasonal_naive")
    for b in BASE_REFERENCES:
        if b in SEASONAL_BASES and not ds.season:
            continue
        refs[f"base_{b}"] = baseline_forecaster(ref_fc, "ode_rnn", f"base_{b}", "window", b, context=ref_fc.context)
    for name, bfc in refs.items():
        cv_all = merge_column(cv_all, backtest(bfc, ds, history), name)
    names = ["locf", "mean"] + list(refs)
    s = score(cv_all, ds, ref_fc, names)
    s.insert(0, "variant", s.index)
    rows = [s.reset_index(drop=True)] + rows
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "data", ds.name)
    return out


def fmt(x) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.4g}"


def ratios(part: pd.DataFrame) -> pd.DataFrame:
    """Scaled MAE over the mean's and the seasonal naive's (below 1: better than that naive forecast)."""
    part = part.copy()
    ref = part.set_index("variant")["scaled_mae"]
    for name, col in (("mean", "x_mean"), ("seasonal_naive", "x_seasonal")):
        if name in ref.index:
            part[col] = part["scaled_mae"] / float(ref[name])
    return part


def markdown(res: pd.DataFrame, command: str, datasets: dict, epochs: int | None = None) -> str:
    lines = [
        "# Forecast ablations on real data: what beats the naive forecasts",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        "Every row is scored by `ts_neuralode.api.backtest.evaluate` on the rows of `Forecaster.cross_validation` "
        "(rolling origin, the series' real observation times, forecasts conditioned on the history up to each "
        "cutoff): MAE in the data's units, `scaled_mae` (each error over its series' last-value MAE on the same "
        "rows, MASE-style: below 1 beats the last value), CRPS and 90% coverage from 100 predictive samples, "
        "`mae_last_window` the last cutoff's window alone (CO₂: the last 52 weeks, the issue's protocol). "
        "Naive rows: `locf` (last value), `mean` (series mean up to the cutoff), `seasonal_naive` (the package's "
        "seasonal baseline), `base_*` (a window model with a zeroed correction: exactly its `--model.base`). "
        "Models: `configs/ode_rnn.yaml` (ODE-RNN) with Euler steps of 0.1 model units (cheap: the ablation is "
        "about the forecast options, not the solver), at most `max_epochs` epochs (cosine schedule over them, "
        "early stopping as the config), seed 0, one thread on a shared 2-core CPU (fit seconds are only "
        "comparable within a table).",
        "",
        "Variants: `norm` = `--model.normalize window`; `last`, `trend`, `seasonal`, `seasonal_trend` = "
        "`--model.base …`; `cal` = `--data.calendar` (CO₂: day_of_year; demo: time_of_day); `long` = a longer "
        "context (CO₂: 520W instead of 260W; demo: 4D instead of 1D); `mse` = the ODE-RNN trained on the MSE "
        '(`--model.model_kwargs \'{"loss": "mse"}\'`) instead of the Gaussian NLL; `lr3` = `--model.lr 1e-3` '
        "(instead of 1e-2); `harmonic` = `--model.base harmonic` (the harmonic seasonal forecast, "
        "`ts_neuralode/models/harmonic.py`). Rows marked `(context scored too)` ran before commit 1359db3, when a "
        "model with a base was also trained on its one-step predictions of the context (in level units; since "
        "then only the correction is scored); rows marked `(no gate)` ran before commit fe54b34, when the "
        "correction was always kept whole (since then its weight 0…1 is chosen on the fit's validation "
        "windows, `ts_neuralode/correction_gate.py`); unmarked trained rows with a base ran with both.",
        "",
    ]
    for name, part in res.groupby("data", sort=False):
        ds = datasets[name]
        lines += [f"## {name}", "", ds.notes + ".", ""]
        part = ratios(part)
        cols = [
            c
            for c in (
                "variant",
                "mae",
                "scaled_mae",
                "x_mean",
                "x_seasonal",
                "crps",
                "coverage-90",
                "mae_last_window",
                "max_epochs",
                "fit_s",
                "error",
            )
            if c in part.columns and part[c].notna().any()
        ]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in part.iterrows():
            lines.append("| " + " | ".join(fmt(r[c]) if c in r and pd.notna(r[c]) else "—" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="co2,demo,pbcseq")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=None, help="default 30 (--quick: 12)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--config", default="configs/ode_rnn.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/forecast_ablations.md")
    p.add_argument(
        "--merge",
        nargs="*",
        default=None,
        help="only write --out from the CSVs of earlier runs (run in parts: each --out X.md writes X.csv)",
    )
    p.add_argument("--commands", nargs="*", default=None, help="with --merge: the commands that made the CSVs")
    p.add_argument(
        "--old",
        nargs="*",
        default=None,
        help="with --merge: CSVs of runs at commit 2902cc5, before ce5c15f (a base correction not started at 0)",
    )
    args = p.parse_args(argv)
    if args.merge:
        parts = [pd.read_csv(f) for f in args.merge]
        for f in args.old or []:  # runs before the correction's zero start (commit 2902cc5): base rows relabelled
            old = pd.read_csv(f)
            based = old["variant"].map(lambda v: v in VARIANTS and "base" in VARIANTS[v][0])
            old.loc[based, "variant"] = old.loc[based, "variant"] + OLD_SUFFIX
            trained = ~old["variant"].map(is_reference)
            if "max_epochs" not in old.columns:
                old["max_epochs"] = np.nan
            old.loc[trained & old["max_epochs"].isna(), "max_epochs"] = old["data"].map(OLD_EPOCHS)
            parts.append(old)
        res = pd.concat(parts, ignore_index=True)
        order = list(dict.fromkeys(res["data"]))
        res = pd.concat([res[res["data"] == d].drop_duplicates("variant", keep="first") for d in order])
        res = res.assign(_ref=~res["variant"].map(is_reference)).sort_values(
            ["data", "_ref"], kind="stable", key=lambda c: c.map(order.index) if c.name == "data" else c
        )
        res = res.drop(columns="_ref")
        for d in order:
            DATASETS[d].notes = NOTES.get(d, "")
        text = markdown(res, "\n".join(args.commands or []), DATASETS, args.epochs or 12)
        (ROOT / args.out).write_text(text)
        res.to_csv((ROOT / args.out).with_suffix(".csv"), index=False)
        return 0
    torch.set_num_threads(1)
    quiet()
    epochs = args.epochs or (12 if args.quick else 30)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    chosen = {}
    for name in args.datasets.split(","):
        ds = DATASETS[name.strip()]
        if not (ROOT / ds.path).exists():
            print(f"skip {ds.name}: {ds.path} not found", file=sys.stderr)
            continue
        chosen[ds.name] = ds
    frames = []
    out_md = ROOT / args.out
    command = "python scripts/ablate_forecast.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        for ds in chosen.values():
            frames.append(
                run_dataset(
                    ds,
                    variants,
                    epochs,
                    str(ROOT / args.config),
                    Path(tmp),
                    args.seed,
                    lambda m: print(m, file=sys.stderr, flush=True),
                    out_md.with_name(out_md.stem + f".{ds.name}.partial.csv"),
                )
            )
            res = pd.concat(frames, ignore_index=True)
            res.to_csv(out_md.with_suffix(".csv"), index=False)
            out_md.write_text(markdown(res, command, chosen, epochs))
    print(f"wrote {out_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

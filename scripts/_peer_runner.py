"""Run statsforecast and neuralforecast on regular grids (inside the benchmark's own environment, ``.venv-peers``).

    .venv-peers/bin/python scripts/_peer_runner.py WORKDIR

Reads ``WORKDIR/spec.json`` and ``WORKDIR/grid.csv`` (``uid, window, step, y``: each univariate series' history up
to a window's cutoff on a regular grid, step 0 at the cutoff; written by scripts/peer_benchmark.py) and writes
``WORKDIR/forecasts_<family>.csv`` (``uid, window, step, model, point[, q-P…, lo-90, hi-90]``, steps 1..h) and
``WORKDIR/timings_<family>.json`` ({model: {fit_s, predict_s, error}}), both rewritten after every model, and
``WORKDIR/done_<family>`` at the end. The grid's integer step is the libraries' time
stamp (``freq=1``), so every series may have its own cutoff.

* statsforecast (``statsforecast`` in spec["families"]): AutoETS, AutoARIMA, AutoTheta (season_length =
  spec["season"] grid steps, 1 when none) and MSTL (only with a season), each fitted on every window's history
  (``fit`` then ``predict``; they are local models; AutoARIMA on the last 10 seasons of each history — 520
  steps without a season — as its seasonal search takes tens of minutes per fit on CO₂'s 2,000 weeks), bands at the
  levels 5, 15, …, 95 (the quantiles
  2.5 %, 7.5 %, … 97.5 % of the CRPS grid) and 90. A series a model cannot fit falls back to the Naive forecast
  (statsforecast's ``fallback_model``).
* neuralforecast (``neuralforecast``): NHITS, NBEATS, TiDE (MAE loss: point forecasts), input_size
  spec["input_size"], max_steps spec["max_steps"], robust scaler, start padding for short series, seed 1, one
  CPU thread; trained once on the histories of window 0 (the earliest cutoff) and used for every window.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

OFFSET = 1_000_000  # grid step -> a positive integer time stamp
CRPS_LEVELS = [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]


def _grid_frame(grid: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": grid["uid"].to_numpy(),
            "ds": grid["step"].to_numpy() + OFFSET,
            "y": grid["y"].to_numpy(dtype=np.float64),
        }
    )


def _bands(pred: pd.DataFrame, model: str, with_levels: bool) -> pd.DataFrame:
    out = pd.DataFrame(
        {"uid": pred["unique_id"].to_numpy(), "step": pred["ds"].to_numpy() - OFFSET, "point": pred[model].to_numpy()}
    )
    if with_levels:
        for lv in CRPS_LEVELS:
            lo, hi = (100 - lv) / 2, (100 + lv) / 2
            out[f"q-{lo:g}"] = pred[f"{model}-lo-{lv}"].to_numpy()
            out[f"q-{hi:g}"] = pred[f"{model}-hi-{lv}"].to_numpy()
        out["lo-90"] = pred[f"{model}-lo-90"].to_numpy()
        out["hi-90"] = pred[f"{model}-hi-90"].to_numpy()
    return out


def run_statsforecast(grid: pd.DataFrame, spec: dict, timings: dict, save) -> pd.DataFrame:
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, Naive

    m = int(spec.get("season") or 1)
    models = {"AutoETS": lambda: AutoETS(season_length=m), "AutoTheta": lambda: AutoTheta(season_length=m)}
    if m > 1:
        models["MSTL"] = lambda: MSTL(season_length=m)
    models["AutoARIMA"] = lambda: AutoARIMA(season_length=m)  # last: by far the slowest here
    h = int(spec["h"])
    frames = []
    for name, make in models.items():
        fit_s = pred_s = 0.0
        try:
            for w, gw in grid.groupby("window", sort=True):
                if name == "AutoARIMA":  # its seasonal search is slow on long histories: the last 10 seasons
                    gw = gw.groupby("uid", sort=False).tail(10 * m if m > 1 else 520)
                sf = StatsForecast(models=[make()], freq=1, n_jobs=1, fallback_model=Naive())
                t0 = time.perf_counter()
                sf.fit(df=_grid_frame(gw))
                t1 = time.perf_counter()
                pred = sf.predict(h=h, level=sorted(set(CRPS_LEVELS + [90])))
                t2 = time.perf_counter()
                fit_s, pred_s = fit_s + t1 - t0, pred_s + t2 - t1
                pred = pred.reset_index() if "unique_id" not in pred.columns else pred
                col = [c for c in pred.columns if c not in ("unique_id", "ds") and "-" not in c][0]
                f = _bands(pred.rename(columns=lambda c, col=col, name=name: c.replace(col, name, 1)), name, True)
                f["window"], f["model"] = w, f"sf_{name}"
                frames.append(f)
                print(
                    f"statsforecast {name}: window {w} done ({fit_s + pred_s:.0f} s so far)",
                    file=sys.stderr,
                    flush=True,
                )
            timings[f"sf_{name}"] = {"fit_s": fit_s, "predict_s": pred_s, "error": ""}
        except Exception as err:  # one model failing is a row of the report, not the end of the benchmark
            timings[f"sf_{name}"] = {"fit_s": fit_s, "predict_s": pred_s, "error": f"{type(err).__name__}: {err}"[:200]}
        print(f"statsforecast {name}: {timings[f'sf_{name}']}", file=sys.stderr, flush=True)
        save(frames, timings)
    return frames


def run_neuralforecast(grid: pd.DataFrame, spec: dict, timings: dict, save) -> pd.DataFrame:
    import logging

    import torch
    from neuralforecast import NeuralForecast
    from neuralforecast.models import NBEATS, NHITS, TiDE

    torch.set_num_threads(1)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "neuralforecast"):
        logging.getLogger(name).setLevel(logging.ERROR)
    h, inp, steps = int(spec["h"]), int(spec["input_size"]), int(spec["max_steps"])
    common = dict(
        h=h,
        input_size=inp,
        max_steps=steps,
        scaler_type="robust",
        start_padding_enabled=True,
        random_seed=1,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        batch_size=32,
        windows_batch_size=256,
        val_check_steps=max(steps, 1),
    )
    models = {"NHITS": lambda: NHITS(**common), "NBEATS": lambda: NBEATS(**common), "TiDE": lambda: TiDE(**common)}
    windows = sorted(grid["window"].unique())
    frames = []
    for name, make in models.items():
        fit_s = pred_s = 0.0
        try:
            nf = NeuralForecast(models=[make()], freq=1)
            t0 = time.perf_counter()
            nf.fit(df=_grid_frame(grid[grid["window"] == windows[0]]), val_size=0)
            fit_s = time.perf_counter() - t0
            for w in windows:
                t1 = time.perf_counter()
                pred = nf.predict(df=_grid_frame(grid[grid["window"] == w]))
                pred_s += time.perf_counter() - t1
                pred = pred.reset_index() if "unique_id" not in pred.columns else pred
                f = _bands(pred, name, False)
                f["window"], f["model"] = w, f"nf_{name}"
                frames.append(f)
            timings[f"nf_{name}"] = {"fit_s": fit_s, "predict_s": pred_s, "error": ""}
        except Exception as err:
            timings[f"nf_{name}"] = {"fit_s": fit_s, "predict_s": pred_s, "error": f"{type(err).__name__}: {err}"[:200]}
        print(f"neuralforecast {name}: {timings[f'nf_{name}']}", file=sys.stderr, flush=True)
        save(frames, timings)
    return frames


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    spec = json.loads((work / "spec.json").read_text())
    grid = pd.read_csv(work / "grid.csv", dtype={"uid": str})
    os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
    warnings.filterwarnings("ignore")
    runners = {"statsforecast": run_statsforecast, "neuralforecast": run_neuralforecast}
    for family in spec["families"]:

        def save(frames, timings, family=family):  # after every model: an interrupted run keeps what finished
            out = (
                pd.concat(frames, ignore_index=True)
                if frames
                else pd.DataFrame(columns=["uid", "window", "step", "model"])
            )
            out.to_csv(work / f"forecasts_{family}.csv", index=False)
            (work / f"timings_{family}.json").write_text(json.dumps(timings, indent=1))

        (work / f"done_{family}").unlink(missing_ok=True)
        runners[family](grid, spec, {}, save)
        (work / f"done_{family}").write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

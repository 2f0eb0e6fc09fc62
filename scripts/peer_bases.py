"""Window bases side by side on a peer-benchmark data set: the ODE-RNN on each base, its correction off and as gated.

Trains ``ode_rnn`` (``--model.normalize window --model.base B``) as ``scripts/peer_benchmark.py`` trains a config
(each series' data up to its first cutoff, 20% validation, ``--epochs``) with ``--context`` horizons of context,
then scores it on the benchmark's windows (``ts_neuralode.api.backtest.evaluate``, scaled MAE = over the last
value's MAE) twice: with the correction weight the fit chose on its validation windows, and with the weight set to 0
(the base alone, as the model reads it from its context window).

    python scripts/peer_bases.py --dataset chickweight --bases trend,damped --context 1 --epochs 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_benchmark as pb  # noqa: E402

from ts_neuralode.api.forecaster import Forecaster  # noqa: E402
from ts_neuralode.api.model_choice_space import scale_duration  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="chickweight")
    p.add_argument("--bases", default="last,trend,damped")
    p.add_argument("--context", type=float, default=1.0, help="context in horizons (0: the whole history)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--cutoffs", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = pb.DATASETS[args.dataset]
    w = pb.windows(ds, args.cutoffs)
    raw, origin, aware, cuts, rows = w.raw, w.origin, w.aware, w.cuts, w.rows
    first = cuts[cuts["window"] == 0].set_index("unique_id")["cutoff"]
    t = pb.raw_time(raw, ds, origin)
    train = raw[t <= raw["unique_id"].map(first).to_numpy(float) + 1e-9]
    context = None if args.context <= 0 else scale_duration(ds.options.get("horizon"), args.context)
    opts = {"task": "forecast", "val_fraction": 0.2, "test_fraction": 0.0, "season": None, "calendar": None}
    opts.update({**ds.options, "context": context})
    print(f"| {args.dataset}, context {context} | correction weight | scaled MAE | MAE |")
    print("|---|---|---|---|")
    for base in [b for b in args.bases.split(",") if b]:
        with tempfile.TemporaryDirectory() as tmp:
            fc = Forecaster.fit(
                train,
                "ode_rnn",
                data_options=opts,
                model_options={"normalize": "window", "base": base},
                trainer={"max_epochs": args.epochs, "enable_progress_bar": False, "enable_model_summary": False},
                output_dir=Path(tmp),
                tracking=False,
                log_model=False,
                seed=0,
            )
            wm = fc.module.model
            gated = float(wm.correction_scale)
            for weight in dict.fromkeys((gated, 0.0)):  # once where the gate chose 0
                wm.set_correction_scale(weight)
                if ds.shared:
                    stamps = [pb.to_stamp(c, ds, origin, aware) for c in sorted(cuts["cutoff"].unique())]
                    cv = fc.cross_validation(raw, ds.horizon_arg, cutoffs=stamps, num_samples=20, seed=0)
                else:
                    cv = fc.cross_validation(
                        raw, ds.horizon_arg, n_windows=args.cutoffs, step=ds.step, num_samples=20, seed=0
                    )
                cols = pb.align_model(cv, fc.name, base, ds, rows, cuts, origin)
                overall, _, _ = pb.score(rows, {base: {"cols": cols}}, ds.horizon)
                r = overall.set_index("model").loc[base]
                what = "0 (the base alone)" if weight == 0 else f"{weight:g} (as gated)"
                print(f"| {base} | {what} | {r['scaled_mae']:.3g} | {r['mae']:.4g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

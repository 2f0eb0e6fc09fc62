"""Latent ODE periodic experiment (Rubanova et al. 2019): interpolation and extrapolation, ODE vs flows.

Data: ``periodic`` (100 times shared by all series, t0 = 0 plus 99 sorted U(0, 5); frequency U(0.4, 0.8),
offset 1 + N(0, 0.1), noise 0.01·U[0, 1)), original units (no scaler) and time in the data's own units
(time_scale 1), as the reference code. Protocol as its ``-n 1000 -s 50 -l 10`` run: half of the points
observed, latent dimension 10, batch 50, learning rate 1e-2 (Adam here, Adamax there), IWAE 3 samples,
KL annealing after 10 epochs.

* interpolation: trained and scored on the interpolation task (condition on 50% of the points; MSE on the
  held-out ones);
* extrapolation: trained and scored on the extrapolation task (condition on 50% of the points of the first
  half of the time span; MSE on the second half).

Both runs go through :func:`ts_neuralode.benchmark.run_benchmark` (same data, seed and budget per model).

    python scripts/repro_latent_ode_periodic.py                       # 500 series, 5 epochs (CPU, minutes)
    python scripts/repro_latent_ode_periodic.py --full --device cuda  # 1000 series, 20 epochs (REFERENCE's runs)

Writes results/repro_latent_ode_periodic.md.
"""

from __future__ import annotations

import math
import sys

from ts_neuralode.benchmark import BenchmarkConfig, run_benchmark, script_command, script_parser, write_report

DEFAULT_MODELS = ("latent_ode_dopri5", "latent_resnet_flow", "latent_gru_flow", "latent_coupling_flow", "ode_rnn")
# Latent ODE reference code, periodic set, 20 epochs, REFERENCE.md: (task, model) -> (s per epoch, test MSE)
REFERENCE = {("interpolation", "latent_ode_dopri5"): (4.5, 0.188), ("extrapolation", "latent_ode_dopri5"): (2.5, 0.49),
             ("interpolation", "ode_rnn"): (3.6, 0.041)}


def _f(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3g}" if abs(v) < 1e-3 else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = script_parser(__doc__, "results/repro_latent_ode_periodic.md")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--tasks", default="interpolation,extrapolation")
    args = p.parse_args(argv)
    epochs = args.epochs or (20 if args.full else 5)
    n_series = args.n_series or (1000 if args.full else 500)
    models = tuple(m for m in args.models.split(",") if m)
    rows = []
    for task in [t for t in args.tasks.split(",") if t]:
        cfg = BenchmarkConfig(
            dataset="periodic", n_series=n_series, n_points=100, models=models, task=task, obs_fraction=0.5,
            extrap_obs_fraction=0.5, cut=0.5, layout="union", scaler="none", time_scale=1.0, epochs=epochs,
            batch_size=50, seed=args.seed, model_options={"latent_dim": 10, "lr": 1e-2}, device=args.device,
            threads=args.threads,
        )
        res = run_benchmark(cfg, progress=True)
        key = "interp_mse" if task == "interpolation" else "extrap_mse"
        base = res.table.set_index("model")["epoch_time_s"].get("latent_ode_dopri5", math.nan)
        for _, r in res.table.iterrows():
            ref = REFERENCE.get((task, r["model"]), (math.nan, math.nan))
            rows.append(f"| {task} | {r['model']} | {int(r['params']):,} | {_f(r['epoch_time_s'], 3)} | "
                        f"{_f(base / r['epoch_time_s'], 2)} | {_f(r['infer_nfe'], 1)} | {_f(r[key])} | "
                        f"{_f(ref[0], 1)} | {_f(ref[1], 3)} | {r['error'] or ''} |")
        desc = res.description
    table = "\n".join([
        "| task | model | params | epoch s (median) | speed-up vs latent ODE dopri5 | NFE/forward infer | test MSE | "
        "ref epoch s (20 ep) | ref test MSE (20 ep) | error |", "|" + "---|" * 10, *rows])
    notes = (
        f"Last run's settings: {desc}\n\n"
        "Reference columns: the Latent ODE reference code on this kind of machine (REFERENCE.md: 1000 series, 20 "
        "epochs, 2 threads, Adamax). Unless this run used `--full`, it trained on fewer series for fewer epochs "
        "than the reference, so its MSE is not yet comparable with the reference's 20-epoch MSE; the epoch "
        "times scale with the number of training series (reference: 600 per epoch). The machine is shared: "
        "compare models within the table."
    )
    path = write_report(args.out, "Latent ODE periodic: interpolation and extrapolation",
                        script_command("scripts/repro_latent_ode_periodic.py", argv), [notes, table])
    print(table)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

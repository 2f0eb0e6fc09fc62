"""GRU-ODE-Bayes vs GRU flow on the double Ornstein–Uhlenbeck set (De Brouwer et al. 2019; Biloš et al. 2021).

Data: ``double_ou`` (two OU channels with noise correlation 0.99, horizon 10, dt 0.05, ~2 observations per
unit time, 20% of them joint, the rest one channel), original units. Models: ``gru_ode`` (continuous GRU
field, dopri5) and ``gru_flow`` (its GRU-flow counterpart): the one-option switch of
:class:`~ts_neuralode.models.GRUODE`. Trained on ``--task`` (default extrapolation: condition on the first
half of each series, forecast the second) and scored on both test tasks, through
:func:`ts_neuralode.api.benchmark.run_benchmark`.

    python scripts/repro_gru_ode_double_ou.py                        # 1000 series, 5 epochs (CPU, minutes)
    python scripts/repro_gru_ode_double_ou.py --full --device cuda   # 10,000 series (the paper's), 50 epochs

Writes results/repro_gru_ode_double_ou.md.
"""

from __future__ import annotations

import sys

from ts_neuralode.api.benchmark import BenchmarkConfig, markdown_table, publish_report, run_benchmark, script_parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = script_parser(__doc__, "results/repro_gru_ode_double_ou.md")
    p.add_argument("--models", default="gru_ode,gru_flow")
    p.add_argument("--task", default="extrapolation", choices=("interpolation", "extrapolation"))
    args = p.parse_args(argv)
    cfg = BenchmarkConfig(
        dataset="double_ou",
        n_series=args.n_series or (10_000 if args.full else 1000),
        models=tuple(m for m in args.models.split(",") if m),
        task=args.task,
        obs_fraction=0.5,
        cut=0.5,
        scaler="none",
        time_scale=1.0,
        epochs=args.epochs or (50 if args.full else 5),
        batch_size=50,
        seed=args.seed,
        model_options={"latent_dim": 32, "hidden_dim": 64, "lr": 1e-3},
        device=args.device,
        threads=args.threads,
    )
    res = run_benchmark(cfg, progress=True)
    t = res.table.set_index("model")
    lines = []
    if {"gru_ode", "gru_flow"} <= set(t.index):
        ratio = t.loc["gru_flow", "epoch_time_s"] / t.loc["gru_ode", "epoch_time_s"]
        lines.append(
            f"GRU flow / GRU-ODE training epoch time: {ratio:.2f} (GRU flow needs {abs(1 - ratio):.0%} "
            f"{'less' if ratio < 1 else 'more'} time). "
            f"Extrapolation MSE GRU flow {t.loc['gru_flow', 'extrap_mse']:.4f} vs GRU-ODE "
            f"{t.loc['gru_ode', 'extrap_mse']:.4f}; interpolation {t.loc['gru_flow', 'interp_mse']:.4f} vs "
            f"{t.loc['gru_ode', 'interp_mse']:.4f}."
        )
    ref = (
        "Paper figures (REFERENCE.md): the GRU-ODE-Bayes paper reports no double-OU MSE table that REFERENCE.md "
        'records; the Neural Flows authors report GRU flow "60% less time per training epoch" than GRU-ODE '
        "(MIMIC) and flow/ODE epoch-time ratios 0.41 and 0.36 in their filtering experiments. Those are the "
        "figures to hold the ratio above against; our MSE has no paper counterpart here. MSE in data units."
    )
    return publish_report(
        args.out,
        "GRU-ODE vs GRU flow on double OU",
        "scripts/repro_gru_ode_double_ou.py",
        argv,
        [res.description, markdown_table(res.table), *lines, ref],
        "\n".join([markdown_table(res.table), *lines]),
    )


if __name__ == "__main__":
    sys.exit(main())

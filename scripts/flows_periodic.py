"""Latent flows on the Latent ODE periodic set: an ablation of the flow options, the latent ODE beside it.

Two measurements, both on the periodic family ``y = o + sin(2π f t)`` (f ~ U(0.4, 0.8) per series, t in [0, 5]):

* ``benchmark`` — the protocol of ``scripts/repro_latent_ode_periodic.py`` (interpolation: condition on 50% of
  the points, MSE on the held-out ones; 1000 series, 600 for training, latent dimension 10, batch 50, lr 1e-2
  cosine-annealed, 20 epochs, union layout, data units) for each latent flow under each variant of its
  evolution options, plus the latent ODE (dopri5) and the naive baselines (last value, series mean, linear
  interpolation) scored by the same code.
* ``probe`` — can the flow *represent* the family at all? A flow ``F(t, z0)`` and a linear decoder fitted
  directly, with ``z0`` a linear map of the series' true (frequency, offset) (no encoder, no posterior):
  256 series × 50 times, 400 Adam steps (lr 1e-2, cosine), MSE on all points. This separates the flow's
  capacity from the latent model's training. ``--probe_steps 240`` runs it at the benchmark's own budget
  (600 training series / batch 50 × 20 epochs = 240 optimizer steps): can the flow learn the family, given the
  true frequency, in as many steps as the latent model gets?

A variant is a set of :class:`~ts_neuralode.models.evolution_config.EvolutionConfig` options on top of the
package defaults (``default`` = none).

    python scripts/flows_periodic.py --quick                 # 300 series, 5 epochs, one variant (minutes; *_quick.md)
    python scripts/flows_periodic.py                         # the ablation at 20 epochs (CPU, ~1 h on 1 thread)

Writes results/flows_periodic.md (and results/flows_periodic.csv, one row per run, appended as they finish).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ts_neuralode.api.benchmark import BenchmarkConfig, publish_report, run_benchmark, script_parser
from ts_neuralode.models.evolution import make_evolution
from ts_neuralode.models.evolution_config import EvolutionConfig

#: variant name -> EvolutionConfig options on top of the package defaults
VARIANTS = {
    "default": {},
    "fourier_bounded": {"time_embedding": "fourier_bounded"},
    "features 32": {"time_embedding_features": 32},
    "flow_layers 4": {"flow_layers": 4},
    "time_input 8": {"time_input_features": 8},
    "rotation 2": {"rotation_pairs": 2},
    "rotation 3": {"rotation_pairs": 3},
    "rotation 4": {"rotation_pairs": 4},
    "rotation 3 tanh-time": {"rotation_pairs": 3, "time_embedding": "tanh"},
    "rotation 3 one-layer": {"rotation_pairs": 3, "flow_layers": 1},
}
KINDS = ("resnet_flow", "gru_flow", "coupling_flow")


def probe(kind: str, options: dict, steps: int = 400, seed: int = 0) -> float:
    """MSE of ``decoder(F(t, z0))`` fitted to ``o + sin(2π f t)`` with ``z0 = A·[f, o] + b`` (see the docstring)."""
    torch.manual_seed(seed)
    S, T, L = 256, 50, 10
    f = torch.rand(S) * 0.4 + 0.4
    o = 1 + 0.1 * torch.randn(S)
    t = torch.linspace(0, 5, T)
    y = o[:, None] + torch.sin(2 * math.pi * f[:, None] * t)
    x = torch.stack([(f - 0.6) / 0.1, (o - 1) / 0.1], -1)
    if kind == "ode":  # the latent ODE's decoder, for comparison (the benchmark's latent_ode_dopri5)
        options = {"method": "dopri5", **options}
    enc, evo, dec = nn.Linear(2, L), make_evolution(kind, L, **options), nn.Linear(L, 1)
    params = [*enc.parameters(), *evo.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, S, (50,), generator=gen)
        loss = ((dec(evo(enc(x[idx]), t)).squeeze(-1) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    evo.eval()
    with torch.no_grad():
        return float(((dec(evo(enc(x), t)).squeeze(-1) - y) ** 2).mean())


def benchmark(
    models: tuple[str, ...], options: dict, n_series: int, epochs: int, seed: int, threads: int, baselines: bool
):
    """One run of the periodic interpolation protocol; the result table indexed by model."""
    overrides = {m: {"evolution": dict(options)} for m in models if options}
    cfg = BenchmarkConfig(
        dataset="periodic",
        n_series=n_series,
        n_points=100,
        models=models,
        task="interpolation",
        obs_fraction=0.5,
        extrap_obs_fraction=0.5,
        cut=0.5,
        layout="union",
        scaler="none",
        time_scale=1.0,
        epochs=epochs,
        batch_size=50,
        seed=0,
        train_seed=seed,
        threads=threads,
        latency_reps=1,
        baselines=None if baselines else (),
        model_overrides=overrides,
        model_options={"latent_dim": 10, "lr": 1e-2, "lr_schedule": "cosine"},
    )
    result = run_benchmark(cfg, progress=False)
    return result.table.set_index("model"), result.description


def _f(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3g}" if abs(v) < 1e-3 else f"{v:.4f}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = script_parser(__doc__, "results/flows_periodic.md")
    p.add_argument("--quick", action="store_true", help="300 series, 5 epochs, the default variant only")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: probe, benchmark, ode")
    p.add_argument(
        "--probe_steps",
        type=int,
        default=400,
        help="Adam steps of the probe (400; 240 = the benchmark's budget, rows part 'probe240')",
    )
    p.add_argument("--render_only", action="store_true", help="only write the page from the CSV of earlier runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (5 if args.quick else 20)
    n_series = args.n_series or (300 if args.quick else 1000)
    variants = args.variants.split(",") if args.variants else (["default"] if args.quick else list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    seeds = [int(s) for s in args.seeds.split(",")]
    skip = set(args.skip.split(",")) | ({"probe", "benchmark"} if args.render_only else set())
    if args.quick and args.out == "results/flows_periodic.md":  # never mix quick rows into the 20-epoch table
        args.out = "results/flows_periodic_quick.md"
    csv = Path(args.out).with_suffix(".csv")  # rows are appended: one CSV per protocol (epochs, series)
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.exists(), index=False)
        print(json.dumps(row), file=sys.stderr, flush=True)

    desc = ""
    if "benchmark" not in skip:
        if "ode" not in skip:
            for seed in seeds:
                table, desc = benchmark(("latent_ode_dopri5",), {}, n_series, epochs, seed, args.threads, True)
                for name in table.index:
                    record(
                        {
                            "part": "benchmark",
                            "variant": "—",
                            "model": name,
                            "seed": seed,
                            "interp_mse": float(table.loc[name, "interp_mse"]),
                            "epoch_s": float(table.loc[name, "epoch_time_s"]),
                            "setting": desc,
                        }
                    )
        for variant in variants:
            for kind in kinds:
                for seed in seeds:
                    table, desc = benchmark(
                        (f"latent_{kind}",), VARIANTS[variant], n_series, epochs, seed, args.threads, False
                    )
                    record(
                        {
                            "part": "benchmark",
                            "variant": variant,
                            "model": f"latent_{kind}",
                            "seed": seed,
                            "interp_mse": float(table.iloc[0]["interp_mse"]),
                            "epoch_s": float(table.iloc[0]["epoch_time_s"]),
                            "setting": desc,
                        }
                    )
    if "probe" not in skip:
        for variant in variants:
            for kind in kinds:
                t0 = time.perf_counter()
                mse = probe(kind, VARIANTS[variant], steps=args.probe_steps)
                part = "probe" if args.probe_steps == 400 else f"probe{args.probe_steps}"
                record(
                    {
                        "part": part,
                        "variant": variant,
                        "model": kind,
                        "seed": 0,
                        "interp_mse": mse,
                        "epoch_s": time.perf_counter() - t0,
                    }
                )
    return report(args, argv, csv, desc, variants, kinds)


def report(args, argv, csv: Path, desc, variants, kinds) -> int:
    """The page from every row of ``csv`` (runs may be split over several invocations, e.g. one per kind)."""
    df = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["part", "variant", "model", "seed", "interp_mse"])
    if not desc and "setting" in df and df["setting"].notna().any():
        desc = str(df["setting"].dropna().iloc[-1])
    d = EvolutionConfig()
    defaults = (
        f"Package defaults of the flow options (EvolutionConfig): time_embedding {d.time_embedding!r}, "
        f"time_embedding_features {d.time_embedding_features}, time_input_features {d.time_input_features}, "
        f"rotation_pairs {d.rotation_pairs}, "
        f"flow_layers {d.flow_layers}, num_layers "
        f"{d.num_layers}, coeff {d.coeff}; hidden_dim 64 (the model's)."
    )
    sections = [defaults]
    shown = ""
    bench = df[df["part"] == "benchmark"] if len(df) else df
    if len(bench):
        med = bench.groupby(["variant", "model"])["interp_mse"].agg(["median", "min", "max", "count"])
        cell = lambda r: _f(r["median"]) if r["count"] == 1 else f"{_f(r['median'])} ({_f(r['min'])}–{_f(r['max'])})"  # noqa: E731
        ref = {m: cell(med.loc[("—", m)]) for v, m in med.index if v == "—"}
        ode = ref.get("latent_ode_dopri5", "—")
        lines = [
            "| variant | " + " | ".join(f"latent_{k}" for k in kinds) + " | latent ODE (dopri5) |",
            "|---|" + "---|" * (len(kinds) + 1),
        ]
        for v in variants:
            vals = [cell(med.loc[(v, f"latent_{k}")]) if (v, f"latent_{k}") in med.index else "—" for k in kinds]
            lines.append(
                f"| {v} {json.dumps(VARIANTS[v]) if VARIANTS[v] else ''} | " + " | ".join(vals) + f" | {ode} |"
            )
        base = ", ".join(f"{m} {ref[m]}" for m in ("locf", "mean", "linear") if m in ref)
        shown = "\n".join(lines)
        sections += [
            f"**Benchmark: interpolation test MSE at {args.epochs or (5 if args.quick else 20)} epochs** "
            f"(median (range) over the training seeds run). {desc} Naive baselines, same points: "
            f"{base}.",
            shown,
        ]
    parts = (
        sorted({p for p in df["part"].unique() if str(p).startswith("probe")}, key=lambda p: (p != "probe", p))
        if len(df)
        else []
    )
    for part in parts:
        probe_rows = df[df["part"] == part]
        cols = [*kinds, *(["ode"] if "ode" not in kinds and (probe_rows.model == "ode").any() else [])]
        steps = 400 if part == "probe" else int(part[len("probe") :])
        lines = [
            "| variant | " + " | ".join("latent ODE's decoder (dopri5)" if k == "ode" else k for k in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for v in variants:
            sel = {k: probe_rows[(probe_rows.variant == v) & (probe_rows.model == k)] for k in cols}
            if not any(len(r) for r in sel.values()):
                continue
            vals = [_f(float(r["interp_mse"].iloc[0])) if len(r) else "—" for r in sel.values()]
            lines.append(f"| {v} | " + " | ".join(vals) + " |")
        sections += [
            f"**Probe: MSE of the flow fitted directly with z0 from the true (frequency, offset), {steps} "
            f"Adam "
            "steps** (no encoder; variance of the sine part 0.5)"
            + (" — the benchmark's own budget of optimizer steps." if steps == 240 else "."),
            "\n".join(lines),
        ]
        shown = shown + "\n\n" + "\n".join(lines)
    sections.append(f"Device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s).")
    return publish_report(
        args.out,
        "Latent flows on the periodic set: what makes them learn each series' frequency",
        "scripts/flows_periodic.py",
        argv,
        sections,
        shown,
    )


if __name__ == "__main__":
    sys.exit(main())

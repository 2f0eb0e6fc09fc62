#!/usr/bin/env python
"""Speed of the recurrent models, the solver forward and the flows, and peak memory per training step (issue 15).

Every timing is a ratio measured side by side in ONE process: the contenders' training steps are interleaved
(A B A B ...), repeated, and the median taken, with one torch thread — the machine is shared, so absolute
seconds are not comparable between runs, ratios are.

Sections (``--sections``, default all):

* ``rnn``: ODE-RNN on the Latent ODE reference's periodic protocol (``run_models.py -n N -s 50 -l 10
  --dataset periodic --ode-rnn``: 100 times in [0, 5], 50 observed per series, latent 10, batch 50) against
  the reference code's own ODE-RNN (its Euler encoder: one step per interval shorter than span/50, Adamax,
  3 samples), imported from ``--latent-ode-ref`` (a checkout of YuliaRubanova/latent_ode; read, never
  copied). Ours: the default dopri5 field, and the reference's solver (Euler, step 0.1 = span/50). Both train
  ``--epochs`` epochs on batches of 50; s/epoch = median training step × the reference's batches per epoch;
  test MSE after training, each code scoring its own test split (ours: held-out points).
* ``carry``: ODE-RNN, GRU-ODE, flow-RNN, GRU flow with the step carried across observation intervals and
  without (the pass's ``StepCarry`` replaced by None), interleaved in one process.
* ``solver``: dopri5 forward vs torchdiffeq and torchode on workload W (scripts/bench_solvers.py's problem) at
  batch 32 / 256 / 2048, equal evaluations, and the share of the forward inside the vector field.
* ``flows``: coupling and ResNet flows against the Neural Flows reference's own (``--nfe-ref``, a checkout of
  mbilos/neural-flows-experiments, with ``stribor`` from ``--nfe-site``; read, never copied) on sine and sink,
  its settings, training steps interleaved.
* ``latent``: latent coupling / ResNet / GRU flows vs the latent ODE (dopri5) over a whole training run on sine:
  per-epoch seconds, NFE and test MSE, and the training time to the latent ODE's best test MSE.
* ``memory``: peak of torch's CPU allocations during one training step per model (torch.profiler's memory
  events), and the latent ODE with autograd vs the adjoint (backsolve, interpolate) at rtol 1e-3 and 1e-7
  (flat memory in the number of steps).

    python scripts/speed.py --epochs 5 --latent-epochs 30   # everything (CPU, ~10 min)
    python scripts/speed.py --sections rnn --epochs 3 --n_series 300
    python scripts/speed.py --sections solver --update   # rerun one section, keep the others in the file

Writes results/speed.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # bench_solvers' workload

from ts_neuralode.api.benchmark import publish_report  # noqa: E402

SECTIONS = ("rnn", "carry", "interval", "solver", "flows", "latent", "memory")


def _head(title: str, intro: str, header: str) -> list[str]:
    """A results section's first lines: its heading, a paragraph, and a markdown table's header and rule."""
    return [title, "", intro, "", header, "|" + "---|" * (header.count("|") - 1)]


# ------------------------------------------------------------------------------------------------ rnn
def _ref_odernn(ref_dir: str, n_series: int, seed: int):
    """The reference code's ODE-RNN, data and training step, built as its run_models.py does for --ode-rnn."""
    import numpy as np
    from torch import nn

    sys.path.insert(0, ref_dir)
    import lib.utils as rutils
    from lib.diffeq_solver import DiffeqSolver
    from lib.ode_func import ODEFunc
    from lib.ode_rnn import ODE_RNN
    from lib.parse_datasets import parse_datasets

    args = argparse.Namespace(
        n=n_series,
        lr=1e-2,
        batch_size=50,
        dataset="periodic",
        sample_tp=50,
        cut_tp=None,
        quantization=0.1,
        latents=10,
        rec_layers=1,
        units=100,
        gru_units=100,
        extrap=False,
        timepoints=100,
        max_t=5.0,
        noise_weight=0.01,
        classif=False,
        poisson=False,
    )
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = torch.device("cpu")
    data = parse_datasets(args, dev)
    net = rutils.create_net(10, 10, n_layers=1, n_units=100, nonlinear=nn.Tanh)
    func = ODEFunc(input_dim=1, latent_dim=10, ode_func_net=net, device=dev)
    solver = DiffeqSolver(1, func, "euler", 10, odeint_rtol=1e-3, odeint_atol=1e-4, device=dev)
    model = ODE_RNN(
        1,
        10,
        device=dev,
        z0_diffeq_solver=solver,
        n_gru_units=100,
        concat_mask=True,
        obsrv_std=torch.Tensor([0.01]),
        use_binary_classif=False,
        classif_per_tp=False,
        n_labels=1,
        train_classif_w_reconstr=False,
    )
    opt = torch.optim.Adamax(model.parameters(), lr=args.lr)

    def step():
        opt.zero_grad()
        rutils.update_learning_rate(opt, decay_rate=0.999, lowest=args.lr / 10)
        res = model.compute_all_losses(rutils.get_next_batch(data["train_dataloader"]), n_traj_samples=3, kl_coef=0.0)
        res["loss"].backward()
        opt.step()

    def test_mse():
        with torch.no_grad():
            res = rutils.compute_loss_all_batches(
                model,
                data["test_dataloader"],
                args,
                n_batches=data["n_test_batches"],
                experimentID=0,
                device=dev,
                n_traj_samples=3,
                kl_coef=0.0,
            )
        return float(res["mse"])

    return step, test_mse, data["n_train_batches"]


PERIODIC = dict(
    dataset="periodic",
    n_points=100,
    layout="union",
    scaler="none",
    time_scale=1.0,
    model_options={"latent_dim": 10, "lr": 1e-2},
)


def _our_model(n_series: int, seed: int, overrides: dict, name: str = "ode_rnn", data: dict = PERIODIC):
    """One of our benchmark models on the reference's protocol: its training step (Adam, gradient clip 1.0), test
    MSE on held-out points and the NFE of each step."""
    from ts_neuralode.api.benchmark.config import BenchmarkConfig
    from ts_neuralode.api.benchmark.runner import load_frame, make_datamodules, module_options
    from ts_neuralode.training import ForecastingModule

    cfg = BenchmarkConfig(
        n_series=n_series,
        models=(name,),
        task="interpolation",
        obs_fraction=0.5,
        batch_size=50,
        seed=seed,
        model_overrides={name: overrides},
        **data,
    )
    dm = make_datamodules(cfg, load_frame(cfg), cfg.layout)["interpolation"]
    torch.manual_seed(seed)
    model = ForecastingModule(**module_options(cfg, name, dm.num_channels)).model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = {"it": iter(())}
    nfe = []

    def step():
        batch = next(state["it"], None)
        if batch is None:
            state["it"] = iter(dm.train_dataloader())
            batch = next(state["it"])
        opt.zero_grad()
        loss, _ = model.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        nfe.append(model.last_nfe)

    def test_mse():
        num = den = 0.0
        with torch.no_grad():
            for batch in dm.test_dataloader():
                mean = model.predict(batch).mean
                mask = batch.held_out_mask * (batch.times_per_sample() <= batch.cutoff.unsqueeze(1)).unsqueeze(-1)
                num += float(((mean - batch.values) ** 2 * mask).sum())
                den += float(mask.sum())
        return num / max(den, 1.0)

    return step, test_mse, nfe


def section_rnn(args) -> str:
    ref = Path(args.latent_ode_ref)
    if not (ref / "lib" / "ode_rnn.py").is_file():
        return (
            f"## ODE-RNN vs the Latent ODE reference\n\nNot run: no reference checkout at {ref} "
            "(pass --latent-ode-ref PATH to a clone of YuliaRubanova/latent_ode).\n"
        )
    n_series, epochs = args.n_series, args.epochs
    ref_step, ref_mse, ref_batches = _ref_odernn(str(ref), n_series, args.seed)
    contenders = {"reference ODE-RNN (Euler, its code)": (ref_step, ref_mse, None)}
    for label, over in (
        ("ours, dopri5 (default)", {}),
        ("ours, Euler step 0.1 (the reference's solver)", {"method": "euler", "step_size": 0.1}),
    ):
        step, mse, nfe = _our_model(n_series, args.seed, over)
        contenders[label] = (step, mse, nfe)
    times = {k: [] for k in contenders}
    curves = {k: [] for k in contenders}  # test MSE after each epoch (scored outside the timed steps)
    for _ in range(epochs):
        for _ in range(ref_batches):
            for k, (step, _, _) in contenders.items():  # interleaved: A B C A B C ...
                t0 = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t0)
        for k, (_, mse, _) in contenders.items():
            curves[k].append(mse())
    ref_key = next(iter(contenders))
    base = statistics.median(times[ref_key])
    target = curves[ref_key][-1]
    lines = _head(
        "## ODE-RNN vs the Latent ODE reference (periodic, its protocol)",
        f"{n_series} series (the reference trains on 80%: {ref_batches} batches of 50 per epoch), 100 times in "
        f"[0, 5], 50 observed per series, latent 10; {epochs} epoch(s) each, training steps interleaved in one "
        "process, 1 thread. s/epoch = median step × the reference's batches per epoch. Test MSE after each epoch: "
        "each code's own test split and metric (the reference's: its reconstruction MSE; ours: held-out points). "
        f"Time to the reference's final MSE ({target:.4f}): s/epoch × the first epoch at or below it.",
        "| model | median step (ms) | s/epoch | speed-up vs reference | NFE/forward | test MSE by epoch | "
        "time to reference's final MSE (s) | speed-up to that MSE |",
    )
    ref_time = base * ref_batches * epochs
    for k, (_, _, nfe) in contenders.items():
        med = statistics.median(times[k])
        n = f"{statistics.mean(nfe[-ref_batches:]):.0f}" if nfe else "(Euler, ~1 per interval)"
        first = next((i + 1 for i, v in enumerate(curves[k]) if v <= target), None)
        reach = "not reached" if first is None else f"{med * ref_batches * first:.2f}"
        gain = "—" if first is None else f"{ref_time / (med * ref_batches * first):.2f}×"
        lines.append(
            f"| {k} | {1e3 * med:.1f} | {med * ref_batches:.2f} | {base / med:.2f}× | {n} | "
            f"{', '.join(f'{v:.4f}' for v in curves[k])} | {reach} | {gain} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- solver
def section_solver(args) -> str:
    """dopri5 forward (no grad) vs torchdiffeq and torchode on workload W, and the share inside the field."""
    import bench_solvers as bs

    lines = _head(
        "## Solver forward: dopri5 vs torchdiffeq and torchode (workload W, scripts/bench_solvers.py's problem)",
        f"State 16, MLP 16→64→64→16 tanh, 50 irregular output times in [0, 5], rtol {bs.RTOL} / atol {bs.ATOL}, "
        f"no gradient; {args.reps} repetitions interleaved in a new order each time, median; 1 thread. Share in the "
        "field: time inside the vector field's forward / the whole solve (median of 5 timed solves). Field alone: "
        "the same number of evaluations of the field on a [batch, 16] state, timed in the same interleaving — the "
        "time of a solver whose only cost is the field; bound = a rival's time / field alone, the largest speed-up "
        "any solver can have over it at equal evaluations.",
        "| batch | ours (ms) | torchdiffeq (ms) | torchode (ms) | torchdiffeq / ours | torchode / ours | evaluations "
        "per sample ours / torchdiffeq / torchode | share in the field ours / torchdiffeq / torchode | field alone "
        "(ms) | bound vs torchdiffeq / torchode |",
    )
    names = ("fwd/ours", "fwd/td", "fwd/tode")
    for B in args.batches:
        f, y0, t, w = bs.make_problem(B, "cpu")
        v = bs.variants(f, y0, t, w)
        nfe = {}
        for k in names:
            f.calls = 0
            v[k]()  # warm-up (and the evaluation count: batched calls count once per sample)
            nfe[k] = f.calls
        ys_field = torch.randn(B, bs.STATE)

        def field_alone(n=nfe["fwd/ours"], f=f, ys_field=ys_field):
            with torch.no_grad():
                for _ in range(n):
                    f(None, ys_field)

        v["field"] = field_alone
        names_t = names + ("field",)
        times = {k: [] for k in names_t}
        order = list(names_t)
        for _ in range(args.reps):
            order = order[1:] + order[:1]  # rotate: no contender always runs first
            for k in order:
                t0 = time.perf_counter()
                v[k]()
                times[k].append(time.perf_counter() - t0)
        share = {}
        f.timed = True
        for k in names:
            vals = []
            for _ in range(5):
                f.time_in = 0.0
                t0 = time.perf_counter()
                v[k]()
                vals.append(f.time_in / (time.perf_counter() - t0))
            share[k] = statistics.median(vals)
        f.timed = False
        med = {k: statistics.median(times[k]) for k in names_t}
        o, fa = med["fwd/ours"], med["field"]
        lines.append(
            f"| {B} | {1e3 * o:.2f} | {1e3 * med['fwd/td']:.2f} | {1e3 * med['fwd/tode']:.2f} | "
            f"{med['fwd/td'] / o:.2f}× | {med['fwd/tode'] / o:.2f}× | "
            f"{' / '.join(str(nfe[k]) for k in names)} | {' / '.join(f'{share[k]:.0%}' for k in names)} | "
            f"{1e3 * fa:.2f} | {med['fwd/td'] / fa:.2f}× / {med['fwd/tode'] / fa:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def section_interval(args) -> str:
    """Recurrent intervals: the two-point path against the general loop, torchdiffeq and torchode (issue 24)."""
    import contextlib

    import bench_solvers as bs

    from ts_neuralode.solvers.odeint import odeint

    mod = sys.modules[odeint.__module__]

    @contextlib.contextmanager
    def general_path():
        mod.TWO_POINT_PATH = False
        try:
            yield
        finally:
            mod.TWO_POINT_PATH = True

    lines = _head(
        "## Recurrent intervals: the two-point path (issue 24)",
        "Workload R: W's field and batch of states (state 16, MLP 16→64→64→16 tanh, rtol "
        f"{bs.RTOL} / atol {bs.ATOL}) solved from each of W's 50 output times to the next as a recurrent model "
        "does — 49 solves of one interval each, the state carried over (no update between, to compare solvers "
        "alone), no gradient. Ours: each interval starts from the step the previous one ended with (first_step = "
        "next_dt, check_inputs=False, as ODEEvolution with a StepCarry); 'general loop': the same calls with the "
        "two-point path switched off (odeint.TWO_POINT_PATH = False: the adaptive loop with its output grid, as "
        "before); torchdiffeq / torchode: one solve per interval from scratch (neither carries a step). "
        f"{args.reps} repetitions interleaved in a new order each time, median; 1 thread. Share in the field and "
        "field alone as in the solver section.",
        "| batch | ours (ms) | general loop (ms) | torchdiffeq (ms) | torchode (ms) | general / ours | torchdiffeq / "
        "ours | torchode / ours | evaluations per sample ours / torchdiffeq / torchode | share in the field ours / "
        "general | field alone (ms) |",
    )
    import torchdiffeq
    import torchode as to

    for B in args.batches:
        f, y0, t, _ = bs.make_problem(B, "cpu")
        term = to.ODETerm(f)
        tode = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=bs.ATOL, rtol=bs.RTOL, term=term))
        sf = bs.Scalar(f)

        def ours(f=f, y0=y0, t=t):
            with torch.no_grad():
                h, dt = y0, None
                for i in range(t.shape[0] - 1):
                    sol = odeint(
                        f,
                        h,
                        t[i : i + 2],
                        method="dopri5",
                        rtol=bs.RTOL,
                        atol=bs.ATOL,
                        first_step=dt,
                        check_inputs=False,
                    )
                    h, dt = sol.ys[:, -1], sol.stats.next_dt
            return h

        def general():
            with general_path():
                return ours()

        def td(sf=sf, y0=y0, t=t):
            with torch.no_grad():
                h = y0
                for i in range(t.shape[0] - 1):
                    h = torchdiffeq.odeint(sf, h, t[i : i + 2], method="dopri5", rtol=bs.RTOL, atol=bs.ATOL)[-1]
            return h

        def tde(tode=tode, y0=y0, t=t, B=B):
            with torch.no_grad():
                h = y0
                for i in range(t.shape[0] - 1):
                    h = tode.solve(to.InitialValueProblem(y0=h, t_eval=t[i : i + 2].expand(B, 2))).ys[:, -1]
            return h

        v = {"ours": ours, "general": general, "td": td, "tode": tde}
        nfe = {}
        for k, fn in v.items():
            f.calls = 0
            fn()
            nfe[k] = f.calls
        torch.testing.assert_close(ours(), general(), rtol=0, atol=0)  # the same arithmetic, bit for bit
        ys_field = torch.randn(B, bs.STATE)

        def field_alone(n=nfe["ours"], f=f, ys_field=ys_field):
            with torch.no_grad():
                for _ in range(n):
                    f(None, ys_field)

        v["field"] = field_alone
        times = {k: [] for k in v}
        order = list(v)
        for _ in range(args.reps):
            order = order[1:] + order[:1]
            for k in order:
                t0 = time.perf_counter()
                v[k]()
                times[k].append(time.perf_counter() - t0)
        share = {}
        f.timed = True
        for k in ("ours", "general"):
            vals = []
            for _ in range(5):
                f.time_in = 0.0
                t0 = time.perf_counter()
                v[k]()
                vals.append(f.time_in / (time.perf_counter() - t0))
            share[k] = statistics.median(vals)
        f.timed = False
        med = {k: statistics.median(x) for k, x in times.items()}
        o = med["ours"]
        lines.append(
            f"| {B} | {1e3 * o:.2f} | {1e3 * med['general']:.2f} | {1e3 * med['td']:.2f} | "
            f"{1e3 * med['tode']:.2f} | {med['general'] / o:.2f}× | {med['td'] / o:.2f}× | "
            f"{med['tode'] / o:.2f}× | {nfe['ours']} / {nfe['td']} / {nfe['tode']} | "
            f"{share['ours']:.0%} / {share['general']:.0%} | {1e3 * med['field']:.2f} |"
        )
        print(lines[-1], flush=True)

    lines += [
        "",
        "Recurrent models, training step (loss + backward + Adam) with the two-point path on and off, "
        f"periodic protocol (batch 50, 100 times, latent 10, dopri5), interleaved, {args.carry_steps} each, "
        "median:",
        "",
        "| model | step ms, two-point path | step ms, general loop | speed-up | NFE/forward |",
        "|---|---|---|---|---|",
    ]
    for name in ("ode_rnn", "gru_ode", "latent_ode_dopri5_enc"):
        step, _, nfe = _our_model(200, args.seed, {}, name)
        tms = {"on": [], "off": []}
        step()
        for _ in range(args.carry_steps):
            for key in ("on", "off"):
                ctx = contextlib.nullcontext() if key == "on" else general_path()
                with ctx:
                    t0 = time.perf_counter()
                    step()
                    tms[key].append(time.perf_counter() - t0)
        a, b = statistics.median(tms["on"]), statistics.median(tms["off"])
        label = name if name != "latent_ode_dopri5_enc" else "latent ODE, dopri5 encoder"
        lines.append(f"| {label} | {1e3 * a:.1f} | {1e3 * b:.1f} | {b / a:.2f}× | {nfe[-1]:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def section_carry(args) -> str:
    """Each filtering model with and without the step carried across intervals (one process, interleaved)."""
    import contextlib

    lines = _head(
        "## Recurrent models: the step carried across observation intervals, on and off",
        "Periodic protocol as above (batch 50, 100 times, latent 10), dopri5 (flow-RNN and GRU flow: no solver). "
        "'off' makes the pass's StepCarry None (each interval searches its first step "
        "and checks its inputs, as before this change); everything else is the same code. Both arms solve interval "
        "by interval (`recurrent.USE_JUMPS = False`: the one-solve pass with jumps carries its steps by construction). "
        f"Training steps interleaved, {args.carry_steps} each, median.",
        "| model | step ms, carry on | step ms, carry off | speed-up | NFE/forward on / off |",
    )
    from ts_neuralode.models import recurrent

    @contextlib.contextmanager
    def no_carry():  # the filtering models' pass makes its StepCarry through this module's name
        made = recurrent.StepCarry
        recurrent.StepCarry = lambda: None
        try:
            yield
        finally:
            recurrent.StepCarry = made

    recurrent.USE_JUMPS = False
    for name in ("ode_rnn", "gru_ode", "flow_rnn", "gru_flow"):
        on, off = _our_model(200, args.seed, {}, name), _our_model(200, args.seed, {}, name)
        times = {"on": [], "off": []}
        for _ in range(args.carry_steps):
            for key, (step, _, _) in (("on", on), ("off", off)):
                with no_carry() if key == "off" else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    step()
                    times[key].append(time.perf_counter() - t0)
        a, b = statistics.median(times["on"]), statistics.median(times["off"])
        lines.append(f"| {name} | {1e3 * a:.1f} | {1e3 * b:.1f} | {b / a:.2f}× | {on[2][-1]:.0f} / {off[2][-1]:.0f} |")
    recurrent.USE_JUMPS = True
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- flows
FLOW_DATA = ("sine", "sink")
FLOW_KINDS = (("coupling_flow", "coupling", "CouplingFlow"), ("resnet_flow", "resnet", "ResNetFlow"))


def _ref_flow(ref_dir: str, site: str, data: str, cls: str, seed: int):
    """The Neural Flows reference's synthetic experiment (its flow, data loader and step: MSE, Adam lr 1e-3,
    weight decay 1e-5, batch 50), imported from its checkout; ``stribor`` from its environment's site-packages."""
    for path in (ref_dir,):
        if path not in sys.path:
            sys.path.insert(0, path)
    if site not in sys.path:
        sys.path.append(site)  # last: only what our environment lacks (stribor) comes from there
    import nfe.models as nm
    from nfe.experiments.synthetic.data import get_data_loaders

    torch.manual_seed(seed)
    dim, _, dl_train, _, dl_test = get_data_loaders(data, 50)
    model = getattr(nm, cls)(dim, 4, [64, 64], "TimeFourier", 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    state = {"it": iter(())}

    def step():
        batch = next(state["it"], None)
        if batch is None:
            state["it"] = iter(dl_train)
            batch = next(state["it"])
        x, t, y = batch
        loss = torch.mean((model(x, t) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def test_mse():
        with torch.no_grad():
            return float(statistics.mean(float(torch.mean((model(x, t) - y) ** 2)) for x, t, y in dl_test))

    return step, test_mse, len(dl_train)


def _our_flow(data: str, kind: str, seed: int):
    """Our flow on our copy of the same synthetic set (scripts/repro_neural_flows_synthetic.py's model and step)."""
    import repro_neural_flows_synthetic as nf

    x0, t, y, m = nf.trajectories(data, 1000, 123)
    perm = torch.randperm(len(x0), generator=torch.Generator().manual_seed(123))
    tr, te = perm[:600], perm[800:]
    torch.manual_seed(seed)
    model = nf.make_model(kind, y.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    state = {"it": iter(())}

    def step():
        idx = next(state["it"], None)
        if idx is None:
            state["it"] = iter(tr[torch.randperm(len(tr), generator=gen)].split(50))
            idx = next(state["it"])
        loss = ((model(x0[idx], t[idx]) - y[idx]) ** 2).mean(-1)[m[idx]].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def test_mse():
        return nf.mse(model, (x0[te], t[te], y[te], m[te]), "cpu")

    return step, test_mse


def section_flows(args) -> str:
    ref, site = Path(args.nfe_ref), Path(args.nfe_site)
    if not (ref / "nfe" / "models" / "flow.py").is_file() or not (site / "stribor").is_dir():
        return (
            f"## Flows vs the Neural Flows reference\n\nNot run: no reference checkout at {ref} (or no stribor "
            f"in {site}); pass --nfe-ref and --nfe-site.\n"
        )
    lines = _head(
        "## Flows vs the Neural Flows reference (synthetic sets, its settings)",
        "4 flow layers of 2 × 64 hidden, Fourier time embedding with 8 features, Adam lr 1e-3, weight decay 1e-5, "
        f"batch 50, 600 training series of 100 points; {args.flow_epochs} epoch(s) each, training steps of the "
        "reference and ours interleaved in one process, 1 thread; median step. Test MSE: each code's own test split "
        "after the same number of steps.",
        "| data | flow | reference step (ms) | ours step (ms) | speed-up | reference test MSE | ours test MSE |",
    )
    for data in FLOW_DATA:
        for kind, _, cls in FLOW_KINDS:
            r_step, r_mse, n_batches = _ref_flow(str(ref), str(site), data, cls, args.seed)
            o_step, o_mse = _our_flow(data, kind, args.seed)
            tr, to = [], []
            for _ in range(args.flow_epochs * n_batches):
                for fn, acc in ((r_step, tr), (o_step, to)):
                    t0 = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - t0)
            a, b = statistics.median(tr), statistics.median(to)
            lines.append(
                f"| {data} | {kind} | {1e3 * a:.2f} | {1e3 * b:.2f} | {a / b:.2f}× | {r_mse():.4f} | {o_mse():.4f} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- latent
LATENT_MODELS = ("latent_ode_dopri5", "latent_coupling_flow", "latent_resnet_flow", "latent_gru_flow")
SINE = dict(dataset="sine", layout="padded", scaler="standard", model_options={"lr": 1e-2})


def section_latent(args) -> str:
    """Latent flows vs the latent ODE over a whole training run: per-epoch time, NFE and test MSE curves."""
    runs = {name: _our_model(args.latent_series, args.seed, {}, name, SINE) for name in LATENT_MODELS}
    n_steps = args.latent_series * 6 // 10 // 50 + (1 if args.latent_series * 6 // 10 % 50 else 0)
    hist = {name: {"s": [], "nfe": [], "mse": []} for name in runs}
    for _ in range(args.latent_epochs):
        spent = {name: 0.0 for name in runs}
        for _ in range(n_steps):
            for name, (step, _, _) in runs.items():  # interleaved step by step
                t0 = time.perf_counter()
                step()
                spent[name] += time.perf_counter() - t0
        for name, (_, mse, nfe) in runs.items():
            hist[name]["s"].append(spent[name])
            hist[name]["nfe"].append(statistics.mean(nfe[-n_steps:]))
            hist[name]["mse"].append(mse())
    target = min(hist["latent_ode_dopri5"]["mse"])
    lines = _head(
        "## Latent flows vs the latent ODE over a whole training run (sine)",
        f"Synthetic `sine`, {args.latent_series} series (60% for training: {n_steps} batches of 50 per epoch), "
        f"interpolation task (half of the points observed), standard scaling, Adam lr 1e-2, {args.latent_epochs} "
        "epochs; the four models' training steps interleaved one by one in one process, 1 thread. Per epoch: "
        "training seconds, mean NFE per forward (the encoder is the same Euler ODE-RNN for all: only the decoder "
        "differs), test MSE on held-out points (scaled units) after the epoch. Time to MSE: cumulative training "
        f"seconds until the test MSE first reaches the latent ODE's best ({target:.4f}).",
        "| model | s/epoch first → last (median) | NFE/forward first → last | best test MSE | final test MSE | "
        "training s to the latent ODE's best MSE |",
    )
    for name, h in hist.items():
        cum, reach = 0.0, None
        for sec, m in zip(h["s"], h["mse"], strict=False):
            cum += sec
            if reach is None and m <= target:
                reach = cum
        lines.append(
            f"| {name} | {h['s'][0]:.2f} → {h['s'][-1]:.2f} ({statistics.median(h['s']):.2f}) | "
            f"{h['nfe'][0]:.0f} → {h['nfe'][-1]:.0f} | {min(h['mse']):.4f} | {h['mse'][-1]:.4f} | "
            f"{'not reached' if reach is None else f'{reach:.1f}'} |"
        )
    lines += ["", "Per-epoch curves (epoch: seconds / NFE / test MSE):", ""]
    for name, h in hist.items():
        pts = "; ".join(
            f"{i + 1}: {a:.2f}/{b:.0f}/{c:.4f}"
            for i, (a, b, c) in enumerate(zip(h["s"], h["nfe"], h["mse"], strict=False))
        )
        lines.append(f"- {name}: {pts}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- memory
MEM_MODELS = (
    "latent_ode_dopri5",
    "latent_ode_rk4",
    "latent_gru_flow",
    "latent_coupling_flow",
    "latent_resnet_flow",
    "ode_rnn",
    "flow_rnn",
    "gru_ode",
    "gru_flow",
)
#: the adjoint on a model: the latent ODE (dopri5) at its default tolerance and at a tight one (many more steps)
ADJOINT_CASES = (
    ("autograd", {}),
    ("adjoint, backsolve", {"adjoint": True, "adjoint_mode": "backsolve"}),
    ("adjoint, interpolate", {"adjoint": True, "adjoint_mode": "interpolate"}),
)
TOLS = (("rtol 1e-3", {}), ("rtol 1e-7", {"rtol": 1e-7, "atol": 1e-8}))


def measure_mem(name: str, overrides: dict) -> dict:
    """Peak of torch's CPU allocations during one training step of model ``name`` (after a warm-up step): the
    profiler's allocation events in time order, summed; the peak of the running sum. Plus the step's NFE."""
    from torch.profiler import profile

    step, _, nfe = _our_model(100, 0, overrides, name)
    step()  # warm-up: lazy initialisation (optimizer state) is not part of the peak
    with profile(profile_memory=True) as prof:
        step()
    cur = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += ev.self_cpu_memory_usage
        peak = max(peak, cur)
    return {"peak": peak, "nfe": nfe[-1]}


def section_memory(args) -> str:
    lines = _head(
        "## Peak memory per training step (CPU, torch's allocations)",
        "Periodic set, one training step (loss + backward + Adam step) on a batch of 50 series × 100 times, latent "
        "10, after a warm-up step: the peak of the running sum of torch's CPU allocations and frees during the step "
        "(torch.profiler's memory events in time order; the process RSS cannot resolve these sizes: the tensors "
        "are a few KiB each and glibc keeps freed heap). Model weights and optimizer state held before the step "
        "are not counted.",
        "| model | peak MiB | NFE/forward |",
    )
    for name in MEM_MODELS:
        r = measure_mem(name, {})
        lines.append(f"| {name} | {r['peak'] / 2**20:.1f} | {r['nfe']:.0f} |")
    lines += [
        "",
        *_head(
            "### The adjoint's flat memory, on the latent ODE (dopri5)",
            "The same step with the decoder's gradients by autograd or by the adjoint, at the default tolerance and at "
            "rtol 1e-7 / atol 1e-8 (many more solver steps). Backsolve keeps no step of the forward: its memory does "
            "not grow with the step count; interpolate keeps the forward's accepted steps' states (no graph).",
            "| gradients | " + " | ".join(f"{t}: peak MiB (NFE)" for t, _ in TOLS) + " | growth |",
        ),
    ]
    for label, over in ADJOINT_CASES:
        rs = [measure_mem("latent_ode_dopri5", {**over, **tol}) for _, tol in TOLS]
        cells = " | ".join(f"{r['peak'] / 2**20:.1f} ({r['nfe']:.0f})" for r in rs)
        lines.append(f"| {label} | {cells} | {rs[-1]['peak'] / max(rs[0]['peak'], 1):.2f}× |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- main
def _update(out: Path, texts: list[str], argv: list[str] | None) -> int:
    """Replace each section in ``out`` whose heading (a text's first line) it holds, from that heading to the
    next ``## `` heading; a section not found is appended. Each replaced section says how it was rerun."""
    if not out.is_file():
        print(f"--update: {out} does not exist; run without --update first to write it", file=sys.stderr)
        return 2
    lines = out.read_text().split("\n")
    cmd = "python scripts/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for text in texts:
        new = text.rstrip("\n").split("\n")
        new[1:1] = ["", f"(This section rerun alone on {stamp}: `{cmd.strip()}`.)"]
        head = new[0]
        if head in lines:
            i = lines.index(head)
            j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
            lines[i:j] = new + [""]
        else:
            lines += [""] + new
    out.write_text("\n".join(lines))
    print("\n\n".join(texts))
    print(f"updated {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n_series", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256, 2048], help="solver section's batch sizes")
    p.add_argument("--reps", type=int, default=41, help="solver section: interleaved repetitions")
    p.add_argument("--latent-ode-ref", default="/tmp/latent_ode_ref")
    p.add_argument("--nfe-ref", default="/tmp/nfe_ref", help="a checkout of mbilos/neural-flows-experiments")
    p.add_argument(
        "--nfe-site",
        default="/tmp/nfenv/lib/python3.11/site-packages",
        help="site-packages holding the reference's stribor",
    )
    p.add_argument("--flow-epochs", type=int, default=3)
    p.add_argument("--carry-steps", type=int, default=15)
    p.add_argument("--latent-series", type=int, default=500)
    p.add_argument("--latent-epochs", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "results" / "speed.md"))
    p.add_argument(
        "--update",
        action="store_true",
        help="replace only the sections run (by their heading) in an existing --out, keep the rest",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    head = f"torch {torch.__version__}, cpu, 1 thread; machine shared: ratios only (measured side by side)."
    if args.update:
        return _update(Path(args.out), [globals()[f"section_{s}"](args) for s in sections], argv)
    texts = [head] + [globals()[f"section_{s}"](args) for s in sections]
    return publish_report(args.out, "Speed (issue 15)", "scripts/speed.py", argv, texts, "\n\n".join(texts))


if __name__ == "__main__":
    raise SystemExit(main())

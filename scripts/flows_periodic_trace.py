"""Per-epoch trace of one latent model on the periodic interpolation protocol (the diagnosis in
results/flows_periodic.md): test interpolation MSE after every epoch, and with ``--diag`` how much of each series'
frequency the encoder's posterior mean carries and how wide the posterior is.

The protocol of ``scripts/flows_periodic.py`` (1000 ``periodic`` series, 600 for training, interpolation with 50% of
the points observed, latent dimension 10, hidden 64, batch 50, Adam lr 1e-2 cosine-annealed per epoch, gradient
norm clipped at 1, union layout, data units) in a plain training loop instead of Lightning (same model, data and
optimiser; its own random stream, so a seed here is not the same draw as the benchmark's seed).

``--diag`` after each epoch: the true frequency of every training series (least squares over a 0.001 grid on all
its known points) regressed linearly on the posterior mean z0 (fitted on one half of the training series, R² on
the other half), and the mean posterior std. The random state is restored afterwards, so a run with and without
``--diag`` trains identically.

    python scripts/flows_periodic_trace.py --kind coupling_flow --diag
    python scripts/flows_periodic_trace.py --kind ode --diag                       # the latent ODE (dopri5)
    python scripts/flows_periodic_trace.py --kind coupling_flow --model iwae_samples=1 --seed 1
    python scripts/flows_periodic_trace.py --kind resnet_flow --evo time_input_features=8

Prints one JSON line per epoch (``--out FILE`` also appends them there).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
import warnings

import torch

from ts_neuralode.data.datamodule import IrregularTimeSeriesDataModule
from ts_neuralode.data.generators import generate
from ts_neuralode.models.latent_ode import LatentODE

FREQ_GRID = torch.linspace(0.38, 0.82, 441)


def options(text: str) -> dict:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (values read as Python literals where they are one)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def true_frequency(batch) -> torch.Tensor:
    """Each series' frequency of ``o + sin(2π f t)``, least squares over ``FREQ_GRID`` on all its known points."""
    m = torch.maximum(batch.obs_mask, batch.target_mask)[..., 0]
    y, t = batch.values[..., 0], batch.times_per_sample()
    r = y[:, None] - torch.sin(2 * math.pi * FREQ_GRID[None, :, None] * t[:, None, :])  # [B, F, N]
    o = (r * m[:, None]).sum(-1, keepdim=True) / m.sum(-1)[:, None, None]
    return FREQ_GRID[((((r - o) ** 2) * m[:, None]).sum(-1)).argmin(1)]


def frequency_r2(model: LatentODE, loader) -> tuple[float, float]:
    """(R² of the true frequency from a linear map of the posterior mean, held-out half; mean posterior std)."""
    state = torch.get_rng_state()
    model.eval()
    zs, fs, stds = [], [], []
    with torch.no_grad():
        for b in loader:
            mean, std, _ = model.posterior(model._grid(b, None))
            zs.append(mean)
            fs.append(true_frequency(b))
            stds.append(std.mean())
    model.train()
    torch.set_rng_state(state)
    z, f = torch.cat(zs).double(), torch.cat(fs).double()
    z = torch.cat([(z - z.mean(0)) / (z.std(0) + 1e-9), torch.ones(len(z), 1, dtype=z.dtype)], 1)
    n = len(z) // 2
    w = torch.linalg.lstsq(z[:n], f[:n, None], driver="gelsd").solution
    r2 = 1 - float(((z[n:] @ w)[:, 0] - f[n:]).pow(2).mean() / f[n:].var())
    return r2, float(torch.stack(stds).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="coupling_flow", help="ode (dopri5), resnet_flow, gru_flow or coupling_flow")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n_series", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="training seed (initialisation and order)")
    p.add_argument("--evo", default="", help="EvolutionConfig options, e.g. time_input_features=8")
    p.add_argument("--model", default="", help="LatentODE options, e.g. iwae_samples=1,posterior_std_init=0.01")
    p.add_argument("--warmup", type=float, default=0.0, help="epochs of linear learning-rate warm-up (0: none)")
    p.add_argument("--diag", action="store_true", help="frequency R² and posterior std after every epoch")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    df = generate("periodic", n_series=a.n_series, n_points=100, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = IrregularTimeSeriesDataModule(
            df=df,
            task="interpolation",
            obs_fraction=0.5,
            cut=0.5,
            extrap_obs_fraction=0.5,
            layout="union",
            batch_size=50,
            seed=0,
            scaler="none",
            time_scale=1.0,
        )
        dm.setup()
    torch.manual_seed(a.seed)
    evo = {"kind": a.kind, **options(a.evo)}
    if a.kind == "ode":
        evo.setdefault("method", "dopri5")
    model = LatentODE(input_dim=1, evolution=evo, latent_dim=10, hidden_dim=64, **options(a.model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    nb = len(dm.train_dataloader())
    warm = int(a.warmup * nb)

    def lr_factor(step: int) -> float:  # cosine over epochs (as the Lightning module's per-epoch schedule)
        w = min(1.0, (step + 1) / warm) if warm else 1.0
        return w * 0.5 * (1 + math.cos(math.pi * (step // nb) / a.epochs))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    def test_interp_mse() -> float:
        model.eval()
        num = den = 0.0
        with torch.no_grad():
            for b in dm.test_dataloader():
                fc = model.predict(b, num_samples=1)
                after = (b.times_per_sample() > b.cutoff.unsqueeze(1)).unsqueeze(-1).to(b.target_mask.dtype)
                m = b.held_out_mask * (1 - after)
                num += float((((fc.mean - b.values) ** 2) * m).sum())
                den += float(m.sum())
        model.train()
        return num / den

    tag = {"kind": a.kind, "seed": a.seed, "evo": a.evo, "model": a.model, "warmup": a.warmup}
    for epoch in range(a.epochs):
        model.set_epoch(epoch)
        t0 = time.perf_counter()
        losses = []
        for b in dm.train_dataloader():
            loss, _ = model.loss(b)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        row = {
            **tag,
            "epoch": epoch,
            "train_loss": round(sum(losses) / len(losses), 2),
            "test_interp_mse": round(test_interp_mse(), 4),
            "epoch_s": round(time.perf_counter() - t0, 1),
        }
        if a.diag:
            r2, std = frequency_r2(model, dm.train_dataloader())
            row.update(freq_r2=round(r2, 3), posterior_std=round(std, 3))
        line = json.dumps(row)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the filtering pass as one solve with jumps change what an ODE-RNN learns? Two trainings side by side.

```
python scripts/pass_trajectory.py                    # one-solve pass vs interval solves, 60 Adam steps, seed 0
python scripts/pass_trajectory.py --control          # control: interval solves vs interval solves, weights x(1+1e-7)
python scripts/pass_trajectory.py --quick            # 500 series, 20 steps
```

``configs/ode_rnn.yaml``'s model and data (5,000-series sine set, interpolation, half observed, batch 50, Adam lr 0.01,
gradient clipping 1.0): two copies of one initial model trained on the same batches, one with the package's pass (one
solve with jumps, :mod:`ts_neuralode.solvers.jumps`) and one solving interval by interval
(``recurrent.USE_JUMPS = False``); every 10 steps the training losses, the mean loss of 5 validation batches, the same
validation read through the interval pass with the first arm's weights (what the pass itself changes at equal weights)
and the largest parameter difference. ``--control`` trains both arms with the interval pass, the second from weights
perturbed by 1e-7 (relative): how far rounding-level differences alone carry this training.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n_series", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--control", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n_series, args.steps = 500, 20
    torch.set_num_threads(1)
    from many_series_profile import sine_workload

    from ts_neuralode.models import recurrent

    torch.manual_seed(args.seed)
    dm, make_module = sine_workload(args.n_series, "pass_trajectory_")
    # at most --steps training batches and 5 validation ones (--quick's 500 series hold 6 and 2)
    train_batches = list(itertools.islice(dm.train_dataloader(), args.steps))
    val_batches = list(itertools.islice(dm.val_dataloader(), 5))
    torch.manual_seed(args.seed)
    first = make_module()
    second = copy.deepcopy(first)
    if args.control:
        with torch.no_grad():
            for p in second.parameters():
                p.mul_(1 + 1e-7 * torch.randn_like(p))
    arms = {
        "interval solves": (first, False),
        ("interval solves, perturbed" if args.control else "one solve"): (second, not args.control),
    }
    opts = {k: torch.optim.Adam(m.parameters(), lr=0.01) for k, (m, _) in arms.items()}

    def val(model, jumps: bool) -> float:
        recurrent.USE_JUMPS = jumps
        with torch.no_grad():
            return sum(float(model.model.loss(b)[0]) for b in val_batches) / len(val_batches)

    (a, b) = arms
    print(
        f"| step | training loss {a} / {b} | validation {a} / {b} | {b}'s weights through the interval pass "
        "| max parameter difference |"
    )
    print("|---|---|---|---|---|")
    for i, batch in enumerate(train_batches, 1):
        losses = {}
        for name, (model, jumps) in arms.items():
            recurrent.USE_JUMPS = jumps
            loss, _ = model.model.loss(batch)
            opts[name].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            losses[name] = float(loss.detach())
        if i % 10 == 0 or i == len(train_batches):
            vals = {name: val(model, jumps) for name, (model, jumps) in arms.items()}
            cross = val(arms[b][0], False)
            diff = max(
                float((p - q).detach().abs().max())
                for p, q in zip(first.parameters(), second.parameters(), strict=True)
            )
            print(
                f"| {i} | {losses[a]:.4f} / {losses[b]:.4f} | {vals[a]:.4f} / {vals[b]:.4f} | {cross:.4f} "
                f"| {diff:.1e} |",
                flush=True,
            )
    recurrent.USE_JUMPS = True
    return 0


if __name__ == "__main__":
    sys.exit(main())

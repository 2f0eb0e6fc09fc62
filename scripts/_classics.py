"""Shared plumbing of the Neural ODE classics (scripts/odenet_digits.py, scripts/cnf_density.py).

Argument parsing (--device, --threads, --seed, --quick, --out), device/thread setup, a wall-clock timer and
``SavedTensorMeter``: the peak bytes of tensors that autograd keeps alive for the backward pass.

Kept in scripts/ rather than in the package: these are demonstrations of the public solver API
(``ts_neuralode.solvers.odeint``), not a model the package has to support.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of a few seconds")
    p.add_argument("--out", default=default_out, help=f"results directory (default {default_out})")
    return p


def setup(args) -> torch.device:
    """Threads, seeds and the device; refuses --device cuda without CUDA instead of silently using the CPU."""
    torch.set_num_threads(max(1, args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no CUDA device")
    return dev


def command_line(argv) -> str:
    """The command that produced a results page (printed at its top)."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "SCRIPT"
    args = " ".join(argv if argv is not None else sys.argv[1:])
    return f"python scripts/{script} {args}".rstrip()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Timer:
    """Accumulated wall-clock seconds (synchronising CUDA so that asynchronous kernels are counted)."""

    def __init__(self, dev: torch.device):
        self.dev, self.total = dev, 0.0

    @contextmanager
    def __call__(self):
        sync(self.dev)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.dev)
            self.total += time.perf_counter() - t0


class SavedTensorMeter:
    """Peak bytes of the tensors autograd saves for backward, live at the same time, over a block of code.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: every tensor packed into the graph is wrapped in a handle
    whose release (when the graph node that holds it is freed: after backward, or when the graph is dropped)
    subtracts its bytes again. Storages are counted once however many times they are saved (a tensor saved by two
    ops, or views of one buffer). Tensors saved inside the adjoint's own backward solve (the vector-Jacobian
    products of each backward step) are counted as well: the hooks are thread-local state that autograd carries
    into the backward. Parameters that an op saves count too (they are part of the graph's footprint).

    This is the memory that grows with depth / number of solver steps (the activations), measured exactly and
    independently of the allocator and of other processes; it is not the whole process footprint (parameters,
    optimiser state, gradients and temporaries of a single op are not included).
    """

    def __init__(self):
        self.live: dict[int, list] = {}  # storage ptr -> [bytes, refcount]
        self.current = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor):
        meter = self

        class _Handle:
            __slots__ = ("t", "key")

            def __init__(self, t):
                self.t = t
                st = t.untyped_storage()
                self.key = st.data_ptr() if st.nbytes() else id(t)
                entry = meter.live.get(self.key)
                if entry is None:
                    meter.live[self.key] = [st.nbytes(), 1]
                    meter.current += st.nbytes()
                    meter.peak = max(meter.peak, meter.current)
                else:
                    entry[1] += 1

            def __del__(self):
                entry = meter.live.get(self.key)
                if entry is not None:
                    entry[1] -= 1
                    if entry[1] == 0:
                        meter.current -= entry[0]
                        del meter.live[self.key]

        return _Handle(t)

    @staticmethod
    def _unpack(h):
        return h.t

    @contextmanager
    def track(self):
        self.current = sum(v[0] for v in self.live.values())
        self.peak = self.current
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

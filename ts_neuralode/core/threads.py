"""How many intra-op threads torch uses: fitted to the CPUs this process may actually run on.

torch's default is the number of the host's physical cores, whatever the process is allowed to use. These models
run thousands of small ops per batch (a [50, 64] ``linear``, a ``tanh``); each op split over two threads waits for
the slower one, and when one of the host's cores is busy with another job (a container with a CPU quota below the
host's core count, a CI runner, a notebook beside a training job) every op waits for a core: measured 64 s with
torch's default against 9 s with one thread for the same 4 batches (issue 24; results/threads.md).

:func:`configure_threads` is the one place that decides. Precedence:

1. an explicit ``threads`` argument (``ts-neuralode`` reads ``$TS_NEURALODE_THREADS``);
2. ``$OMP_NUM_THREADS`` when the user set it (torch already read it: the choice is left alone and reported);
3. otherwise :data:`DEFAULT_THREADS` (measured: results/threads.md), never more than the usable CPUs —
   :func:`usable_cpus`: the scheduler affinity (``sched_getaffinity``, e.g. ``taskset``/cpuset) and the cgroup
   CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), whichever is smaller.

The decision is made once per process (later calls report it again and change nothing — a later
``torch.set_num_threads`` is respected — unless a new explicit ``threads`` is given), so calling it from every entry
point (the CLI, ``Forecaster.fit``/``predict``) is cheap.
A choice of ours is also written to ``$OMP_NUM_THREADS`` (as Lightning does with its own): the ranks of a DDP
run are child processes, and Lightning would otherwise give each ``usable CPUs / processes`` threads.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ts_neuralode.errors import ConfigError

ENV_VAR = "TS_NEURALODE_THREADS"
#: Measured default for these models' small tensors (results/threads.md, scripts/threads_benchmark.py): one
#: thread was fastest or within noise of the fastest for every family and batch size we measured up to 1024,
#: quiet or beside a busy process, and 2–8× faster than two threads beside one. Larger batches gain from more
#: threads only on a quiet machine; set the option then.
DEFAULT_THREADS = 1
CGROUP_ROOT = Path("/sys/fs/cgroup")
CHOSEN_VAR = "TS_NEURALODE_THREADS_CHOSEN"  # "<n>:<source>", for child processes (see configure_threads)


@dataclass(frozen=True)
class ThreadChoice:
    """The outcome of :func:`configure_threads`: ``threads`` set, where it came from, and the CPUs usable."""

    threads: int
    source: str  # "option", "OMP_NUM_THREADS", "default" or "torch.set_num_threads" (changed after the choice)
    usable: int  # CPUs this process may use (affinity and cgroup quota)
    detail: str  # how ``usable`` was found

    @property
    def line(self) -> str:
        """One line for the log: ``torch threads: 1 (default; 2 usable CPUs: affinity 2, no cgroup quota)``."""
        how = {
            "option": f"${ENV_VAR} / threads option",
            "OMP_NUM_THREADS": "$OMP_NUM_THREADS",
            "torch.set_num_threads": "set by torch.set_num_threads after the first choice",
            "default": f"default for small tensors, set ${ENV_VAR} to change",
        }[self.source]
        return f"torch threads: {self.threads} ({how}; {self.usable} usable CPU(s): {self.detail})"

    def params(self) -> dict[str, str]:
        """MLflow params recording the choice."""
        return {
            "torch_threads": str(self.threads),
            "torch_threads_source": self.source,
            "usable_cpus": str(self.usable),
        }


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: str | None) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process from /proc/self/cgroup's text."""
    v2 = v1 = None
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _candidates(base: Path, rel: str | None):
    """The process's own cgroup directory and its parents up to ``base`` (a limit on a parent applies too)."""
    seen = []
    if rel:
        p = base / rel.lstrip("/")
        while True:
            seen.append(p)
            if p == base or base not in p.parents:
                break
            p = p.parent
    if base not in seen:
        seen.append(base)
    return seen


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``quota / period``), the smallest along its path, or None.

    ``proc_cgroup`` is the text of ``/proc/self/cgroup`` (read when None; a parameter for tests).
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    v2, v1 = _cgroup_paths(proc_cgroup)
    limits = []
    for d in _candidates(root, v2):  # cgroup v2: "max 100000" or "200000 100000"
        text = _read(d / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
                limits.append(int(quota) / int(period))
    for base in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):  # cgroup v1
        for d in _candidates(base, v1):
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            valid = quota and period and quota.lstrip("-").isdigit() and period.isdigit()
            if valid and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> tuple[int, str]:
    """(CPUs this process may use, how that was found): min(affinity, ceil(cgroup quota)), at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
        what = f"affinity {affinity}"
    except (AttributeError, OSError):  # not on Linux
        affinity = os.cpu_count() or 1
        what = f"cpu_count {affinity}"
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is None:
        return max(1, affinity), f"{what}, no cgroup CPU quota"
    return max(1, min(affinity, math.ceil(quota - 1e-9))), f"{what}, cgroup quota {quota:g} CPU(s)"


def _parse(value: str | int, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"{where}={value!r} is not a thread count; give an integer >= 1 (e.g. {where}=1)")
    return n


_CHOSEN: ThreadChoice | None = None


def configure_threads(threads: int | None = None, *, announce: bool = False) -> ThreadChoice:
    """Set torch's intra-op threads for this process (see the module docstring) and return the choice.

    Args:
        threads: an explicit count (wins over everything); None: ``$TS_NEURALODE_THREADS``, then
            ``$OMP_NUM_THREADS``, then the measured default capped by the usable CPUs.
        announce: print :attr:`ThreadChoice.line` on stderr (once per process, and only on the first rank of a
            multi-process run) — for the command line.
    """
    global _CHOSEN
    env = os.environ.get(ENV_VAR, "").strip()
    if threads is None and _CHOSEN is not None:  # decided already in this process
        if torch.get_num_threads() != _CHOSEN.threads:  # changed since by torch.set_num_threads: that wins
            _CHOSEN = ThreadChoice(torch.get_num_threads(), "torch.set_num_threads", _CHOSEN.usable, _CHOSEN.detail)
        return _CHOSEN
    usable, detail = usable_cpus()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    inherited = os.environ.get(CHOSEN_VAR, "")  # a parent process (a DDP launcher) chose: same choice, same source
    if threads is not None:
        n, source = _parse(threads, "threads"), "option"
    elif env:
        n, source = _parse(env, ENV_VAR), "option"
    elif omp and inherited == f"{omp}:option":
        n, source = _parse(omp, "OMP_NUM_THREADS"), "option"
    elif omp and inherited != f"{omp}:default":
        n, source = torch.get_num_threads(), "OMP_NUM_THREADS"  # torch read it at start-up: leave it
    else:
        n, source = min(DEFAULT_THREADS, usable), "default"
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if source != "OMP_NUM_THREADS":
        # Lightning's DDP sets usable CPUs / processes threads per rank unless $OMP_NUM_THREADS is set, and its
        # ranks are child processes: the variable carries this choice to them (and CHOSEN_VAR where it came from).
        os.environ["OMP_NUM_THREADS"] = str(n)
        os.environ[CHOSEN_VAR] = f"{n}:{source}"
    first = _CHOSEN is None
    _CHOSEN = ThreadChoice(n, source, usable, detail)
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    if announce and first and rank in ("", "0"):
        print(_CHOSEN.line, file=sys.stderr, flush=True)
    return _CHOSEN


def current_choice() -> ThreadChoice | None:
    """The choice :func:`configure_threads` made in this process, or None when it was not called."""
    return _CHOSEN

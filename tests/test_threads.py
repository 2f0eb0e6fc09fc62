"""ts_neuralode.core.threads: the usable CPUs (affinity, cgroup v1/v2 quota) and the thread choice's precedence."""

from __future__ import annotations

import os

import pytest
import torch

from ts_neuralode.core import threads
from ts_neuralode.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_CHOSEN", None)
    for var in (threads.ENV_VAR, threads.CHOSEN_VAR, "OMP_NUM_THREADS", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    yield
    torch.set_num_threads(before)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_own_group_and_parents(tmp_path):
    _write(tmp_path / "cpu.max", "max 100000\n")
    _write(tmp_path / "a" / "cpu.max", "150000 100000\n")  # parent: 1.5 CPUs
    _write(tmp_path / "a" / "b" / "cpu.max", "max 100000\n")  # own group: no limit of its own
    assert threads.cgroup_cpu_limit(tmp_path, "0::/a/b\n") == pytest.approx(1.5)
    assert threads.cgroup_cpu_limit(tmp_path, "0::/\n") is None


def test_cgroup_v1_quota(tmp_path):
    _write(tmp_path / "cpu" / "job" / "cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "cpu" / "job" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    text = "4:memory:/x\n1:cpu,cpuacct:/job\n0::/\n"
    assert threads.cgroup_cpu_limit(tmp_path, text) == pytest.approx(0.5)
    assert threads.cgroup_cpu_limit(tmp_path, "1:cpu,cpuacct:/\n") is None  # -1: no quota


def test_usable_cpus_is_capped_by_quota_and_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    _write(tmp_path / "cpu.max", "250000 100000\n")
    n, detail = threads.usable_cpus(tmp_path, "0::/\n")
    assert n == 3 and "affinity 4" in detail and "quota 2.5" in detail  # ceil(2.5) < 4
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert threads.usable_cpus(tmp_path, "0::/\n")[0] == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    _write(tmp_path / "cpu.max", "50000 100000\n")
    assert threads.usable_cpus(tmp_path, "0::/\n")[0] == 1  # never 0


def test_precedence_option_env_omp_default(monkeypatch, capsys):
    monkeypatch.setattr(threads, "usable_cpus", lambda: (4, "affinity 4, no cgroup CPU quota"))
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 3)
    choice = threads.configure_threads(announce=True)
    assert (choice.threads, choice.source) == (3, "default") and torch.get_num_threads() == 3
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.startswith("torch threads: 3 (default")
    threads.configure_threads(announce=True)
    assert capsys.readouterr().err == ""  # announced once per process
    torch.set_num_threads(2)  # the user's own call after the choice is kept
    assert threads.configure_threads().source == "torch.set_num_threads" and torch.get_num_threads() == 2

    monkeypatch.setattr(threads, "usable_cpus", lambda: (2, "affinity 2, cgroup quota 2 CPU(s)"))
    monkeypatch.setattr(threads, "_CHOSEN", None)
    assert threads.configure_threads().threads == 2  # the default never exceeds the usable CPUs

    # a child process (a DDP rank) inherits the choice and its source through the environment
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ[threads.CHOSEN_VAR] == "2:default"
    monkeypatch.setattr(threads, "_CHOSEN", None)
    assert threads.configure_threads().source == "default"

    monkeypatch.setattr(threads, "_CHOSEN", None)
    monkeypatch.delenv(threads.CHOSEN_VAR)
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = threads.configure_threads()
    assert (choice.threads, choice.source) == (1, "OMP_NUM_THREADS")  # the user's choice is left alone
    assert threads.CHOSEN_VAR not in os.environ

    monkeypatch.setenv(threads.ENV_VAR, "2")
    monkeypatch.setattr(threads, "_CHOSEN", None)
    assert threads.configure_threads().source == "option" and torch.get_num_threads() == 2
    assert threads.configure_threads(1).threads == 1 and torch.get_num_threads() == 1  # explicit argument wins
    assert threads.current_choice().params() == {
        "torch_threads": "1",
        "torch_threads_source": "option",
        "usable_cpus": "2",
    }


def test_bad_thread_count_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV_VAR, "many")
    with pytest.raises(ConfigError, match="TS_NEURALODE_THREADS='many' is not a thread count"):
        threads.configure_threads()
    with pytest.raises(ConfigError, match="threads=0"):
        threads.configure_threads(0)
    from ts_neuralode.cli import main

    assert main(["fit", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TS_NEURALODE_THREADS" in err


def test_other_ranks_do_not_announce(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    threads.configure_threads(1, announce=True)
    assert capsys.readouterr().err == ""

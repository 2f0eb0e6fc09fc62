"""Synthetic generators (exact specs of REFERENCE.md), the generate CLI, bundled CSVs, the Hopper script."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ts_neuralode.cli.main import generate_main as cli_main
from ts_neuralode.data import read_series
from ts_neuralode.data.generators import NAMES, generate, sawtooth
from ts_neuralode.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
torch.manual_seed(0)


def arrays(df, cols):
    n = df["unique_id"].nunique()
    t = df["ds"].to_numpy().reshape(n, -1)
    v = df[cols].to_numpy().reshape(n, t.shape[1], len(cols))
    return t, v


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_seeded_reproducible_and_shaped(name):
    a = generate(name, n_series=20, n_points=30 if name != "double_ou" else None, seed=5)
    b = generate(name, n_series=20, n_points=30 if name != "double_ou" else None, seed=5)
    c = generate(name, n_series=20, n_points=30 if name != "double_ou" else None, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert a["unique_id"].nunique() == 20
    assert list(a.columns[:2]) == ["unique_id", "ds"]
    assert a.groupby("unique_id")["ds"].apply(lambda s: s.is_monotonic_increasing and s.is_unique).all()
    read_series(a)  # passes validation


def test_sawtooth_scipy_convention():
    t = np.array([0.0, np.pi / 2, np.pi, 2 * np.pi - 1e-9, 2 * np.pi, 3 * np.pi])
    np.testing.assert_allclose(sawtooth(t), [-1.0, -0.5, 0.0, 1.0, -1.0, 0.0], atol=1e-8)


@pytest.mark.parametrize(
    "name,f",
    [
        ("sine", np.sin),
        ("square", lambda t: np.sign(np.sin(t))),
        ("sawtooth", sawtooth),
        ("triangle", lambda t: np.abs(sawtooth(t))),
    ],
)
def test_one_dimensional_sets(name, f):
    df = generate(name, n_series=200, n_points=50, seed=0)
    t, v = arrays(df, ["y"])
    assert t.shape == (200, 50) and t.min() >= 0 and t.max() <= 10
    x0 = v[..., 0] - f(t)
    np.testing.assert_allclose(x0, x0[:, :1].repeat(50, 1), atol=1e-12)
    assert x0.min() >= -2 and x0.max() <= 2 and x0.std() > 0.8
    te, ve = arrays(generate(name, n_series=100, n_points=20, seed=0, extrap="time"), ["y"])
    assert te.min() >= 10 and te.max() <= 30
    ts, vs = arrays(generate(name, n_series=100, n_points=20, seed=0, extrap="space"), ["y"])
    x0s = np.abs(vs[:, 0, 0] - f(ts[:, 0]))
    assert x0s.min() >= 2 and x0s.max() <= 4


@pytest.mark.slow
def test_sink_solves_the_linear_ode():
    t, v = arrays(generate("sink", n_series=20, n_points=30, seed=1), ["x1", "x2"])
    a = torch.tensor([[-4.0, 10.0], [-3.0, 2.0]], dtype=torch.float64)
    x0 = v[:, 0]
    assert x0.min() >= 0 and x0.max() <= 1
    dt = torch.from_numpy(np.array(t - t[:, :1]))
    exact = torch.einsum(
        "stij,sj->sti", torch.linalg.matrix_exp(dt[..., None, None] * a), torch.from_numpy(np.array(x0))
    )
    np.testing.assert_allclose(v, exact.numpy(), atol=1e-6)
    _, vs = arrays(generate("sink", n_series=20, n_points=5, seed=1, extrap="space"), ["x1", "x2"])
    assert vs[:, 0].min() >= 1 and vs[:, 0].max() <= 2


@pytest.mark.slow
def test_ellipse_conserves_lotka_volterra_invariant():
    t, v = arrays(generate("ellipse", n_series=20, n_points=40, seed=2), ["x1", "x2"])
    x, y = v[..., 0] + 1.0, v[..., 1] + 1.0  # reported minus 1
    assert x[:, 0].min() >= 0 and x[:, 0].max() <= 1
    h = x - np.log(x) + 2.0 / 3.0 * y - 2.0 / 3.0 * np.log(y)  # dx = 2/3 x - 2/3 xy, dy = xy - y
    np.testing.assert_allclose(h, h[:, :1].repeat(40, 1), rtol=1e-6)


def test_periodic_set():
    df = generate("periodic", n_series=1000, seed=0)
    t, v = arrays(df, ["y"])
    assert t.shape == (1000, 100)
    assert (t == t[:1]).all() and t[0, 0] == 0 and t.max() <= 5
    offset = v[:, 0, 0]  # sin(0) = 0 and no noise on the first point
    assert abs(offset.mean() - 1) < 0.02 and abs(offset.std() - 0.1) < 0.02
    resid = v[..., 0] - offset[:, None]
    assert resid.min() >= -1 and resid.max() < 1.01
    # the frequency of series 0 lies in [0.4, 0.8]: the best fit on that grid explains it to the noise level
    freqs = np.linspace(0.4, 0.8, 4001)
    errs = [np.abs(resid[0] - np.sin(2 * np.pi * f * t[0])).max() for f in freqs]
    assert min(errs) < 0.012


def test_double_ou_set():
    df = generate("double_ou", n_series=500, seed=0)
    t, v = arrays(df, ["x1", "x2"])
    assert t.shape == (500, 20) and t.min() >= 0 and t.max() <= 10
    np.testing.assert_allclose(t / 0.05, np.round(t / 0.05), atol=1e-6)
    obs = ~np.isnan(v)
    both = obs.all(-1).mean()
    assert 0.15 < both < 0.25 and obs.any(-1).all()
    late = t > 5
    x1, x2 = v[..., 0][late & obs[..., 0]], v[..., 1][late & obs[..., 1]]
    assert 0.5 < np.nanmean(x1) < 1.5 and -1.5 < np.nanmean(x2) < -0.5


def test_generate_errors():
    with pytest.raises(ConfigError, match="unknown data set"):
        generate("lorenz")
    with pytest.raises(ConfigError):
        generate("periodic", extrap="time")
    with pytest.raises(ConfigError):
        generate("sine", n_points=1)


@pytest.mark.slow
def test_cli_main(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert cli_main(["sink", "--out", str(out), "--n_series", "7", "--n_points", "12", "--seed", "3"]) == 0
    tab = read_series(out)
    assert tab.n_series == 7 and tab.channel_names == ["x1", "x2"] and len(tab.times) == 84
    pd.testing.assert_frame_equal(pd.read_csv(out), generate("sink", n_series=7, n_points=12, seed=3), atol=1e-9)
    assert cli_main(["sine", "--out", str(tmp_path / "new_dir" / "x.csv"), "--n_series", "2"]) == 0  # created
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="--out .*cannot write there"):  # checked before generating
        cli_main(["sine", "--out", str(tmp_path / "a_file" / "x.csv")])
    with pytest.raises(ConfigError, match="invalid choice: 'lorenz'"):
        cli_main(["lorenz", "--out", str(out)])
    with pytest.raises(ConfigError, match=r"^ts-neuralode generate: --n-series is now --n_series"):  # one spelling
        cli_main(["sine", "--out", str(out), "--n-series", "2"])


def test_bundled_csvs_are_small_readable_and_documented():
    readme = (ROOT / "data" / "README.md").read_text()
    files = sorted((ROOT / "data").glob("*.csv"))
    names = {p.name for p in files}
    assert {"sine.csv", "sink.csv", "periodic.csv", "double_ou.csv", "demo.csv", "co2_mauna_loa.csv"} <= names
    for p in files:
        assert p.stat().st_size < 600_000, p
        assert p.name in readme, p
        tab = read_series(p)
        assert tab.n_series >= 1 and len(tab.times) > 100
    demo = read_series(ROOT / "data" / "demo.csv")
    assert demo.codec.is_datetime and demo.codec.tz is not None and demo.n_series > 5
    co2 = read_series(ROOT / "data" / "co2_mauna_loa.csv", time_unit="D")
    gaps = np.diff(co2.times)
    assert gaps.min() == 7 and gaps.max() > 7  # weekly with real gaps


def test_hopper_script_fails_cleanly_without_dm_control(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("make_mujoco_hopper", ROOT / "scripts" / "make_mujoco_hopper.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "dm_control", None)  # import fails as if not installed
    assert mod.main(["--out", "unused.csv", "--n-series", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dm_control" in err and "[mujoco]" in err

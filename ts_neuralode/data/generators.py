"""Synthetic data sets of the reference papers, seeded and reproducible, as long DataFrames.

* Neural Flows (Biloš et al. 2021) — ``sine, square, sawtooth, triangle`` (1 channel ``y``) and
  ``sink, ellipse`` (2 channels ``x1, x2``): times per series ``sort(Uniform(t_min, t_max))`` (default
  [0, 10]); 1-D: ``x0 ~ U(-2, 2)``, value ``x0 + f(t)``; 2-D: ``x0 ~ U(0, 1)^2`` is the state at the
  series' first time, then sink ``dx/dt = A x`` with ``A = [[-4, 10], [-3, 2]]`` and ellipse the
  Lotka–Volterra system ``dx/dt = 2/3 x - 2/3 x y, dy/dt = x y - y``, reported minus 1. Options:
  ``extrap="time"`` (times in [10, 30]) and ``extrap="space"`` (x0 from [-4,-2] ∪ [2,4] in 1-D, [1,2]^2
  in 2-D). ODEs are integrated with classical RK4 between consecutive sample times (≥ 100 sub-steps per
  unit time, vectorised over series).
* ``periodic`` (Latent ODE): 100 times shared by all series, t0 = 0 plus 99 sorted U(0, 5); per series
  frequency ~ U(0.4, 0.8), amplitude 1, offset 1 + N(0, 0.1); ``y = sin(2π f t) + offset`` plus
  ``0.01 · U[0, 1)`` noise on every point but the first.
* ``double_ou`` (GRU-ODE-Bayes): two correlated Ornstein–Uhlenbeck channels ``x1, x2`` simulated by
  Euler–Maruyama on a dt = 0.05 grid over [0, 10]: ``dx = θ (μ - x) dt + σ dW`` with θ = 1, σ = 0.1,
  noise correlation 0.99, μ1 ~ U(0.5, 1.5), μ2 ~ U(-1.5, -0.5), started at 0; each series is observed at
  ``n_points`` random grid times (default 20, ~2 per unit time); 20% of observations carry both channels,
  the rest one channel chosen at random (the other cell is left empty).

* ``pk`` (pharmacokinetics, a target driven by a known-future input): a one-compartment model with infusions
  at known times, ``dc/dt = rate(t) − k c`` (``c(0) = 0``), elimination ``k ~ U(0.3, 0.7)`` per series; 2–6
  infusions per series start at ``U(0, 0.9·t_max)`` (default ``t_max`` 10), last ``U(0.3, 1)`` each, at a rate
  ``~ U(0.5, 2)`` (overlaps add). The target ``y = c`` (solved exactly, piecewise) plus ``N(0, 0.02²)`` noise is
  observed at ``n_points`` sorted ``U(0, t_max)`` times (default 40); the schedule is the column ``rate`` on rows of
  its own (one per change, ``y`` empty): piecewise constant, so ``--data.future_cols '[rate]'`` with the default
  ``--data.future_interp constant`` gives the model exactly the input that drove the target.

``n_points`` keeps its paper default per set when not given; ``n_series`` defaults to 1000.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ts_neuralode.errors import ConfigError

NAMES = ("sine", "square", "sawtooth", "triangle", "sink", "ellipse", "periodic", "double_ou", "pk")
_DEFAULT_POINTS = {"periodic": 100, "double_ou": 20, "pk": 40}
_SINK_A = np.array([[-4.0, 10.0], [-3.0, 2.0]])


def sawtooth(t: np.ndarray) -> np.ndarray:
    """scipy.signal.sawtooth convention: rises linearly from -1 to 1 over each 2π period."""
    return 2.0 * np.mod(t, 2 * np.pi) / (2 * np.pi) - 1.0


def _sink(x: np.ndarray) -> np.ndarray:
    return x @ _SINK_A.T


def _lotka_volterra(x: np.ndarray) -> np.ndarray:
    a, b = x[..., 0], x[..., 1]
    return np.stack([2.0 / 3.0 * a - 2.0 / 3.0 * a * b, a * b - b], axis=-1)


def integrate_rk4(
    f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, times: np.ndarray, steps_per_unit: float = 100.0
) -> np.ndarray:
    """Autonomous ``dx/dt = f(x)`` from ``x0`` [S, D] at ``times[:, 0]`` to every time of ``times`` [S, T]
    (per-series grids); fixed-step RK4 between consecutive outputs. Returns [S, T, D]."""
    s, t = times.shape
    out = np.empty((s, t, x0.shape[1]))
    x = x0.astype(np.float64).copy()
    out[:, 0] = x
    for k in range(1, t):
        gap = times[:, k] - times[:, k - 1]
        m = max(1, int(np.ceil(gap.max() * steps_per_unit)))
        h = (gap / m)[:, None]
        for _ in range(m):
            k1 = f(x)
            k2 = f(x + 0.5 * h * k1)
            k3 = f(x + 0.5 * h * k2)
            k4 = f(x + h * k3)
            x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[:, k] = x
    return out


def _long(
    times: np.ndarray, values: np.ndarray, channels: list[str], mask: np.ndarray | None = None, id_prefix: str = "s"
) -> pd.DataFrame:
    s, t = times.shape
    width = len(str(s - 1))
    ids = np.array([f"{id_prefix}{i:0{width}d}" for i in range(s)], dtype=object)
    data = {"unique_id": np.repeat(ids, t), "ds": times.reshape(-1)}
    vals = values.reshape(s * t, len(channels))
    if mask is not None:
        vals = np.where(mask.reshape(s * t, len(channels)), vals, np.nan)
    for k, c in enumerate(channels):
        data[c] = vals[:, k]
    return pd.DataFrame(data)


def _neural_flows(
    name: str,
    n_series: int,
    n_points: int,
    rng: np.random.Generator,
    extrap: str | None,
    t_min: float | None,
    t_max: float | None,
) -> pd.DataFrame:
    lo, hi = (10.0, 30.0) if extrap == "time" else (0.0, 10.0)
    lo = lo if t_min is None else float(t_min)
    hi = hi if t_max is None else float(t_max)
    if not hi > lo:
        raise ConfigError(f"t_max={hi} must be greater than t_min={lo}")
    times = np.sort(rng.uniform(lo, hi, (n_series, n_points)), axis=1)
    if name in ("sink", "ellipse"):
        x0 = rng.uniform(1.0, 2.0, (n_series, 2)) if extrap == "space" else rng.uniform(0.0, 1.0, (n_series, 2))
        if name == "sink":
            vals = integrate_rk4(_sink, x0, times)
        else:
            vals = integrate_rk4(_lotka_volterra, x0, times) - 1.0
        return _long(times, vals, ["x1", "x2"])
    if extrap == "space":
        side = rng.random(n_series) > 0.5
        x0 = np.where(side, rng.uniform(-4.0, -2.0, n_series), rng.uniform(2.0, 4.0, n_series))
    else:
        x0 = rng.uniform(-2.0, 2.0, n_series)
    shapes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "sine": np.sin,
        "square": lambda t: np.sign(np.sin(t)),
        "sawtooth": sawtooth,
        "triangle": lambda t: np.abs(sawtooth(t)),
    }
    f = shapes[name]
    return _long(times, (x0[:, None] + f(times))[..., None], ["y"])


def _periodic(n_series: int, n_points: int, rng: np.random.Generator, t_max: float | None) -> pd.DataFrame:
    hi = 5.0 if t_max is None else float(t_max)
    t = np.concatenate([[0.0], np.sort(rng.uniform(0.0, hi, n_points - 1))])
    freq = rng.uniform(0.4, 0.8, n_series)
    offset = 1.0 + rng.normal(0.0, 0.1, n_series)
    y = np.sin(2 * np.pi * freq[:, None] * t[None, :]) + offset[:, None]
    noise = 0.01 * rng.random((n_series, n_points))
    noise[:, 0] = 0.0
    times = np.broadcast_to(t, (n_series, n_points))
    return _long(times, (y + noise)[..., None], ["y"])


def _double_ou(n_series: int, n_points: int, rng: np.random.Generator, t_max: float | None) -> pd.DataFrame:
    horizon = 10.0 if t_max is None else float(t_max)
    dt, theta, sigma, rho = 0.05, 1.0, 0.1, 0.99
    n_grid = int(round(horizon / dt)) + 1
    if n_points > n_grid:
        raise ConfigError(f"n_points={n_points} exceeds the {n_grid} grid times of double_ou; lower it")
    mu = np.stack([rng.uniform(0.5, 1.5, n_series), rng.uniform(-1.5, -0.5, n_series)], axis=1)
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    x = np.zeros((n_series, 2))
    path = np.empty((n_series, n_grid, 2))
    path[:, 0] = x
    for k in range(1, n_grid):
        dw = rng.normal(size=(n_series, 2)) @ chol.T * np.sqrt(dt)
        x = x + theta * (mu - x) * dt + sigma * dw
        path[:, k] = x
    # n_points distinct grid times per series, chosen uniformly without replacement
    pick = np.sort(np.argsort(rng.random((n_series, n_grid)), axis=1)[:, :n_points], axis=1)
    times = pick * dt
    vals = np.take_along_axis(path, pick[..., None], axis=1)
    joint = rng.random((n_series, n_points)) < 0.2
    which = rng.integers(0, 2, (n_series, n_points))
    mask = np.stack([joint | (which == 0), joint | (which == 1)], axis=-1)
    return _long(np.round(times, 10), vals, ["x1", "x2"], mask)


def _pk(n_series: int, n_points: int, rng: np.random.Generator, t_max: float | None) -> pd.DataFrame:
    horizon = 10.0 if t_max is None else float(t_max)
    k = rng.uniform(0.3, 0.7, n_series)
    frames = []
    width = len(str(n_series - 1))
    for s in range(n_series):
        n_inf = int(rng.integers(2, 7))
        start = rng.uniform(0.0, 0.9 * horizon, n_inf)
        stop = start + rng.uniform(0.3, 1.0, n_inf)
        rate = rng.uniform(0.5, 2.0, n_inf)
        # the schedule: total rate after each change point (overlapping infusions add)
        change = np.unique(np.concatenate([[0.0], start, stop]))
        level = np.array([rate[(start <= c) & (c < stop)].sum() for c in change])
        obs = np.sort(rng.uniform(0.0, horizon, n_points))
        # exact solution, piece by piece: c(t) = R/k + (c0 − R/k) e^{−k (t − t0)} while the rate is R
        piece = np.searchsorted(change, obs, side="right") - 1
        c_at = np.zeros(len(change))
        for j in range(1, len(change)):
            r = level[j - 1] / k[s]
            c_at[j] = r + (c_at[j - 1] - r) * np.exp(-k[s] * (change[j] - change[j - 1]))
        r = level[piece] / k[s]
        y = r + (c_at[piece] - r) * np.exp(-k[s] * (obs - change[piece])) + rng.normal(0.0, 0.02, n_points)
        sid = f"s{s:0{width}d}"
        frames.append(pd.DataFrame({"unique_id": sid, "ds": obs, "y": y, "rate": np.nan}))
        frames.append(pd.DataFrame({"unique_id": sid, "ds": change, "y": np.nan, "rate": level}))
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["unique_id", "ds"], kind="stable", ignore_index=True)


def generate(
    name: str,
    n_series: int = 1000,
    n_points: int | None = None,
    seed: int = 0,
    *,
    extrap: str | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
) -> pd.DataFrame:
    """Generate data set ``name`` (one of :data:`NAMES`) as a long DataFrame ``unique_id, ds, <channels>``.

    Args:
        n_series: number of series.
        n_points: points per series (default 100; 20 for double_ou).
        seed: numpy seed: the same arguments always give the same frame.
        extrap: Neural Flows sets only: None, "time" (times in [10, 30]) or "space" (x0 outside the
            training range).
        t_min: override the start of the time range.
        t_max: override the end of the time range.
    """
    if name not in NAMES:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(NAMES)}")
    if extrap not in (None, "time", "space"):
        raise ConfigError(f"extrap={extrap!r} is not supported; use 'time' or 'space'")
    if extrap is not None and name in ("periodic", "double_ou", "pk"):
        raise ConfigError(f"extrap={extrap!r} applies only to the Neural Flows sets, not {name!r}")
    n_points = _DEFAULT_POINTS.get(name, 100) if n_points is None else int(n_points)
    if int(n_series) < 1 or n_points < 2:
        raise ConfigError(f"need n_series >= 1 and n_points >= 2 (got {n_series}, {n_points})")
    rng = np.random.default_rng(seed)
    if name == "periodic":
        return _periodic(int(n_series), n_points, rng, t_max)
    if name == "double_ou":
        return _double_ou(int(n_series), n_points, rng, t_max)
    if name == "pk":
        return _pk(int(n_series), n_points, rng, t_max)
    return _neural_flows(name, int(n_series), n_points, rng, extrap, t_min, t_max)


if __name__ == "__main__":  # pragma: no cover  (the command line lives in ts_neuralode.cli: 'ts-neuralode generate')
    raise SystemExit("run 'ts-neuralode generate NAME --out PATH' (or python -m ts_neuralode.cli generate ...)")

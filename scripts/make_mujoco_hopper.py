"""Generate the MuJoCo Hopper data set of the Latent ODE paper (Rubanova et al. 2019) as a long CSV.

Needs the optional extra: ``pip install .[mujoco]`` (dm_control). Per sequence: the dm_control suite
``hopper`` (task ``stand``) is reset with random initial state — root x/z positions ~ U(0, 0.5) (z > 0
keeps the hopper above ground), the other joint positions ~ U(-2, 2), all velocities ~ U(-5, 5) — and
then simulated without control for ``--n-steps`` physics steps (default 100, regular). The 14-dim state
(7 joint positions ``qpos0..qpos6`` + 7 velocities ``qvel0..qvel6``) is written at every step.

Output columns: ``unique_id, ds, qpos0..qpos6, qvel0..qvel6`` where ``ds`` is the step index (0, 1, ...;
one step = ``physics.timestep()`` seconds, 0.005 s for the suite's hopper). Subsampling (10/20/30/50%
of points) is the DataModule's job (``obs_fraction`` / ``extrap_obs_fraction``), as in the paper.

    python scripts/make_mujoco_hopper.py --out hopper.csv                  # 10,000 x 100 (~1M rows, ~150 MB)
    python scripts/make_mujoco_hopper.py --out small.csv --n-series 100    # quick look

Checked here with dm_control 1.0.50 + mujoco 3.17.0 (dm_control fails on mujoco 4.0, hence the
``mujoco<4`` pin in the extra): 1,000 sequences took 30 s on one CPU core, so the full set takes ~5 min.
Set ``MUJOCO_GL=disable`` on headless machines (no rendering is needed).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def simulate(n_series: int, n_steps: int, seed: int) -> np.ndarray:
    """``[n_series, n_steps, 14]`` hopper states (qpos then qvel)."""
    from dm_control import suite

    env = suite.load("hopper", "stand")
    physics = env.physics
    rng = np.random.default_rng(seed)
    nq, nv = physics.data.qpos.shape[0], physics.data.qvel.shape[0]
    out = np.zeros((n_series, n_steps, nq + nv))
    for i in range(n_series):
        with physics.reset_context():
            physics.data.qpos[:2] = rng.uniform(0.0, 0.5, size=2)
            physics.data.qpos[2:] = rng.uniform(-2.0, 2.0, size=nq - 2)
            physics.data.qvel[:] = rng.uniform(-5.0, 5.0, size=nv)
        for t in range(n_steps):
            out[i, t, :nq] = physics.data.qpos
            out[i, t, nq:] = physics.data.qvel
            physics.step()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the Latent ODE MuJoCo Hopper data set as a long CSV.")
    ap.add_argument("--out", required=True, help="output CSV path")
    ap.add_argument("--n-series", type=int, default=10_000)
    ap.add_argument("--n-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args(argv)
    try:
        import dm_control  # noqa: F401
    except ImportError:
        print(
            "error: dm_control is not installed; install the optional extra with `pip install .[mujoco]` "
            "(or `pip install dm_control`) and rerun",
            file=sys.stderr,
        )
        return 2
    import pandas as pd

    data = simulate(args.n_series, args.n_steps, args.seed)
    n, t, d = data.shape
    cols = [f"qpos{k}" for k in range(d // 2)] + [f"qvel{k}" for k in range(d - d // 2)]
    width = len(str(n - 1))
    df = pd.DataFrame(data.reshape(n * t, d), columns=cols)
    df.insert(0, "ds", np.tile(np.arange(t, dtype=np.int64), n))
    df.insert(0, "unique_id", np.repeat([f"hopper{i:0{width}d}" for i in range(n)], t))
    try:
        df.to_csv(args.out, index=False, float_format="%.7g")
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}; check the directory", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {n} sequences x {t} steps x {d} channels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

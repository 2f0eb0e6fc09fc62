"""``ts-neuralode generate NAME --out PATH [--n_series N] [--n_points T] [--seed S] [--extrap time|space]``: a
synthetic data set (:func:`ts_neuralode.data.generators.generate`, whose signature declares the options) as a file."""

from __future__ import annotations

from collections.abc import Sequence

from ts_neuralode.api.preflight import writable_file
from ts_neuralode.cli.args import parse, subcommand_parser
from ts_neuralode.core.atomic import atomic_write
from ts_neuralode.data.generators import NAMES, generate
from ts_neuralode.data.io import frame_bytes
from ts_neuralode.errors import ConfigError


def _generate_parser():
    p = subcommand_parser(
        "generate",
        "Write a synthetic data set as a long CSV or Parquet file (unique_id, ds, "
        "values); the same options always give the same file.",
    )
    p.add_argument("name", choices=NAMES, help="the data set")
    p.add_argument("--out", type=str, required=True, help="output file (.parquet for Parquet, else CSV)")
    p.add_function_arguments(generate, skip={"name"})
    return p


#: options of ``generate`` in older versions and their spelling now
GENERATE_RENAMES = {"--n-series": "--n_series", "--n-points": "--n_points", "--t-min": "--t_min", "--t-max": "--t_max"}


def main(argv: Sequence[str]) -> int:
    """Run ``ts-neuralode generate`` with the options ``argv``; returns the exit status (user errors raise)."""

    args = parse(_generate_parser(), argv, GENERATE_RENAMES)
    writable_file(args.out, "--out")  # before generating: a data set made and then not written is lost
    df = generate(
        args.name,
        n_series=args.n_series,
        n_points=args.n_points,
        seed=args.seed,
        extrap=args.extrap,
        t_min=args.t_min,
        t_max=args.t_max,
    )
    data = frame_bytes(df, args.out, float_format="%.12g")  # Parquet for a .parquet path, else CSV
    try:  # atomically: a kill during the write leaves the previous file
        atomic_write(args.out, lambda f: f.write(data), parents=False)
    except OSError as exc:
        raise ConfigError(
            f"--out {args.out}: cannot write it ({exc.strerror or type(exc).__name__}); pass a writable path"
        ) from exc
    print(f"wrote {args.out}: {df['unique_id'].nunique()} series, {len(df)} rows")
    return 0

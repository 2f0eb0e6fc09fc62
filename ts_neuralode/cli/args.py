"""How the ``ts-neuralode`` subcommands read their options (the CLI layer only; nothing below imports this).

Every subcommand parser is a jsonargparse parser made by :func:`subcommand_parser`: ``--config FILE`` (YAML with
the same keys), ``--print_config`` (the resolved options as YAML), ``--help`` listing each option with its type,
default and description; options are spelled in snake_case. :func:`parse` refuses an old spelling (``--n-series``,
``--no_tracking``) with one line naming the new one, and :func:`cli_words` rewrites the API's words in an error
(``pass time_col=...``) into the option that sets it (``--data.time_col``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

from ts_neuralode.core.option_hints import option_names, unknown_option_hint
from ts_neuralode.errors import ConfigError

PROG = "ts-neuralode"


def subcommand_parser(name: str, description: str):
    """A jsonargparse parser for ``ts-neuralode NAME`` with ``--config`` and ``--print_config``."""
    p = ArgumentParser(
        prog=f"{PROG} {name}", description=description, exit_on_error=False, default_meta=False, allow_abbrev=False
    )  # no silent abbreviations
    p.add_argument(
        "--config",
        action=ActionConfigFile,
        help="a YAML file of these options (the keys of --print_config); later options override it",
    )
    return p


def check_spelling(argv: Sequence[str], parser, renames: Mapping[str, str] | None = None) -> None:
    """One line for an option spelled as in older versions: ``renames`` maps an old option to the words of its new
    form (``{"--no_tracking": "--tracking false"}``); an unknown ``--a-b`` whose ``--a_b`` exists is named too."""
    known = option_names(parser)
    for arg in argv:
        name = arg.split("=", 1)[0]
        if not name.startswith("--"):
            continue
        snake = "--" + name[2:].replace("-", "_")
        if renames and (name in renames or snake in renames):  # --no_tracking, and --no-tracking too
            raise ConfigError(f"{parser.prog}: {name} is now {renames.get(name) or renames[snake]}")
        if name not in known and snake in known:
            raise ConfigError(f"{parser.prog}: {name} is now {snake} (options are spelled in snake_case)")


def parse(parser, argv: Sequence[str], renames: Mapping[str, str] | None = None, defaults: bool = True):
    """The parsed options (a jsonargparse Namespace; ``defaults=False``: only those given, on the command line or in
    a ``--config`` file); a bad option is one line (ConfigError) naming the fix."""
    argv = list(argv)
    check_spelling(argv, parser, renames)
    try:
        return parser.parse_args(argv, defaults=defaults)
    except argparse.ArgumentError as err:
        text = " ".join(str(err).split())
        old = re.search(r"Option '([^']+)' is not accepted", text)  # a key of a --config file
        if old and renames and f"--{old[1]}" in renames:
            text = f"'{old[1]}' (a key of the config file) is now {renames[f'--{old[1]}']}"
        key = re.search(r'Parser key "([^"]+)"', text)
        if key and "Expected <class 'list'>" in text:  # '--data.value_cols a b' (argparse's nargs) in older versions
            text += f"; write a list as --{key[1]} [a, b] (or an item at a time: --{key[1]}+ a --{key[1]}+ b)"
        text += unknown_option_hint(parser, text)
        raise ConfigError(f"{parser.prog}: {text}; see '{parser.prog} --help'") from err


#: API argument names (``pass time_col=...``) and the CLI options that set them
DATA_OPTIONS = (
    "id_col",
    "time_col",
    "value_cols",
    "mask_cols",
    "time_unit",
    "format",
    "duplicates",
    "time_scale",
    "future_cols",
    "past_cols",
    "static_cols",
    "calendar",
    "future_interp",
    "horizon",
    "context",
    "task",
    "train_end",
    "holdout_shift",
    "season",
    "val_fraction",
    "test_fraction",
    "split_by",
    "windows_per_series",
    "layout",
)
_API_WORDS = re.compile(r"\b(pass|use|set|give|raise|lower|drop) (" + "|".join(DATA_OPTIONS) + r")=")


def cli_words(message: str, group: str = "data") -> str:
    """``pass time_col=...`` -> ``pass --data.time_col ...``: an API error in the words of the command line."""
    return _API_WORDS.sub(lambda m: f"{m.group(1)} --{group}.{m.group(2)} ", message)


__all__ = ["subcommand_parser", "parse", "check_spelling", "cli_words", "DATA_OPTIONS"]

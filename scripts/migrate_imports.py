"""Rewrite imports of the flat module paths (before the layer folders) to the new ones, in place.

    python scripts/migrate_imports.py FILE...        # e.g. the files a branch written before the move adds

Only dotted names are rewritten (``ts_neuralode.fit_api`` -> ``ts_neuralode.api.fitting``; ``from ts_neuralode
import tracking`` -> ``from ts_neuralode.integrations.mlflow import tracking``); names moved between modules by the
splits keep working through the modules that re-export them (``backtest.evaluate``, ``model_choice.summary`` ...).
Prints the files it changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: old module -> new module (the README's architecture table says what each holds)
MOVES = {
    "ts_neuralode.lightning.module": "ts_neuralode.training.module",
    "ts_neuralode.lightning.options": "ts_neuralode.training.options",
    "ts_neuralode.lightning.trainer_parts": "ts_neuralode.training.checkpoints",
    "ts_neuralode.lightning.cli": "ts_neuralode.cli.lightning",
    "ts_neuralode.lightning": "ts_neuralode.training",
    "ts_neuralode.benchmark.cli": "ts_neuralode.cli.benchmark",
    "ts_neuralode.benchmark": "ts_neuralode.api.benchmark",
    "ts_neuralode.atomic": "ts_neuralode.core.atomic",
    "ts_neuralode.threads": "ts_neuralode.core.threads",
    "ts_neuralode.noise": "ts_neuralode.core.noise",
    "ts_neuralode.forecast_frame": "ts_neuralode.api.forecast_frame",
    "ts_neuralode.query_times": "ts_neuralode.data.query_times",
    "ts_neuralode.step_budget": "ts_neuralode.models.step_budget",
    "ts_neuralode.callbacks": "ts_neuralode.training.callbacks",
    "ts_neuralode.model_store": "ts_neuralode.training.model_store",
    "ts_neuralode.metrics": "ts_neuralode.training.metrics",
    "ts_neuralode.tracking": "ts_neuralode.integrations.mlflow.tracking",
    "ts_neuralode.mlflow_io": "ts_neuralode.integrations.mlflow.io",
    "ts_neuralode.mlflow_model": "ts_neuralode.integrations.mlflow.logged_model",
    "ts_neuralode.forecaster": "ts_neuralode.api.forecaster",
    "ts_neuralode.fit_api": "ts_neuralode.api.fitting",
    "ts_neuralode.export": "ts_neuralode.api.export",
    "ts_neuralode.backtest_cli": "ts_neuralode.cli.backtest",
    "ts_neuralode.backtest": "ts_neuralode.api.backtest",
    "ts_neuralode.calibration": "ts_neuralode.api.calibration",
    "ts_neuralode.model_choice_cli": "ts_neuralode.cli.model_choice",
    "ts_neuralode.model_choice_space": "ts_neuralode.api.model_choice_space",
    "ts_neuralode.model_choice_ensemble": "ts_neuralode.api.model_choice_ensemble",
    "ts_neuralode.model_choice": "ts_neuralode.api.model_choice",
    "ts_neuralode.plotting": "ts_neuralode.api.plotting",
    "ts_neuralode.preflight": "ts_neuralode.api.preflight",
    "ts_neuralode.cli_args": "ts_neuralode.cli.args",
    "ts_neuralode.generate_cli": "ts_neuralode.cli.generate",
}
_PATTERN = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(k) for k in sorted(MOVES, key=len, reverse=True)) + r")(?![\w])"
)
_SHORT = {old.split(".", 1)[1]: new for old, new in MOVES.items() if old.count(".") == 1}
_FROM = re.compile(r"^([ \t]*)from ts_neuralode import ([\w ,]+?)([ \t]*(#.*)?)$", re.M)


def _split_from(match: re.Match) -> str:
    indent, names, tail = match.group(1), [n.strip() for n in match.group(2).split(",")], match.group(3)
    kept, lines = [], []
    for name in names:
        base, _, alias = name.partition(" as ")
        if base.strip() in _SHORT:
            package, _, module = _SHORT[base.strip()].rpartition(".")
            lines.append(f"{indent}from {package} import {module}" + (f" as {alias.strip()}" if alias else ""))
        else:
            kept.append(name)
    if kept:
        lines.insert(0, f"{indent}from ts_neuralode import {', '.join(kept)}")
    return "\n".join(lines) + tail


def migrate(text: str) -> str:
    """``text`` with every old module path rewritten."""
    return _PATTERN.sub(lambda m: MOVES[m.group(1)], _FROM.sub(_split_from, text))


def main(paths: list[str]) -> None:
    for p in map(Path, paths):
        old = p.read_text()
        new = migrate(old)
        if new != old:
            p.write_text(new)
            print(p)


if __name__ == "__main__":
    main(sys.argv[1:])

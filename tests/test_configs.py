"""Every shipped config parses with the CLI (options exist, values are valid) — a typo fails here, not for a user."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from ts_neuralode.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_resolves_every_option(config):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    resolved = yaml.safe_load(out.getvalue())
    shipped = yaml.safe_load(config.read_text())
    for section in ("model", "data"):
        for key, value in shipped.get(section, {}).items():
            if isinstance(value, dict) and key == "evolution":  # a nested group: the options it sets
                for sub, v in value.items():
                    assert resolved[section][key][sub] == v, f"{config.name}: {section}.{key}.{sub}"
                continue
            assert resolved[section][key] == value, f"{config.name}: {section}.{key}"
    assert len(CONFIGS) >= 10

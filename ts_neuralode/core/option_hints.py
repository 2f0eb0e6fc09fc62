"""Which option a mistyped one most likely meant: the hint the command line's "unrecognized arguments" errors end
with (``ts-neuralode fit --max_epochs 3`` -> ``did you mean --trainer.max_epochs``). Plain Python over a
jsonargparse parser's actions (no Lightning import: the light subcommands use it too)."""

from __future__ import annotations

import difflib
import re


def option_names(parser) -> set[str]:
    """Every ``--option`` of a jsonargparse parser, its subcommands' included."""
    names: set[str] = set()
    for action in parser._actions:  # jsonargparse keeps argparse's action list
        names.update(s for s in action.option_strings if s.startswith("--"))
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):  # a subcommands action: {name: parser}
            for sub in choices.values():
                if hasattr(sub, "_actions"):
                    names |= option_names(sub)
    return names


def ending_in(known, name: str) -> list[str]:
    """The options of ``known`` whose last dotted part is ``name`` (``max_epochs`` -> ``--trainer.max_epochs``)."""
    return sorted(k for k in known if k.rsplit(".", 1)[-1].lstrip("-") == name)


def unknown_option_hint(parser, message: str) -> str:
    """For an "unrecognized arguments" parser error: `` (did you mean --trainer.max_epochs for --max_epochs?)``, the
    options of ``parser`` an unknown one most likely meant (the same last part of a dotted name, a group's options,
    else a close spelling); ``""`` when there is nothing to suggest."""
    found = re.search(r"nrecognized arguments: (.*)", message)
    if not found:
        return ""
    known = sorted(option_names(parser))
    hints = []
    for word in found[1].split():
        name = word.split("=", 1)[0].rstrip(";,")
        if not name.startswith("--") or name in known:
            continue
        hits = (
            ending_in(known, name[2:])
            or [k for k in known if k.startswith(name + ".")]
            or difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        )
        if hits:
            hints.append(f"{' or '.join(hits[:3])} for {name}")
    return f" (did you mean {'; '.join(hints)}?)" if hints else ""


__all__ = ["ending_in", "option_names", "unknown_option_hint"]

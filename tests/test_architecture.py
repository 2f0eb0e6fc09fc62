"""The import structure, measured from the source (scripts/import_graph.py): the figures the README states."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = graph  # dataclasses look their module up there
_spec.loader.exec_module(graph)

EDGES = graph.edges(ROOT)


def test_no_import_cycles_counting_imports_inside_functions():
    assert graph.cycles(EDGES) == []


def test_few_project_imports_inside_functions():
    """Imports inside functions only where a module is worth not loading (the CLI's subcommand dispatch)."""
    inner = [f"{e.source}:{e.line} -> {e.target}" for e in EDGES if e.in_function]
    assert len(inner) < 15, inner
    assert all(line.startswith("ts_neuralode.cli.") for line in inner), inner


def test_no_import_climbs_the_layers():
    order = graph.layers(ROOT)
    assert len(order) >= 8  # the contract of pyproject.toml was read
    up = [f"{e.source}:{e.line} -> {e.target}" for e in graph.upward(EDGES, order)]
    assert len(up) <= 3, up


def test_every_module_sits_on_a_layer():
    order = graph.layers(ROOT)
    loose = [
        m
        for m in graph.modules(ROOT)
        if m != "ts_neuralode"
        and graph.layer_of(m, order) is None
        and m not in ("ts_neuralode.integrations", "ts_neuralode.integrations.mlflow")
    ]
    assert loose == []


def test_the_graph_sees_an_import_inside_a_function(tmp_path):
    """The counter itself: a lazy import that closes a loop is a cycle and counts as inside a function."""
    pkg = tmp_path / "ts_neuralode"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from ts_neuralode.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from ts_neuralode import a\n    return a\n")
    edges = graph.edges(tmp_path)
    assert [(e.source, e.target, e.in_function) for e in sorted(edges, key=lambda e: e.source)] == [
        ("ts_neuralode.a", "ts_neuralode.b", False),
        ("ts_neuralode.b", "ts_neuralode.a", True),
    ]
    assert graph.cycles(edges) == [["ts_neuralode.a", "ts_neuralode.b"]]

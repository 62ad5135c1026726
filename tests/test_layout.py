"""The package layout: import directions without cycles, a numpy-only server core, no module over 400 lines.

Checked by `.venv/bin/python -m pytest -q tests/test_layout.py` (part of `make test`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "trainer", "export", "clients")
# The server's numpy-only modules that trainer/ and export/ may import.
SERVER_PURE = ("features", "metrics", "csr", "manifest", "splits", "numerics")
MAX_LINES = 400


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path, package: str) -> set[str]:
    """Every towerserve package ``path`` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif node.level == 1:
                names = [f"towerserve.{package}"]
            else:  # from ..trainer import x, or from .. import trainer: above the package is towerserve
                names = [f"towerserve.{node.module or a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "towerserve" and len(parts) > 1 and parts[1] in PACKAGES:
                found.add(parts[1])
    return found


def import_graph() -> dict[str, dict[str, list[str]]]:
    """package -> {imported package -> the files importing it}, self-imports left out."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in _modules(package):
            for target in _imported_packages(path, package) - {package}:
                graph[package].setdefault(target, []).append(str(path.relative_to(ROOT)))
    return graph


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_import_graph_is_read_from_every_import_form():
    # The parser must see relative, absolute and function-level imports, or the checks below prove nothing.
    seen = import_graph()
    assert "server" in seen["trainer"], "trainer imports server's pure modules (features, csr, ...)"
    assert "trainer" in seen["export"], "export imports trainer's models inside functions"
    assert {"server", "trainer", "export"} <= set(seen["clients"]), (
        "clients/cli.py dispatches to every package"
    )
    assert _cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {}, "c": {"a": []}}) is None


def test_no_import_cycle_between_packages():
    graph = import_graph()
    cycle = _cycle(graph)
    assert cycle is None, (
        "import cycle "
        + " -> ".join(cycle)
        + "".join(f"\n  {a} -> {b}: {', '.join(graph[a][b])}" for a, b in zip(cycle, cycle[1:]))
    )


def test_server_imports_nothing_from_trainer_export_or_clients():
    assert import_graph()["server"] == {}, f"server imports {import_graph()['server']}"


def _loaded(imports: str, watch: tuple[str, ...]) -> list[str]:
    code = f"import sys; {imports}; print([m for m in {watch!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip())


def test_server_pure_modules_load_no_grpc_onnxruntime_or_training_stack():
    imports = "; ".join(f"import towerserve.server.{m}" for m in SERVER_PURE)
    assert _loaded(imports, ("grpc", "onnxruntime", "tensorflow", "torch", "keras")) == []


def test_the_command_line_parser_loads_only_the_standard_library():
    # `towerserve --help` builds every package's subcommands; a client-only install has none of these.
    imports = "from towerserve.clients.cli import build_parser; build_parser()"
    heavy = ("grpc", "numpy", "onnxruntime", "tensorflow", "torch", "pandas", "tqdm")
    assert _loaded(imports, heavy) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_400_lines(package):
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"

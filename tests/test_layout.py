"""The package layout: the direction of imports between units, no import cycle between modules, no
import of another module's private names, a server core without grpc or onnxruntime, and no long
function without its reason.

Units are the top-level packages and the server's subpackages. What each may import is written down
once, in ALLOWED; everything below reads every import form (top-level, function-level, relative,
``if TYPE_CHECKING``), so a type-only import counts as a dependency too.

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

# unit -> the units it may import. Read downwards: core is shared by everything and imports no other
# unit; the catalogue (columns, index, journal) knows nothing of the engine; the engine knows nothing
# of gRPC's service; batch jobs drive the engine through the app's bundle resolution.
ALLOWED: dict[str, set[str]] = {
    "server": set(),  # the package itself: a docstring
    "server.core": set(),
    "server.catalog": {"server.core"},
    "server.engine": {"server.core", "server.catalog"},
    "server.api": {"server.core", "server.catalog", "server.engine"},
    "server.batch": {"server.core", "server.catalog", "server.engine", "server.api"},
    # ONNX text encoding has one home, the engine's encoder, which training's ONNX path reuses;
    # `train --events` reads recorded interactions from the server's journal (catalog).
    "trainer": {"server.core", "server.catalog", "server.engine"},
    "export": {"server.core", "server.catalog", "server.engine", "trainer"},
    # The client library itself loads the core only (test_the_client_library_loads_...); `promote`
    # judges a candidate with the engine and reads the journal, lazily, as the top of the stack may.
    "clients": {"server.core", "server.catalog", "server.engine"},
}
# The app's entry point dispatches to every package's command line (each imports only argparse at
# the top: test_the_command_line_parser_loads_only_the_standard_library).
ENTRY_POINT = "towerserve.clients.cli"
HEAVY = ("grpc", "onnxruntime", "tensorflow", "torch", "keras", "faiss", "ray", "psycopg")
MAX_FUNCTION_LINES = 80
LONG_REASON = "Long because"  # a function over the limit says why in its docstring, starting so


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / package).with_suffix("").parts if p != "__init__"]
            out[".".join(["towerserve", package, *parts])] = path
    return out


def _targets(name: str, is_package: bool, node: ast.ImportFrom, known: set[str]) -> list[tuple[str, str]]:
    """(module imported, name imported from it or "") for one ``from ... import`` statement."""
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.append((sub, "") if sub in known else (source, alias.name))
    return out


def imports(source: str, name: str, is_package: bool, known: set[str]) -> list[tuple[str, str]]:
    """Every (module, imported name or "") that ``source`` (module ``name``) imports, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            found += _targets(name, is_package, node, known)
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names]
    return found


def import_graph() -> dict[str, dict[str, set[str]]]:
    """module -> {towerserve module it imports -> the names it takes from it}, self-imports left out."""
    mods = modules()
    known = set(mods)
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in mods.items():
        edges: dict[str, set[str]] = {}
        for target, item in imports(path.read_text(), name, path.name == "__init__.py", known):
            if target in known and target != name:
                edges.setdefault(target, set()).update({item} - {""})
        graph[name] = edges
    return graph


def unit(module: str) -> str:
    """``server.<subpackage>`` for the server's modules, else the top-level package."""
    parts = module.split(".")
    return ".".join(parts[1:3]) if parts[1] == "server" and len(parts) > 3 else parts[1]


def find_cycle(graph: dict[str, dict[str, set[str]]] | dict[str, dict]) -> list[str] | None:
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


def private_imports(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    """``a imports b._x`` for every private name one module takes from another."""
    return sorted(
        f"{a} imports {b}.{n}"
        for a, edges in graph.items()
        for b, names in edges.items()
        for n in names
        if n.startswith("_") and not n.startswith("__")
    )


def direction_breaks(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    """Imports from one unit into another that ALLOWED does not list."""
    out = []
    for a, edges in graph.items():
        if a == ENTRY_POINT:
            continue
        for b in edges:
            ua, ub = unit(a), unit(b)
            if ua != ub and ub not in ALLOWED[ua]:
                out.append(f"{a} -> {b} ({ua} may import {sorted(ALLOWED[ua]) or 'no other unit'})")
    return sorted(out)


def long_functions() -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines whose docstring does not say why."""
    out = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if length > MAX_FUNCTION_LINES and LONG_REASON not in doc:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


# --- the checker checks -----------------------------------------------------------------------------


def test_the_graph_is_read_from_every_import_form():
    # The parser must see relative, absolute and function-level imports, or the checks below prove nothing.
    graph = import_graph()
    assert "towerserve.server.core.csr" in graph["towerserve.trainer.collab"]  # absolute
    assert "towerserve.server.engine.engine" in graph["towerserve.server.api.servicer"]  # relative, ..
    assert "towerserve.trainer.models" in graph["towerserve.export.towers"]  # inside a function
    known = {"p.a", "p.b", "p"}
    src = "from . import b\nfrom .b import _x, y\ndef f():\n    import p.a\n"
    assert imports(src, "p.a", False, known) == [("p.b", ""), ("p.b", "_x"), ("p.b", "y"), ("p.a", "")]


def test_a_planted_cycle_private_import_and_wrong_direction_are_found():
    planted = {"a": {"b": set()}, "b": {"c": {"_hidden"}}, "c": {"a": set()}}
    assert find_cycle(planted) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": set()}, "b": {}, "c": {"a": set()}}) is None
    assert private_imports(planted) == ["b imports c._hidden"]
    wrong = {"towerserve.server.core.csr": {"towerserve.server.engine.engine": set()}}
    assert direction_breaks(wrong) == [
        "towerserve.server.core.csr -> towerserve.server.engine.engine (server.core may import no other unit)"
    ]


def test_every_unit_is_in_the_direction_table():
    assert {unit(m) for m in modules()} == set(ALLOWED)
    assert find_cycle({a: dict.fromkeys(b) for a, b in ALLOWED.items()}) is None


# --- the rules ------------------------------------------------------------------------------------------


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    assert private_imports(import_graph()) == []


def test_units_import_only_in_the_written_direction():
    assert direction_breaks(import_graph()) == []


def test_no_function_over_80_lines_without_its_reason():
    assert long_functions() == [], f'say why in the docstring ("{LONG_REASON} ...") or split by concept'


def _loaded(imports: str, watch: tuple[str, ...]) -> list[str]:
    code = f"import sys; {imports}; print([m for m in {watch!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip())


def test_the_server_core_loads_no_grpc_onnxruntime_or_training_stack():
    core = sorted(m for m in modules() if unit(m) == "server.core")
    assert len(core) > 10
    assert _loaded("; ".join(f"import {m}" for m in core), HEAVY) == []


@pytest.mark.parametrize("module", ["towerserve.clients.client", "towerserve.clients.aio"])
def test_the_client_library_loads_grpc_protobuf_and_the_core_only(module):
    loaded = _loaded(f"import {module}", HEAVY[1:] + ("towerserve.server.engine", "towerserve.server.api"))
    assert loaded == []


def test_the_command_line_parser_loads_only_the_standard_library():
    # `towerserve --help` builds every package's subcommands; a client-only install has none of these.
    imports = "from towerserve.clients.cli import build_parser; build_parser()"
    heavy = ("grpc", "numpy", "onnxruntime", "tensorflow", "torch", "pandas", "tqdm")
    assert _loaded(imports, heavy) == []

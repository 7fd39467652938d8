"""The house's layout holds: no import cycle, and no room imports a room above it.

Rooms of ``taco_jax`` from the bottom up (a module may import its own room and the rooms below):
shared plumbing and models; training; task data; pruning; export, reports, the resumable stage
runner and the generalist; the methods; run plumbing and benchmarks. BUILD_NOTES.md's
architecture map describes the same order.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = (
    {"distributed", "checkpoint", "config_variants", "files", "memory", "models", "convert",
     "kernels"},
    {"train"},
    {"data"},
    {"prune"},
    {"export", "report", "stages", "generalist"},
    {"methods"},
    {"run", "bench"},
)
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for folder in (ROOT / "taco_jax", ROOT / "kernels"):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            prefix = ["taco_jax"] + (["kernels"] if folder.name == "kernels" else [])
            out[".".join(prefix + parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the taco_jax modules it imports (module level or inside functions)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[mod] |= {t for t in targets if t in mods and t != mod}
    return edges


def _room(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "taco_jax"


def test_every_room_has_a_layer():
    rooms = {_room(m) for m in _modules()} - {"taco_jax"}
    assert rooms <= set(RANK), f"rooms without a layer in this test: {rooms - set(RANK)}"


def test_no_room_imports_a_room_above_it():
    bad = sorted(f"{a} imports {b}" for a, targets in import_graph().items() for b in targets
                 if _room(b) != "taco_jax" and _room(a) != "taco_jax"
                 and RANK[_room(b)] > RANK[_room(a)])
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"

"""The folders are layers: this test reads every import (lazy ones too) and fails on a cycle or a
forbidden edge, so the layout keeps telling the truth as the code changes."""

import ast
from pathlib import Path

import schedd

ROOT = Path(schedd.__file__).parent
BASE = {"schedd", "schedd.bus", "schedd.gpus", "schedd.config", "schedd.errors", "schedd.faults", "schedd.protocol"}

# (importer prefix, imported prefix, why it must not happen)
FORBIDDEN = [
    ("schedd.core", "schedd.api", "the core is driven by the APIs, it never calls them"),
    ("schedd.core", "schedd.cluster", "the core reaches the cluster through its ClusterHooks protocol only"),
    ("schedd.core", "schedd.daemon", "wiring sits above everything"),
    ("schedd.core", "schedd.executor.systemd", "the core sees the executor seam, not a driver"),
    ("schedd.core", "schedd.executor.plain", "the core sees the executor seam, not a driver"),
    ("schedd.core", "schedd.executor.fake", "the core sees the executor seam, not a driver"),
    ("schedd.core", "schedd.executor.gate", "the core sees the executor seam, not a driver"),
    ("schedd.executor", "schedd.core.engine", "drivers report exits through a callback, not to the engine"),
    ("schedd.executor", "schedd.core.store", "drivers keep no job records"),
    ("schedd.executor", "schedd.api", "drivers know no API"),
    ("schedd.executor", "schedd.cluster", "drivers know no peers"),
    *[("schedd.executor.base", f"schedd.executor.{m}", "the seam imports no driver (Nomad's plugins/drivers)")
      for m in ("gate", "gated", "systemd", "plain", "fake")],
    ("schedd.executor.exits", "schedd.executor.", "the seam's types stand alone"),
    ("schedd.api.http", "schedd.api.dbus", "HTTP serves the core, not the D-Bus adapter"),
    ("schedd.api.dbus", "schedd.api.http", "D-Bus serves the core, not the HTTP adapter"),
    ("schedd.cluster", "schedd.api.dbus", "peers speak HTTP; D-Bus is the local face"),
    ("schedd.cluster", "schedd.daemon", "wiring sits above everything"),
    ("schedd.api", "schedd.daemon", "wiring sits above everything"),
    ("schedctl", "schedd.core.engine", "the client speaks D-Bus, it never runs the engine"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every schedd module named by an import in the file, resolved to the module (not the name)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in ("schedd", "schedctl")}


def graph() -> dict[str, set[str]]:
    files = list(ROOT.rglob("*.py")) + list((ROOT.parent / "schedctl").rglob("*.py"))
    names = {module_name(f): f for f in files}
    edges: dict[str, set[str]] = {}
    for name, f in names.items():
        edges[name] = {m for m in imports_of(f) if m in names and m != name}
    return edges


def test_the_graph_is_read():
    g = graph()
    assert "schedd.core.engine.table" in g and "schedd.core.model" in g["schedd.core.engine.table"]


def test_no_import_cycle():
    g = graph()
    # Package __init__ re-exports are edges to their own children; a cycle through them is still one.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _under(name: str, prefix: str) -> bool:
    """A prefix ending in a dot names a package's children only; otherwise the module and below."""
    return name.startswith(prefix) if prefix.endswith(".") else name == prefix or name.startswith(prefix + ".")


def test_layers():
    bad = [f"{importer} imports {m}: {why}"
           for importer, imported in graph().items() for m in imported
           for a, b, why in FORBIDDEN if _under(importer, a) and _under(m, b)]
    assert not bad, "\n".join(sorted(bad))


def test_base_modules_import_no_layer():
    g = graph()
    for name in BASE:
        above = {m for m in g[name] if m not in BASE}
        assert not above, f"{name} is a base module but imports {sorted(above)}"

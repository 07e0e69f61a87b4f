"""The package's layout rules, read from the source: no import cycles, lazy imports only for heavy extras."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pi_search"
# Function-level imports of the package's own modules are allowed only into these (they pull TensorFlow or
# are offline tools the daemon never loads).
LAZY_OK = ("pi_search.export", "pi_search.tools")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _target(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """Absolute names of the package modules an ImportFrom refers to."""
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if not mod.startswith("pi_search"):
        return []
    return [mod] + [f"{mod}.{a.name}" for a in node.names]


def _imports() -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported package module, at function level?, line)]."""
    mods = _modules()
    out: dict[str, list[tuple[str, bool, int]]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        found = []
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = _target(name, path, node)
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pi_search")]
            else:
                continue
            for n in names:
                if n in mods and n != name:
                    found.append((n, id(node) not in top, node.lineno))
        out[name] = found
    return out


def test_no_import_cycles_in_the_package():
    graph = {m: {t for t, _, _ in deps} for m, deps in _imports().items()}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ re-exporting its submodules is not a cycle of code
            real = [c for c in comp if not any(c != o and o.startswith(c + ".") for o in comp)]
            if len(real) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert graph["pi_search.live.catalog"], "the import graph was not read"
    assert cycles == []


def test_function_level_imports_only_keep_heavy_parts_lazy():
    bad = [f"{m}:{line} imports {t}" for m, deps in _imports().items() for t, lazy, line in deps
           if lazy and not t.startswith(LAZY_OK)]
    assert bad == []


def test_importing_the_package_and_the_daemon_loads_no_optional_extra():
    code = ("import sys, pi_search, pi_search.cli, pi_search.bootstrap; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'picamera2', 'usearch', 'faiss', 'ray', 'torch', 'pi_search'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pi_search']"
    code = ("import sys, pi_search.cli; print(sorted(m for m in sys.modules "
            "if m.startswith(('pi_search.tools', 'pi_search.export'))))")
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ layers
# The table of rooms in docs/development.md ("Where things are") is the rule: each row names its room(s) and,
# in its last column, the rooms it may import. A room always may import itself.
DOC = PKG.parent / "docs" / "development.md"
BASE = ("errors", "config", "images", "progress")


def _layers() -> dict[str, set[str]]:
    """room -> rooms it may import, read from the doc's table."""
    text = DOC.read_text()
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`pi_search/"):
            continue
        rooms = [r.removeprefix("pi_search/").strip("/").removesuffix(".py")
                 for r in re.findall(r"`(pi_search/[\w./]+)`", cells[0])]
        may = set()
        for word in re.findall(r"[\w.]+", cells[-1]):
            may.update(BASE if word == "base" else (word.removesuffix(".py"),))
        for room in rooms:
            rules[room] = may
    return rules


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_room_imports_only_what_the_layer_table_allows():
    rules = _layers()
    rooms = {_room(m) for m in _modules()} - {""}
    assert rooms <= set(rules), f"rooms missing from the table in docs/development.md: {rooms - set(rules)}"
    bad = []
    for module, deps in _imports().items():
        here = _room(module)
        for target, _, line in deps:
            there = _room(target)
            if there and there != here and there not in rules[here]:
                allowed = ", ".join(sorted(rules[here]))
                bad.append(f"{module}:{line} imports {target} ({here} may import: {allowed})")
    assert bad == []


def test_the_layer_table_has_no_cycle_so_no_import_runs_back_up():
    rules = _layers()
    seen: dict[str, int] = {}

    def visit(room: str, path: tuple[str, ...]) -> None:
        assert room not in path, f"the layer table allows a cycle: {' -> '.join(path + (room,))}"
        if seen.get(room):
            return
        for other in rules.get(room, ()):
            if other != room:
                visit(other, path + (room,))
        seen[room] = 1

    for room in rules:
        visit(room, ())


def test_the_bundle_format_imports_no_room_above_it():
    """The bundle is opened by tools that never load a daemon: its room stays at the bottom."""
    deps = {_room(t) for m, ds in _imports().items() if _room(m) == "bundle" for t, _, _ in ds}
    assert deps <= {"bundle", "errors", "config", "images", "barcodes", "progress"}, deps

"""The package's layout rules, read from the source: no import cycles, lazy imports only for heavy extras."""

from __future__ import annotations

import ast
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

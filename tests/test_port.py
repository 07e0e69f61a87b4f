"""The web's port: ``app.Appliance`` lists what the web uses, ``app.Kiosk`` implements all of it, and the web
reaches the appliance through nothing else."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from pi_search.app import Appliance, FrameLoop, Kiosk
from pi_search.pipeline.worker import Worker

WEB = Path(__file__).resolve().parent.parent / "pi_search" / "web"


def _members(protocol) -> set[str]:
    names = {n for n, v in vars(protocol).items() if not n.startswith("_") and (callable(v) or
                                                                               isinstance(v, property))}
    return names | set(getattr(protocol, "__annotations__", {}))


def test_kiosk_implements_every_member_of_the_port_with_its_parameters():
    members = _members(Appliance)
    assert {"latest", "search_image", "health", "reload_bundle", "install_bundle", "relearn", "catalog",
            "teaching", "stats", "upload_slot"} <= members
    for name in members:
        assert hasattr(Kiosk, name), name
        declared, made = getattr(Appliance, name), getattr(Kiosk, name)
        if inspect.isfunction(declared):
            params = list(inspect.signature(declared).parameters)
            assert params == list(inspect.signature(made).parameters), name


def test_the_worker_is_the_frame_loop_and_no_more():
    for name in _members(FrameLoop) - {"stats", "source_name"}:   # instance attributes
        assert hasattr(Worker, name), name
    for moved in ("health", "search_image", "reload_bundle", "upload_slot"):   # served by the port
        assert not hasattr(Worker, moved), moved


def _is_appliance(node: ast.expr) -> bool:
    """``_appliance()``, ``port``, ``appliance`` or ``self.port``."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "_appliance"
    if isinstance(node, ast.Name):
        return node.id in ("port", "appliance")
    return isinstance(node, ast.Attribute) and node.attr == "port" and isinstance(node.value, ast.Name) \
        and node.value.id == "self"


def _uses_of_the_appliance(tree: ast.AST) -> list[tuple[str, int]]:
    """``X`` of every ``port.X``, ``appliance.X``, ``self.port.X`` and ``_appliance().X`` in a module."""
    return [(n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and _is_appliance(n.value)]


def test_the_web_uses_only_what_the_port_declares():
    members = _members(Appliance)
    seen, unknown = set(), []
    for path in sorted(WEB.glob("*.py")):
        source = path.read_text()
        if "_appliance" not in source and "Appliance" not in source:   # a ``port`` there is a TCP port
            continue
        for attr, line in _uses_of_the_appliance(ast.parse(source)):
            seen.add(attr)
            if attr not in members:
                unknown.append(f"{path.name}:{line} uses .{attr}")
    assert unknown == []
    assert {"latest", "search_image", "health", "reload_bundle", "catalog", "upload_slot"} <= seen

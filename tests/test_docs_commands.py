"""docs/commands.md's command reference is what the commands' own --help says (regenerate it when not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from pi_search.cli import main
from pi_search.cli.reference import BEGIN, DOC, END, reference, with_reference

ROOT = Path(__file__).resolve().parent.parent


def _leaf_paths(group: click.Group, prefix: str = "pi-search") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        out += _leaf_paths(cmd, path) if isinstance(cmd, click.Group) else [path]
    return out


def test_commands_md_matches_the_help():
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert with_reference(text, reference()) == text, \
        "docs/commands.md differs from --help: run python -m pi_search.cli.reference --write"


def test_the_reference_has_every_command_and_option_as_help_prints_it():
    ref = reference()
    for path in _leaf_paths(main):
        assert f"\n### `{path}`\n" in ref, path
    serve = ref[ref.index("### `pi-search serve`"):].split("\n### ", 1)[0]
    cli = [sys.executable, "-c", "from pi_search.cli import main; main()"]
    helped = subprocess.run([*cli, "serve", "--help"], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout
    for option in ("--config FILE", "--source TEXT", "--bundle PATH", "--host TEXT", "--port INTEGER"):
        assert option in helped and f"`{option}`" in serve, option


def test_check_mode_says_when_the_doc_is_stale(tmp_path, monkeypatch):
    from pi_search.cli import reference as command_docs

    stale = tmp_path / "commands.md"
    stale.write_text(DOC.read_text().replace("### `pi-search serve`", "### `pi-search serve-old`"))
    monkeypatch.setattr(command_docs, "DOC", stale)
    assert command_docs.main(["--check"]) == 1
    assert command_docs.main(["--write"]) == 0
    assert command_docs.main(["--check"]) == 0
    assert stale.read_text() == DOC.read_text()

"""The commands' --help texts: every doc they point to exists, with the heading named."""

from __future__ import annotations

import re

import click
from test_docs_links import ROOT, anchors

from pi_search.cli import main

DOC_REF = re.compile(r"\b((?:docs/)?[\w-]+\.md)(?:#([\w-]+))?")


def _help_texts(cmd: click.Command, path: str = "pi-search"):
    yield path, cmd.help or ""
    for param in cmd.params:
        yield f"{path} {'/'.join(getattr(param, 'opts', [param.name]))}", getattr(param, "help", None) or ""
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _help_texts(sub, f"{path} {name}")


def test_help_points_only_to_docs_and_headings_that_exist():
    refs = []
    for where, text in _help_texts(main):
        assert "README, " not in text, f"{where}: name a file and heading: {text}"
        for file_part, anchor in DOC_REF.findall(text):
            dest = ROOT / file_part
            assert dest.is_file(), f"{where}: {file_part}: no such file"
            if anchor:
                assert anchor in anchors(dest), f"{where}: no heading #{anchor} in {file_part}"
            refs.append(file_part)
    assert "docs/scale.md" in refs  # index build --trees names where its default is explained

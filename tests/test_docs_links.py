"""README.md and docs/*.md: every relative link reaches a file or heading; the README keeps its commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """One line per relative link in ``path`` whose file or anchor does not exist."""
    bad = []
    for m in LINK.finditer(prose(path.read_text())):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):     # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{path.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {target}: no heading '#{anchor}' in {dest.name}")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_relative_links_reach_a_file_and_heading(doc):
    assert broken_links(doc) == []


def test_the_checker_sees_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The `serve` command (daemon)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#the-serve-command-daemon) [ok](#page)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) ![gone](pic.png)\n"
        "`[not a link](nothing.md)`\n\n```md\n[not a link](nothing.md)\n```\n[web](https://example.org/x)\n")
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nowhere: no heading '#nowhere' in other.md",
        "page.md: pic.png: no such file",
    ]


def test_every_doc_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name}" in readme, f"README.md does not link docs/{doc.name}"


def test_readme_keeps_the_commands_people_and_ci_type():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "./install.sh --dev --export && .venv/bin/python -m pytest"
    assert test_command in ci
    assert f"\n{test_command}\n" in readme
    assert "\n./install.sh --dev && .venv/bin/pi-search demo\n" in readme
    assert '\n.venv/bin/python -m pytest -m "not slow"\n' in readme


def shell_lines(text: str) -> list[str]:
    """The lines of the ``sh`` code blocks of a markdown text."""
    out, lang = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
        elif lang == "sh":
            out.append(line)
    return out


def test_commands_name_the_program_by_its_path():
    # Not on PATH: .venv/bin/pi-search in a checkout, /opt/pi-search/venv/bin/pi-search on the Pi.
    bare = re.compile(r"^\s*(\$ )?(sudo (-u \S+ )?)?pi-search\b")
    assert bare.match("sudo -u pi-search pi-search item list")
    assert not bare.match("sudo -u pi-search /opt/pi-search/venv/bin/pi-search item list")
    for doc in DOCS:
        lines = shell_lines(doc.read_text())
        assert all(not bare.match(line) for line in lines), [line for line in lines if bare.match(line)]
    readme = shell_lines((ROOT / "README.md").read_text())
    assert any("sudo -u pi-search /opt/pi-search/venv/bin/pi-search" in line for line in readme)


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail into docs/"

"""docs/commands.md's command reference, made from the click commands' own help (``--write``, ``--check``)."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from . import main as cli_main

BEGIN = "<!-- made by python -m pi_search.cli.reference --write: edit the commands' help, not this -->"
END = "<!-- /generated -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Every command below ``group`` with its context, in the order ``--help`` lists them."""
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub)
        else:
            yield cmd, sub


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:  # an argument: named in the usage line
            continue
        opts, help_text = record
        rows.append(f"| `{opts}` | {_cell(help_text)} |")
    return rows


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def reference(group: click.Group = cli_main) -> str:
    """The generated part of docs/commands.md: a summary table, then each command's usage, help, options."""
    root = click.Context(group, info_name="pi-search", **group.context_settings)
    commands = list(_commands(group, root))
    out = ["| command | what it does |", "|---|---|"]
    for cmd, ctx in commands:
        summary = _cell(cmd.get_short_help_str(200))
        out.append(f"| [`{ctx.command_path}`](#{_anchor(ctx.command_path)}) | {summary} |")
    out += ["", "Options of `pi-search` itself, before the command:", "", "| option | |", "|---|---|",
            *_options(group, root)]
    for cmd, ctx in commands:
        usage = " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])
        out += ["", f"### `{ctx.command_path}`", "", "```text", usage, "```", "",
                inspect.cleandoc(cmd.help or "").replace("\b\n", ""), ""]
        rows = [r for r in _options(cmd, ctx) if not r.startswith("| `-h, --help`")]  # every command has it
        if rows:
            out += ["| option | |", "|---|---|", *rows]
    return "\n".join(out).rstrip() + "\n"


def with_reference(text: str, generated: str) -> str:
    """``text`` (the whole doc) with the part between BEGIN and END replaced by ``generated``."""
    head, sep, rest = text.partition(BEGIN + "\n")
    _old, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{DOC}: the markers {BEGIN!r} ... {END!r} are missing")
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"rewrite the generated part of {DOC.name}")
    parser.add_argument("--check", action="store_true", help="exit 1 if it differs from the commands' help")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(reference())
        return 0
    text = DOC.read_text()
    new = with_reference(text, reference())
    if args.write:
        DOC.write_text(new)
        print(f"{DOC}: written", file=sys.stderr)
        return 0
    if args.check:
        if new != text:
            print(f"{DOC}: differs from the commands' help: python -m pi_search.cli.reference --write",
                  file=sys.stderr)
            return 1
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

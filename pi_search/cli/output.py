"""Machine-readable output of the commands: JSON on stdout (logs go to stderr)."""

from __future__ import annotations

import json

import click


def emit_json(obj) -> None:
    """Print ``obj`` as indented JSON on stdout (values JSON has no type for as their ``str``)."""
    click.echo(json.dumps(obj, indent=2, default=str))

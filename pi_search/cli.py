"""The ``pi-search`` command line: thin wrappers over library functions, and the one composition root."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .errors import PiSearchError

log = logging.getLogger(__name__)


def emit_json(obj) -> None:
    """Machine-readable output goes to stdout; logs go to stderr."""
    click.echo(json.dumps(obj, indent=2, default=str))


class _Group(click.Group):
    """Turns a PiSearchError into one clear line and exit status 2, with no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PiSearchError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pi-search")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Offline visual search: point an item at the camera, see the most similar catalog items."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- model
@main.group()
def model() -> None:
    """Inspect, export and benchmark the feature extractor."""


@model.command("info")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--runtime", type=click.Choice(["ai_edge_litert", "tflite_runtime"]), default=None,
              help="Force a runtime (default: ai_edge_litert, else tflite_runtime).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def model_info(file: Path | None, threads: int, runtime: str | None, as_json: bool) -> None:
    """Show a model's input/output tensors, size, sha256 and the runtime (default: the shipped model)."""
    from .extractor import Extractor

    info = Extractor(file, num_threads=threads, runtime=runtime).info()
    if as_json:
        emit_json(info)
        return
    i, o = info["input"], info["output"]
    click.echo(f"model     {info['path']}")
    click.echo(f"size      {info['size_bytes'] / 1e6:.2f} MB   sha256 {info['sha256']}")
    click.echo(f"input     {i['shape']} {i['dtype']}  scale {i['quantization']['scale']:.6g} "
               f"zero point {i['quantization']['zero_point']}  (RGB, NHWC)")
    click.echo(f"output    {o['shape']} {o['dtype']}  scale {o['quantization']['scale']:.6g} "
               f"zero point {o['quantization']['zero_point']}  ({info['dim']}-d embedding)")
    click.echo(f"runtime   {info['runtime']['name']} {info['runtime']['version']}, {threads} thread(s)")

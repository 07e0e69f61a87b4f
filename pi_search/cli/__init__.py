"""The ``pi-search`` command line: thin wrappers over library functions and ``bootstrap``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .. import __version__, images
from ..bootstrap import build_daemon
from ..bundle import BuildOptions, backend_flags, backend_names, get_backend
from ..config import is_loopback, load_config, token_problem
from ..embed.build import BuildSettings, build_bundle, interrupted_note, source_of
from ..embed.local import embed_local
from ..embed.ray_engine import embed_ray
from ..errors import PiSearchError
from ..live.catalog import LiveCatalog
from ..live.compact import compact_path
from ..live.relearn import read_backgrounds, relearn, scenes_dir
from ..model.extractor import Extractor
from ..model.shipped import SHIPPED_FLOAT, SHIPPED_INT8, shipped_model
from ..ops import doctor
from ..ops.demo import demo_bundle, demo_data
from ..ops.shutdown import terminate_as_exit
from ..pipeline.photos import query_images
from ..updates.install import info
from ..web.server import check_address, page_urls
from .output import emit_json
from .updates import COMMANDS as SIGNED_COMMANDS
from .updates import fleet_group

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Turns a PiSearchError into one clear line and exit status 2, with no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PiSearchError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pi-search")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Offline visual search: point an item at the camera, see the most similar catalog items."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def say_where(command: str, *, token: bool = False) -> Callable[[str], None]:
    """``on_serving`` for ``serve`` and ``demo``: one line on stderr naming the address(es) to open, printed
    once the page is served (for a bind to every address: this machine's addresses too, for a phone);
    ``token``: the page asks for the token, so say how to give it."""

    def on_serving(url: str) -> None:
        first = "  (add ?token=TOKEN on the first visit)" if token else ""
        urls = " or ".join(page_urls(url))
        click.echo(f"pi-search {command}: open {urls}{first}  (Ctrl+C stops)", err=True)

    return on_serving


# ---------------------------------------------------------------- model
@main.group()
def model() -> None:
    """Inspect and export the feature extractor."""


@model.command("info")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--runtime", type=click.Choice(["ai_edge_litert", "tflite_runtime"]), default=None,
              help="Force a runtime (default: ai_edge_litert, else tflite_runtime).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def model_info(file: Path | None, threads: int, runtime: str | None, as_json: bool) -> None:
    """Show a model's input/output tensors, size, sha256 and the runtime (default: the shipped model)."""
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


@model.command("export")
@click.option("--arch", type=click.Choice(["efficientnet_lite0", "mobilenet_v2_140"]),
              default="efficientnet_lite0", show_default=True, help="Network to build.")
@click.option("--weights", type=click.Choice(["imagenet", "random"]), default="imagenet", show_default=True,
              help="imagenet: real weights (efficientnet_lite0 ships them; mobilenet_v2_140 needs the "
                   "internet); random: offline, proves the path.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True,
              help="Directory for <arch>_float32.tflite, <arch>_int8.tflite and the reference embeddings.")
@click.option("--calibration-per-photo", default=4, show_default=True,
              help="Augmented views per calibration photo for int8 quantisation.")
@click.option("--json", "as_json", is_flag=True, help="Print the verification report as JSON.")
def model_export(arch: str, weights: str, out_dir: Path, calibration_per_photo: int, as_json: bool) -> None:
    """Build, convert (float32 and int8) and verify an extractor; needs pip install 'pi-search[export]'."""
    try:
        import tensorflow  # noqa: F401
    except ImportError as exc:
        raise PiSearchError("model export needs TensorFlow: pip install 'pi-search[export]'") from exc
    from ..export.convert import export  # the export extra (TensorFlow): never loaded by the daemon

    report = export(arch, weights, out_dir, calibration_per_photo=calibration_per_photo)
    if as_json:
        emit_json(report.as_dict())
        return
    for name, top5 in report.top5.items():
        click.echo(f"top-5 {name}: {', '.join(top5)}")
    click.echo(f"float32  {report.float_path}  {report.float_bytes / 1e6:.2f} MB  "
               f"max abs diff vs Keras {report.float_max_abs_diff:.2e}")
    click.echo(f"int8     {report.int8_path}  {report.int8_bytes / 1e6:.2f} MB  cosine vs float on "
               f"{report.held_out} held-out photos: mean {report.int8_cosine_mean:.4f}, "
               f"min {report.int8_cosine_min:.4f}")
    click.echo(f"{report.dim}-d output, {report.calibration_images} calibration images, {report.seconds} s")


# ---------------------------------------------------------------- index
def _dims_option(value: str) -> int | None:
    if value == "auto":
        return -1
    if value == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of dimensions, auto or none") from None


def backend_options(command: Callable) -> Callable:
    """``command`` with a flag for every registered backend's own options (``--trees``, ``--nlist``, ...),
    passed on by their field names; each is None when not given."""
    for f in reversed(backend_flags()):
        kind = int if f.low is None and f.high is None else click.IntRange(f.low, f.high)
        command = click.option(f.flag, f.field, default=None, type=kind, help=f.help)(command)
    return command


@main.group()
def index() -> None:
    """Build and inspect index bundles."""


@index.command("build")
@click.argument("catalog", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model file (default: the shipped model).")
@click.option("--dims", default="auto", show_default=True,
              help="PCA dimensions of the Annoy index: a number, auto (256 for large catalogs) or none.")
@click.option("--whiten/--no-whiten", default=True, show_default=True, help="Whiten the PCA projection.")
@click.option("--strict", is_flag=True, help="Fail on any bad catalog row instead of skipping it.")
@click.option("--search", "search_mode", type=click.Choice(["auto", "exact", "ann"]), default="auto",
              show_default=True, help="Query mode: exact (small catalogs) or ann (index + re-rank).")
@click.option("--store", "store_dtype", type=click.Choice(["auto", "float32", "float16", "int8"]),
              default="auto",
              show_default=True, help="Precision of the full vectors kept for exact search and re-ranking.")
@click.option("--backend", type=click.Choice(backend_names()), default="annoy",
              show_default=True,
              help="Approximate index used for candidates (ivfpq: millions of items, needs faiss-cpu).")
@click.option("--candidates", default=None, type=click.IntRange(1, 100_000),
              help="Index candidates re-ranked on the stored vectors per query (default 100; ivfpq 500).")
@backend_options
@click.option("--embeddings", type=click.Path(path_type=Path), default=None,
              help="Embeddings made by index embed (its --out directory), or a .npy float32 [n, dim] "
                   "with --ids.")
@click.option("--ids", type=click.Path(path_type=Path), default=None,
              help="Catalog ids of the --embeddings rows, one per line.")
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True,
              help="Thumbnails in the bundle (millions of items: --no-thumbnails keeps it small, and with "
                   "--embeddings and --no-learn no photo is read).")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="Learn the bundle's projection from synthetic camera views of its catalog photos "
                   "(docs/quality.md).")
@click.option("--views", default=6, show_default=True, type=click.IntRange(1, 64),
              help="Synthetic camera views per catalog photo for --learn.")
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON on stdout.")
def index_build(catalog: Path, out_dir: Path, model_path: Path | None, dims: str, whiten: bool, strict: bool,
                search_mode: str, store_dtype: str, backend: str, candidates: int | None,
                embeddings: Path | None, ids: Path | None, thumbnails: bool, learn: bool, views: int,
                threads: int, as_json: bool, **given) -> None:
    """Index a catalog (catalog.csv with id,title,price,image, or a folder of images) into a bundle."""
    extractor = Extractor(model_path, num_threads=threads)
    # the chosen backend's own options, where given (0: its default; another backend's are not used)
    own = {k: v for k, v in given.items() if v and k in get_backend(backend).option_names()}
    options = BuildOptions.parse(search=search_mode, store_dtype=store_dtype, backend=backend,
                                 candidates=candidates or 0, **own)
    try:
        with terminate_as_exit():  # SIGTERM: the half-written bundle is removed, the old one stays
            settings = BuildSettings(dims=_dims_option(dims), whiten=whiten, strict=strict, options=options,
                                     thumbnails=thumbnails, learn=learn, views=views)
            report = build_bundle(catalog, out_dir, extractor, settings, source=source_of(embeddings, ids))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {interrupted_note(out_dir)}", err=True)
        sys.exit(130)
    if as_json:
        emit_json(report.as_dict())
        return
    photos = f" ({report.photos} photos)" if report.photos != report.items else ""
    click.echo(f"{out_dir}: {report.items} items{photos} indexed, {len(report.skipped)} bad row(s) skipped, "
               f"{report.embedded} embedded, {report.resumed} resumed, {report.seconds:.1f} s", err=True)


@index.command("embed")
@click.argument("catalog", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the embedding shards (made, or resumed when it holds some already).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a Ray cluster (pip install 'pi-search[cluster]').")
@click.option("--address", default=None,
              help="(ray) Cluster to join: auto (started here by ray start), HOST:PORT or ray://HOST:10001; "
                   "default: start Ray on this machine.")
@click.option("--actors", type=click.IntRange(1), default=None,
              help="(ray) Embedding actors [one per CPU of the cluster].")
@click.option("--shard-rows", default=256, show_default=True, type=click.IntRange(1),
              help="Catalog rows per shard file.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model file (default: the shipped model).")
@click.option("--threads", default=1, show_default=True,
              help="Threads of the interpreter and of OpenCV's framing (per actor).")
@click.option("--strict", is_flag=True, help="Fail on any bad catalog row instead of skipping it.")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="Also make and embed synthetic camera views of the learning sample (every item, or an "
                   "even 20,000 of a bigger catalog), so index build learns the projection from them.")
@click.option("--views", default=6, show_default=True, type=click.IntRange(1, 64),
              help="Synthetic camera views per sampled item for --learn.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def index_embed(catalog: Path, out_dir: Path, engine: str, address: str | None, actors: int | None,
                shard_rows: int, model_path: Path | None, threads: int, strict: bool, learn: bool, views: int,
                as_json: bool) -> None:
    """Embed a catalog's photos into shards, here or on a Ray cluster; build with --embeddings OUT.

    A stopped run resumes where it was when started again with the same arguments.
    """
    if engine == "local" and (address or actors):
        raise click.UsageError("--address and --actors are for --engine ray")
    extractor = Extractor(model_path, num_threads=threads)
    if engine == "ray":
        report = embed_ray(catalog, out_dir, extractor, address=address, actors=actors, threads=threads,
                           shard_rows=shard_rows, strict=strict, views=views if learn else 0)
    else:
        report = embed_local(catalog, out_dir, extractor, shard_rows=shard_rows, strict=strict,
                             views=views if learn else 0)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"{out_dir}: {report.rows} rows in {report.shards} shard(s): {report.embedded} embedded now, "
               f"{report.resumed} done before, {report.failed} failed, {len(report.skipped)} bad row(s) "
               f"skipped, {report.views} views to learn from, {report.seconds:.1f} s; next: pi-search index "
               f"build {catalog} --embeddings "
               f"{out_dir} --out BUNDLE", err=True)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@index.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def index_info(directory: Path, as_json: bool) -> None:
    """Show a bundle's items, dimensions, model, projection, index, file sizes and creation time."""
    data = info(directory)
    if as_json:
        emit_json(data)
        return
    m, ix, proj, s = data["model"], data["index"], data["projection"], data["search"]
    click.echo(f"bundle      {data['directory']} (format {data['format_version']}, "
               f"created {data['created']})")
    click.echo(f"items       {data['items']}" + (f" ({data['photos']} photos)"
                                                 if data["photos"] != data["items"] else ""))
    click.echo(f"model       {m['name']}  {m['dim']}-d  sha256 {m['sha256']}")
    click.echo("projection  " + (f"PCA {proj['dims']}-d{' whitened' if proj['whiten'] else ''}, "
                                 f"{proj['explained_variance']:.1%} of the variance" if proj else "none"))
    learned = data.get("learned")
    click.echo("learned     " + (f"{learned.get('type', 'projection')} {learned['dims']}-d from "
                                 f"{learned.get('pairs', '?')} synthetic views of "
                                 f"{learned.get('items', '?')} catalog photos"
                                 + (", folded into the PCA" if learned.get("folded") else "")
                                 if learned else "none"))
    click.echo(f"index       {ix['backend']} {ix['metric']} {ix['dim']}-d"
               + (f", {ix['n_trees']} trees" if ix.get("n_trees") else "")
               + (f", {ix['nlist']} lists, {ix['pq_bytes']} bytes an item" if ix.get("nlist") else ""))
    probe = f", nprobe {s['nprobe']}" if s.get("nprobe") else f", search_k {s['search_k']}"
    detail = f" ({s['candidates']} candidates re-ranked{probe})" if s["mode"] == "ann" else ""
    store = data["store"]
    click.echo(f"search      {s['mode']}{detail}, store {store['dtype']}"
               + (f" of the {store['dims']}-d PCA vectors" if store.get("space") == "pca" else ""))
    mem = data["memory"]
    click.echo(f"memory      {mem['layout']}: {_fmt_bytes(mem['in_ram_bytes'])} in RAM + "
               f"{_fmt_bytes(mem['mapped_bytes'])} mapped; this machine: {mem['machine']['verdict']}")
    up = data.get("update") or {}
    click.echo(f"update      slot {up.get('slot') or '-'}, version {up.get('version') or '-'}, signer "
               f"{up.get('signer') or '- (unsigned)'}")
    for name, size in data["files"].items():
        click.echo(f"  {name:<22} {_fmt_bytes(size):>10}")
    click.echo(f"  {'total':<22} {_fmt_bytes(data['total_bytes']):>10}")


for _command in SIGNED_COMMANDS:
    index.add_command(_command)
main.add_command(fleet_group)


# ---------------------------------------------------------------- query
@main.command("query")
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle directory.")
@click.option("--k", "k", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Matches per image.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model file (default: the shipped model).")
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def query(images_: tuple[Path, ...], bundle_dir: Path, k: int, model_path: Path | None, threads: int,
          as_json: bool) -> None:
    """Find the catalog items most similar to each IMAGE (model and bundle are loaded once)."""
    extractor = Extractor(model_path, num_threads=threads)
    with LiveCatalog.open(bundle_dir, extractor=extractor, readonly=True) as catalog:
        results = query_images(extractor, catalog, images_, k)
    failed = sum("error" in r for r in results)
    if as_json:
        emit_json({"results": results})
    else:
        for r in results:
            click.echo(r["query"])
            if "error" in r:
                click.echo(f"  error: {r['error']}")
            for c in r.get("codes", []):
                if not c["matched"]:
                    click.echo(f"  code {c['code']}: not in the catalog")
            for i, mt in enumerate(r["matches"], 1):
                price = f"  {mt['price']}" if mt["price"] else ""
                how = "barcode" if mt.get("via") == "barcode" else f"{mt['score']:.3f}"
                click.echo(f"  {i:>2}. {how}  {mt['id']}  {mt['title']}{price}")
    if failed:
        log.warning("%d of %d image(s) could not be read", failed, len(results))
        sys.exit(1)


# ---------------------------------------------------------------- serve
@main.command("serve")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config file (see config.example.toml); flags override it.")
@click.option("--source", help="picamera2, opencv:N, opencv:PATH or folder:DIR [camera.source].")
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle directory [index.bundle].")
@click.option("--model", "model_path", type=click.Path(path_type=Path), help=".tflite file [model.path].")
@click.option("--threads", type=int, help="Interpreter threads [model.threads].")
@click.option("--host", help="Address to bind [server.host] (default 127.0.0.1).")
@click.option("--port", type=int, help="Port [server.port] (default 8080).")
@click.option("--fps", type=float, help="Camera or replay frame rate [camera.fps].")
def serve(config_file, source, bundle, model_path, threads, host, port, fps) -> None:
    """Run the appliance: camera -> model -> index -> local web page (waitress); stops on SIGTERM."""
    config = load_config(config_file, {
        "camera.source": source, "camera.fps": fps, "index.bundle": str(bundle) if bundle else None,
        "model.path": str(model_path) if model_path else None, "model.threads": threads,
        "server.host": host, "server.port": port})
    build_daemon(config).run(on_serving=say_where("serve", token=bool(config.server.token)))


# ---------------------------------------------------------------- eval
@main.command("eval")
@click.argument("benchmark", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--catalog", type=click.Path(path_type=Path, file_okay=False),
              help="Catalog directory (default: BENCHMARK/catalog).")
@click.option("--truth", type=click.Path(path_type=Path, dir_okay=False),
              help="CSV query_path,item_id (default: BENCHMARK/truth.csv).")
@click.option("--queries", type=click.Path(path_type=Path, file_okay=False),
              help="Folder the query paths are relative to (default: the truth file's folder).")
@click.option("--model", "models", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Model(s) to compare (repeat; default: the shipped int8 and float32 models).")
@click.option("--no-annoy", is_flag=True, help="Exact search only (skip building an Annoy bundle).")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="The Annoy bundle learns its projection from the catalog's photos (as index build).")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False),
              help="PNG report (recall@k curves, worst misses); default: eval.png beside the truth file.")
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def eval_cmd(benchmark: Path | None, catalog: Path | None, truth: Path | None, queries: Path | None,
             models: tuple[Path, ...], no_annoy: bool, learn: bool, report: Path | None, threads: int,
             as_json: bool) -> None:
    """Recall@1/5/10 and mAP of a catalog + queries + truth file, exact search and through an Annoy bundle.

    BENCHMARK is a folder made by `python -m pi_search.tools.benchmark_data benchmark` (catalog/ and
    truth.csv).
    """
    catalog = catalog or (benchmark / "catalog" if benchmark else None)
    truth = truth or (benchmark / "truth.csv" if benchmark else None)
    if catalog is None or truth is None:
        raise PiSearchError("give a BENCHMARK folder, or both --catalog DIR and --truth FILE")
    if not models:
        shipped = (shipped_model(SHIPPED_INT8), shipped_model(SHIPPED_FLOAT))
        models = tuple(p for p in shipped if p.is_file()) or (None,)
    from ..tools.evaluate import evaluate, format_table, write_report  # an offline tool, not the daemon

    result = evaluate(catalog, truth, models, queries_dir=queries, annoy=not no_annoy, threads=threads,
                      learn=learn)
    png = write_report(result, report or truth.parent / "eval.png")
    result["report"] = str(png)
    if as_json:
        emit_json({k: v for k, v in result.items() if k != "titles"})
        return
    click.echo(format_table(result))
    click.echo(f"report    {png}")


# ---------------------------------------------------------------- doctor
@main.command("doctor")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file to check [default: /etc/pi-search/config.toml if it exists].")
@click.option("--source", help="Check this frame source instead of [camera.source].")
@click.option("--bundle", type=click.Path(path_type=Path), help="Check this bundle [index.bundle].")
@click.option("--port", type=int, help="Check this port instead of [server.port].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def doctor_cmd(config_file, source, bundle, port, as_json) -> None:
    """Check camera access, runtime, model, bundle, config, disk and port; print OK or the fix for each.

    Exits 1 if any check fails. A USB webcam or a video file is opened for one frame; the Pi camera is only
    listed, never opened (a running daemon may hold it).
    """
    path = config_file or doctor.default_config_path()
    results = doctor.run_checks(path, {"camera.source": source, "server.port": port,
                                       "index.bundle": str(bundle) if bundle else None})
    if as_json:
        emit_json({"ok": not doctor.failed(results), "config": str(path) if path else None,
                   "checks": [c.as_dict() for c in results]})
    else:
        click.echo(doctor.format_checks(results))
    if doctor.failed(results):
        sys.exit(1)


# ---------------------------------------------------------------- demo
@main.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0: every address, for a phone; needs --token).")
@click.option("--port", default=8080, show_default=True, help="Port.")
@click.option("--token", envvar="PI_SEARCH_TOKEN", show_envvar=True, default=None,
              help="Token the page asks for when --host is reachable from the network (16+ random "
                   "characters, e.g. $(openssl rand -hex 16)).")
@click.option("--fps", default=2.0, show_default=True, help="Replay rate of the demo camera frames.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo bundle is built [default: ~/.cache/pi-search].")
@click.option("--rebuild", is_flag=True, help="Build the demo bundle again.")
def demo_cmd(host: str, port: int, token: str | None, fps: float, state_dir: Path | None,
             rebuild: bool) -> None:
    """The whole appliance on any machine: the bundled demo catalog and a replayed camera."""
    if token and token_problem(token):
        raise PiSearchError(f"--token {token_problem(token)}; make one with: --token $(openssl rand -hex 16)")
    if not token and not is_loopback(host):
        raise PiSearchError(f"--host {host} is reachable from the network, so the page needs a token: add "
                            "--token $(openssl rand -hex 16), or leave --host out (this machine only)")
    check_address(host, port)  # a busy port fails before the demo bundle is built
    bundle = demo_bundle(Extractor(), state_dir, rebuild=rebuild, on_build=lambda out: click.echo(
        f"pi-search demo: building the demo bundle in {out} (once)", err=True))
    config = load_config(None, {"camera.source": f"folder:{demo_data() / 'frames'}", "camera.fps": fps,
                                "index.bundle": str(bundle), "server.host": host, "server.port": port,
                                "server.token": token or None})
    build_daemon(config).run(on_serving=say_where("demo", token=bool(token)))


# ---------------------------------------------------------------- item
def _open_catalog(bundle_dir: Path, model_path: Path | None, threads: int = 1, *, extractor: bool = True):
    """The bundle and its change store; with ``extractor`` also the model (checked against the bundle)."""
    ex = Extractor(model_path, num_threads=threads) if extractor else None
    return LiveCatalog.open(bundle_dir, extractor=ex), ex


def _shots(paths: tuple[Path, ...], kind: str) -> list:
    return [(images.read(p), kind) for p in paths]


_bundle_option = click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
                              help="Bundle directory (changes are kept in NAME.changes.sqlite beside it).")
_kind_option = click.option("--camera", "camera", is_flag=True,
                            help="The images are camera shots (framed like live queries) instead of product "
                                 "photos.")
_background_option = click.option("--background", type=click.Path(path_type=Path), default=None,
                                  help="A shot of the empty scene, taken out of --camera shots (default: the "
                                       "one captured on the page, if any).")


@main.group()
def item() -> None:
    """Teach, edit and remove catalog items without rebuilding the bundle (searchable at once)."""


@item.command("add")
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@_bundle_option
@click.option("--title", required=True, help="Item title.")
@click.option("--price", default=None, help="Price, as shown.")
@click.option("--id", "item_id", default=None, help="Item id (default: a new unique id).")
@click.option("--barcode", default=None,
              help="Its barcode(s): EAN/UPC digits, Code 128 or QR text; ';' between.")
@_kind_option
@_background_option
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model file (default: the shipped model).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def item_add(images_, bundle_dir, title, price, item_id, barcode, camera, background, model_path,
             as_json) -> None:
    """Teach a new item from one or more photos of it (each photo is one more view of the item)."""
    cat, _ = _open_catalog(bundle_dir, model_path)
    with cat:
        shots = _shots(images_, "camera" if camera else "photo")
        taught = cat.teaching.add(title, price, shots, item_id=item_id, barcode=barcode,
                                  scene=images.read(background) if background else None)
    if as_json:
        emit_json({"item": taught.item})
    else:
        click.echo(taught.id)


@item.command("list")
@_bundle_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def item_list(bundle_dir, as_json) -> None:
    """List the items taught, edited or removed since the last compaction, then the 50 taught most recently
    that a compaction folded into the bundle."""
    cat, _ = _open_catalog(bundle_dir, None, extractor=False)
    with cat:
        listing = cat.teaching.listing(50)
    rows, folded, total = [it.as_dict() for it in listing.changes], listing.folded, listing.items
    if as_json:
        emit_json({"items": rows, "folded": folded, "catalog_items": total})
        return
    for r in rows:
        state = "removed" if r["deleted"] else ("edited" if r["in_bundle"] else "taught")
        price = f"  {r['price']}" if r["price"] else ""
        click.echo(f"{state:<8} {r['id']}  {r['title']}{price}  ({r['shots']} shot(s))")
    for r in folded:
        price = f"  {r['price']}" if r["price"] else ""
        click.echo(f"{'folded':<8} {r['id']}  {r['title']}{price}  (taught, now in the bundle)")
    click.echo(f"{len(rows)} change(s) pending; {total} items in the catalog", err=True)


@item.command("edit")
@click.argument("item_id")
@_bundle_option
@click.option("--title", default=None, help="New title.")
@click.option("--price", default=None, help="New price ('' clears it).")
@click.option("--barcode", default=None, help="New barcode(s), ';' between ('' clears them).")
@click.option("--image", "images_", multiple=True, type=click.Path(path_type=Path),
              help="Add a photo as one more view of the item (repeat).")
@_kind_option
@_background_option
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model file (default: the shipped model).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def item_edit(item_id, bundle_dir, title, price, barcode, images_, camera, background, model_path,
              as_json) -> None:
    """Change an item's title, price or barcode, or add views of it (taught items and bundle items alike)."""
    if title is None and price is None and barcode is None and not images_:
        raise click.UsageError("nothing to change: give --title, --price, --barcode or --image")
    cat, _ = _open_catalog(bundle_dir, model_path, extractor=bool(images_))
    with cat:
        shots = _shots(images_, "camera" if camera else "photo")
        taught = cat.teaching.edit(item_id, title=title, price=price, barcode=barcode, shots=shots,
                                   scene=images.read(background) if background and shots else None)
    if as_json:
        emit_json({"item": taught.item})
    else:
        click.echo(taught.id)


@item.command("remove")
@click.argument("item_id")
@_bundle_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def item_remove(item_id, bundle_dir, as_json) -> None:
    """Remove an item (taught, or from the bundle): it stops matching at once."""
    cat, _ = _open_catalog(bundle_dir, None, extractor=False)
    with cat:
        cat.teaching.remove(item_id)
    if as_json:
        emit_json({"removed": item_id})
    else:
        click.echo(item_id)


@index.command("compact")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def index_compact(directory: Path, as_json: bool) -> None:
    """Fold taught, edited and removed items into a new bundle, swapped in while the daemon serves."""
    report = compact_path(directory)
    if as_json:
        emit_json(report)
        return
    click.echo(f"{directory}: {report['folded']} change(s) folded, {report['items']} items, "
               f"{report['seconds']:.1f} s", err=True)


@index.command("relearn")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--backgrounds", type=click.Path(path_type=Path), default=None,
              help="Folder of photos of the empty counter to put the views on as well (default: the empty "
                   "scenes staff captured on the teach page, DIRECTORY.scenes/, when there are any).")
@click.option("--views", default=6, show_default=True, type=click.IntRange(1, 64),
              help="Synthetic camera views per item.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Model file (default: the shipped model).")
@click.option("--threads", default=1, show_default=True, help="Interpreter threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def index_relearn(directory: Path, backgrounds: Path | None, views: int, model_path: Path | None,
                  threads: int, as_json: bool) -> None:
    """Learn the bundle's projection again from its items' thumbnails, also on the kiosk's own empty scenes;
    written as a new bundle generation (the old one serves until it is swapped in)."""
    folder = backgrounds if backgrounds is not None else scenes_dir(directory)
    scenes = read_backgrounds(folder) if backgrounds is not None or folder.is_dir() else []
    extractor = Extractor(model_path, num_threads=threads)
    try:
        with terminate_as_exit():  # SIGTERM: the half-written generation is removed, the old one stays
            report = relearn(directory, extractor, backgrounds=scenes, n_views=views)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {directory} is unchanged", err=True)
        sys.exit(130)
    if as_json:
        emit_json(report)
        return
    click.echo(f"{directory}: relearned from {report['items']} items' views ({report['backgrounds']} "
               f"background(s) of its own), {report['seconds']:.1f} s", err=True)

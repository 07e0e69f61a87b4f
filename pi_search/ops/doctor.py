"""``pi-search doctor``: checks config, runtime, model, bundle, camera, disk and port, with a fix for each."""

from __future__ import annotations

import errno
import glob
import importlib.util
import json
import logging
import os
import platform
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..bundle import Bundle, load_trusted, machine_fit, needs
from ..camera import SOURCES, known_specs, open_source
from ..config import check_bind, load_config
from ..errors import PiSearchError, SourceError
from ..model.extractor import RUNTIMES, Extractor, load_runtime
from ..updates.install import update_status
from . import limits

log = logging.getLogger(__name__)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DEFAULT_CONFIG = Path("/etc/pi-search/config.toml")
MIN_FREE_MB = 200     # below this a bundle rebuild (written beside the old one, then swapped) may not fit
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The board's name, where Raspberry Pi OS (and other Linux on a Pi) shows it.
PI_MODEL_FILES = (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model"))


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``status`` is OK, WARN (works, but look) or FAIL; ``fix`` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Context:
    config_path: Path | None = None
    config: object | None = None
    extractor: object | None = None
    pi_model_files: tuple | None = None  # None: PI_MODEL_FILES


def check_python(_ctx: _Context) -> Check:
    bits = 64 if sys.maxsize > 2**32 else 32
    detail = f"Python {platform.python_version()} ({platform.machine()}, {bits}-bit)"
    if bits != 64:
        return Check("python", FAIL, detail, "install a 64-bit OS (Raspberry Pi OS 64-bit)")
    return Check("python", OK, detail)


def check_config(ctx: _Context, overrides: dict | None = None) -> Check:
    try:
        ctx.config = load_config(ctx.config_path, overrides)
    except PiSearchError as exc:
        fix = "fix the key named above; every key is documented in config.example.toml"
        return Check("config", FAIL, str(exc), fix)
    where = str(ctx.config_path) if ctx.config_path else "defaults (no config file)"
    try:
        check_bind(ctx.config.server)  # the daemon refuses a network bind without a token
    except PiSearchError as exc:
        return Check("config", FAIL, str(exc), "set [server] token, or host = \"127.0.0.1\"")
    return Check("config", OK, where)


def check_runtime(ctx: _Context) -> Check:
    wanted = getattr(getattr(ctx.config, "model", None), "runtime", "") or None
    try:
        name, _cls, version = load_runtime(wanted)
    except PiSearchError as exc:
        return Check("runtime", FAIL, str(exc),
                     "pip install ai-edge-litert (into the pi-search venv: rerun install.sh)")
    others = [r for r in RUNTIMES if r != name and importlib.util.find_spec(r) is not None]
    extra = f" (also installed: {', '.join(others)})" if others else ""
    return Check("runtime", OK, f"{name} {version}{extra}")


def check_model(ctx: _Context) -> Check:
    model = getattr(ctx.config, "model", None)
    path = (model.path if model else "") or None
    try:
        ctx.extractor = Extractor(path, num_threads=model.threads if model else 1,
                                  runtime=(model.runtime or None) if model else None)
    except PiSearchError as exc:
        return Check("model", FAIL, str(exc),
                     "set [model] path to a .tflite file, or empty for the shipped model; rerun install.sh")
    ex = ctx.extractor
    return Check("model", OK, f"{ex.name}: {ex.size}x{ex.size} RGB -> {ex.dim}-d, sha256 {ex.sha256[:12]}")


def check_bundle(ctx: _Context) -> Check:
    bundle = getattr(getattr(ctx.config, "index", None), "bundle", "")
    if not bundle:
        return Check("bundle", FAIL, "no bundle configured",
                     "build one (pi-search index build CATALOG --out DIR) and set [index] bundle = DIR")
    if not Path(bundle).is_dir():
        return Check("bundle", FAIL, f"{bundle}: no such directory",
                     f"build it: pi-search index build CATALOG --out {bundle}")
    try:
        b = Bundle.open(bundle, extractor=ctx.extractor)
    except PiSearchError as exc:
        return Check("bundle", FAIL, str(exc), f"rebuild it: pi-search index build CATALOG --out {bundle}")
    try:
        n = len(b)
        name = b.manifest.model.name
        learned = b.manifest.learned
        memory = b.manifest.extra.get("memory") or needs(bundle, b.manifest.to_dict())
    finally:
        b.close()
    checked = "matches the model" if ctx.extractor is not None else "model not checked"
    fit = machine_fit(memory)
    taught = f", projection learned from {learned.get('pairs', '?')} views" if learned else ""
    if learned and learned.get("folded"):
        taught += " (folded into the PCA)"
    detail = (f"{bundle}: {n} items, built with {name} ({checked}{taught}); {memory['layout']}: "
              f"{memory['in_ram_bytes'] / 1e6:.0f} MB in RAM + {memory['mapped_bytes'] / 1e6:.0f} MB mapped; "
              f"this machine: {fit['verdict']}")
    if fit["fits"] is False:
        return Check("bundle", FAIL, detail, "serve it on a machine with more memory, or rebuild it smaller "
                     "(pi-search index build ... --backend ivfpq, see docs/scale.md)")
    if fit["fits"] and fit["verdict"].startswith("tight"):
        return Check("bundle", WARN, detail, "stop other programs, or rebuild it smaller (docs/scale.md)")
    return Check("bundle", OK, detail)


def check_update(ctx: _Context) -> Check:
    """The bundle's slot, version and signer; with ``[index] trusted_keys`` its signature must check."""
    ix = getattr(ctx.config, "index", None)
    bundle = getattr(ix, "bundle", "")
    if not bundle or not Path(bundle).is_dir():
        return Check("update", WARN, "no bundle to check",
                     "install one: pi-search index install SRC --to DIR")
    keys = None
    if getattr(ix, "trusted_keys", ()):
        try:
            keys = load_trusted(ix.trusted_keys)
        except PiSearchError as exc:
            return Check("update", FAIL, str(exc), "copy the .pub written by pi-search index keygen")
    st = update_status(bundle, keys)
    event = st.get("last_event") or {}
    detail = (f"slot {st.get('slot') or '- (a plain folder)'}, version {st.get('version')}, signer "
              f"{st.get('signer')}" + (f"; last: {event.get('kind')} {event.get('at')}" if event else ""))
    if keys is not None and not st.get("signed"):
        return Check("update", FAIL, st.get("signature_problem") or "unsigned",
                     "install a bundle signed by a trusted key: pi-search index install SRC")
    if event.get("kind") in ("refused", "rolled back"):
        return Check("update", WARN, f"{detail}: {event.get('reason')}", "install a good bundle")
    if keys is None:
        return Check("update", OK, f"{detail} (signatures not required: [index] trusted_keys is empty)")
    return Check("update", OK, detail)


def check_memory(ctx: _Context) -> Check:
    """The daemon's own start check, with its figures: what it needs with this bundle against what this
    process may use (MemAvailable, the cgroup's memory.max, ulimit -v and -d), or, when pi-search.service is
    installed with limits of its own (MemoryMax=, LimitAS=), against those."""
    bundle = getattr(getattr(ctx.config, "index", None), "bundle", "")
    memory = limits.bundle_memory(bundle) if bundle else None
    where = limits.room()
    verdict = limits.fit(memory, where)
    service = limits.service_room()  # the installed unit's MemoryMax=/LimitAS=: what the daemon will get
    if service is not None and verdict.ok:
        in_service = limits.fit(memory, service)
        if not in_service.ok or (service.cgroup_max or 0) or service.address_limit:
            where, verdict = service, in_service

    def mb(n):
        return "no limit" if n is None else f"{n / 1e6:,.0f} MB"

    detail = (f"{verdict.message} (needs ~{mb(verdict.resident_need)} resident, "
              f"~{mb(verdict.address_need)} address space; available {mb(where.mem_available)}, cgroup "
              f"memory.max {mb(where.cgroup_max)}, ulimit -v {mb(where.address_limit)}, ulimit -d "
              f"{mb(where.data_limit)})")
    if not verdict.ok:
        return Check("memory", FAIL, detail, "raise the limit named above (for the service: systemctl edit "
                     "pi-search), or serve a smaller bundle (docs/reliability.md)")
    if verdict.message.startswith("tight"):
        return Check("memory", WARN, detail, "stop other programs, or serve a smaller bundle")
    return Check("memory", OK, detail)


def _device_access(paths: list[str]) -> tuple[list[str], list[str]]:
    ok = [p for p in paths if os.access(p, os.R_OK | os.W_OK)]
    return ok, [p for p in paths if p not in ok]


def raspberry_pi_model(model_files=None) -> str | None:
    """The board's name ("Raspberry Pi 4 Model B Rev 1.5") when this is a Raspberry Pi, else None."""
    for path in model_files if model_files is not None else PI_MODEL_FILES:
        try:
            text = Path(path).read_bytes().rstrip(b"\0").decode(errors="replace").strip()
        except OSError:
            continue
        if text.startswith("Raspberry Pi"):
            return text
    return None


def _opens(source: str, ctx: _Context) -> tuple[str | None, str]:
    """Open a source and read one frame: ``(None, "WxH frames")``, or ``(the error, "")``."""
    cam = ctx.config.camera
    src = open_source(source, width=cam.width, height=cam.height, fps=cam.fps, loop=False)
    try:
        with src:
            frame = src.read()
    except SourceError as exc:
        return str(exc), ""
    h, w = frame.rgb.shape[:2]
    return None, f"{w}x{h} frames"


def _held_by_daemon(ctx: _Context) -> int | None:
    """The /healthz status of a pi-search on the configured port (which may hold the camera), else None."""
    server = getattr(ctx.config, "server", None)
    return _probe_healthz(server.host, server.port) if server else None


NOT_A_PI_FIX = ("picamera2 is the Raspberry Pi camera; on this machine use a USB webcam (--source opencv:0, "
                "[camera] source = \"opencv:0\") or replay photos (folder:DIR)")


def check_camera(ctx: _Context) -> Check:
    """Checks the configured source: a folder holds images, an OpenCV webcam or video gives a frame (unless
    a running pi-search holds it), picamera2 imports and lists a camera (never opened: the daemon may hold
    it). Pi-only advice (apt's python3-picamera2) is given on a Raspberry Pi only."""
    source = getattr(getattr(ctx.config, "camera", None), "source", "picamera2")
    kind, _, arg = source.partition(":")
    if kind == "folder":
        folder = Path(arg)
        if not folder.is_dir():
            return Check("camera", FAIL, f"{source}: no such directory",
                         "set [camera] source to an existing folder")
        n = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if n == 0:
            return Check("camera", FAIL, f"{source}: no images", "put JPEG/PNG frames in the folder")
        return Check("camera", OK, f"{source}: {n} images to replay")
    if kind == "opencv" and arg and not arg.isdigit():
        if not Path(arg).is_file():
            return Check("camera", FAIL, f"{source}: no such video file",
                         "set [camera] source to a video file")
        error, got = _opens(source, ctx)
        if error:
            return Check("camera", FAIL, f"{source}: {error}",
                         "convert it to a video OpenCV reads (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
        return Check("camera", OK, f"{source}: video file opens, {got}")
    if kind == "opencv" and arg.isdigit():
        dev = f"/dev/video{arg}"
        if not os.path.exists(dev):
            return Check("camera", FAIL, f"{source}: {dev} does not exist",
                         "plug in the USB camera; list cameras with: ls /dev/video*")
        if not os.access(dev, os.R_OK | os.W_OK):
            return Check("camera", FAIL, f"{source}: no access to {dev}",
                         "add the user to the video group: sudo usermod -aG video $USER (then log in again)")
        error, got = _opens(source, ctx)
        if error is None:
            return Check("camera", OK, f"{source}: {dev} opens, {got}")
        status = _held_by_daemon(ctx)
        if status is not None:  # only one program can hold a camera: the daemon running beside the doctor
            return Check("camera", OK if status == 200 else WARN,
                         f"{source}: {dev} in use by the running pi-search", "see journalctl -u pi-search")
        return Check("camera", FAIL, f"{source}: {dev} does not give frames ({error})",
                     f"stop the program using it (fuser -v {dev}) or pick another camera (ls /dev/video*)")
    if kind == "picamera2":
        board = raspberry_pi_model(ctx.pi_model_files)
        if board is None:
            return Check("camera", FAIL, "picamera2: this is not a Raspberry Pi (no board name in "
                         f"{Path((ctx.pi_model_files or PI_MODEL_FILES)[0])})", NOT_A_PI_FIX)
        if importlib.util.find_spec("picamera2") is None:
            return Check("camera", FAIL, f"picamera2: module not found ({board})",
                         "sudo apt-get install python3-picamera2, and make the venv with "
                         "--system-site-packages (install.sh does both)")
        devices = sorted(glob.glob("/dev/media*") + glob.glob("/dev/video*"))
        if not devices:
            return Check("camera", FAIL, "picamera2: no /dev/media* or /dev/video* devices",
                         "connect the camera cable with the Pi off; check: rpicam-hello --list-cameras")
        ok, denied = _device_access(devices)
        if not ok:
            return Check("camera", FAIL, f"picamera2: no access to {', '.join(denied[:3])}",
                         "add the user to the video group: sudo usermod -aG video $USER (then log in again)")
        from picamera2 import Picamera2  # lists cameras without opening one

        cameras = Picamera2.global_camera_info()
        if not cameras:
            return Check("camera", FAIL, f"picamera2: no camera found ({board})",
                         "connect the camera cable with the Pi off; check: rpicam-hello --list-cameras")
        models = ", ".join(str(c.get("Model", "?")) for c in cameras)
        return Check("camera", OK, f"picamera2: {models} ({board})")
    if kind in SOURCES:   # a source registered by a module of camera/ that has no check of its own here
        error, got = _opens(source, ctx)
        if error:
            return Check("camera", FAIL, f"{source}: {error}", "check the source's device or files")
        return Check("camera", OK, f"{source}: opens, {got}")
    return Check("camera", FAIL, f"{source}: unknown source", f"use {known_specs()} in [camera] source")


def check_disk(ctx: _Context) -> Check:
    bundle = getattr(getattr(ctx.config, "index", None), "bundle", "")
    place = Path(bundle).parent if bundle else Path.cwd()
    while not place.exists() and place != place.parent:
        place = place.parent
    usage = shutil.disk_usage(place)
    free_mb = usage.free / 1e6
    detail = f"{free_mb:,.0f} MB free on {place}"
    if free_mb < MIN_FREE_MB:
        return Check("disk", FAIL, detail,
                     f"free at least {MIN_FREE_MB} MB (old bundles, logs: journalctl --vacuum-size=50M)")
    return Check("disk", OK, detail)


def _probe_healthz(host: str, port: int) -> int | None:
    """The HTTP status of /healthz on host:port, or None if nothing speaks HTTP there."""
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{'[' + probe + ']' if ':' in probe else probe}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            json.loads(resp.read() or b"{}")
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def check_port(ctx: _Context) -> Check:
    server = getattr(ctx.config, "server", None)
    host, port = (server.host, server.port) if server else ("127.0.0.1", 8080)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            status = _probe_healthz(host, port)
            if status is not None:
                state = "healthy" if status == 200 else f"/healthz answers {status}"
                return Check("port", OK if status == 200 else WARN,
                             f"{host}:{port} in use by a running pi-search ({state})",
                             "" if status == 200 else "see journalctl -u pi-search")
            return Check("port", FAIL, f"{host}:{port} is in use by another program",
                         f"stop it (sudo ss -ltnp 'sport = :{port}') or set another [server] port")
        if exc.errno == errno.EACCES:
            return Check("port", FAIL, f"{host}:{port}: permission denied",
                         "use a port above 1023 in [server] port")
        return Check("port", FAIL, f"{host}:{port}: {exc.strerror or exc}",
                     "set [server] host to 127.0.0.1 or an address of this machine")
    return Check("port", OK, f"{host}:{port} free")


def run_checks(config_path: str | Path | None = None, overrides: dict | None = None, *,
               pi_model_files=None) -> list[Check]:
    """Run every check in order; later checks use what earlier ones loaded (config, model).

    ``pi_model_files``: where the board's name is read (default ``PI_MODEL_FILES``).
    """
    ctx = _Context(Path(config_path) if config_path else None, pi_model_files=pi_model_files)
    checks: list[Callable[[_Context], Check]] = [
        check_python,
        lambda c: check_config(c, overrides),
        check_runtime,
        check_model,
        check_bundle,
        check_update,
        check_memory,
        check_camera,
        check_disk,
        check_port,
    ]
    results = []
    for fn in checks:
        if ctx.config is None and results and results[-1].name == "config":
            break  # the rest depends on a valid config
        try:
            results.append(fn(ctx))
        except PermissionError as exc:
            name = getattr(fn, "__name__", "check").removeprefix("check_")
            results.append(Check(name, FAIL, f"{exc.filename or exc}: permission denied",
                                 "run the doctor as the service's user: sudo -u pi-search "
                                 "/opt/pi-search/venv/bin/pi-search doctor"))
        except Exception as exc:  # a check must never crash the doctor
            log.debug("check failed", exc_info=True)
            name = getattr(fn, "__name__", "check").removeprefix("check_")
            results.append(Check(name, FAIL, f"{type(exc).__name__}: {exc}",
                                 "report this with the output above"))
    return results


def default_config_path() -> Path | None:
    """/etc/pi-search/config.toml when it exists (the appliance), else None (built-in defaults)."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def format_checks(results: list[Check]) -> str:
    lines = []
    for c in results:
        lines.append(f"{c.status:<4}  {c.name:<8} {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"      {'':<8} fix: {c.fix}")
    return "\n".join(lines)


def failed(results: list[Check]) -> bool:
    return any(c.status == FAIL for c in results)


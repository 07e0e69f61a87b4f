"""Routes: the page, the MJPEG preview, the JSON API, thumbnails, health and metrics."""

from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Response, jsonify, render_template, request

from ..app import Appliance
from ..barcodes.pictures import codes_in_photo
from ..barcodes.search import codes_first
from ..errors import BadInput, Busy, NoCatalog, NotFound, Unavailable
from ..images import photo_size
from .auth import page as _page
from .auth import public as _public
from .context import appliance as _appliance
from .context import config as _config
from .context import ext as _ext
from .errors import no_catalog as _no_catalog
from .lock import teaching_state
from .uploads import check_form, decode_upload

log = logging.getLogger(__name__)

bp = Blueprint("pi_search", __name__, static_folder="static", template_folder="templates",
               static_url_path="/static")

BOUNDARY = "frame"
KEEPALIVE_S = 5.0
CHECK_S = 1.0  # long polls and previews look this often whether their client is still there


def status() -> dict:
    """The status line's data: camera state, fps, timings of the last result, catalog size, model, and
    whether teaching is open, unlocked or locked for this request."""
    port, config = _appliance(), _config()
    up, reason = port.camera_state()
    latest = port.latest()
    s = port.stats
    return {
        "camera": {"up": up, "reason": reason, "source": port.source_name, "fps": round(port.fps(), 2)},
        "model": port.model_name,
        "threads": config.model.threads,
        "catalog_items": len(port.catalog),
        "catalog_problem": port.catalog.problem,
        "frames": s.frames, "inferences": s.inferences, "skipped": s.skipped,
        "extract_ms": round(latest.timings_ms.get("extract", 0.0), 2) if latest else None,
        "search_ms": round(latest.timings_ms.get("search", 0.0), 2) if latest else None,
        "teach": teaching_state(),  # the page locks itself when this screen's unlock runs out
        "likeness": port.likeness(),  # the served bundle's score scale
    }


@bp.get("/")
@_page
def page():
    return render_template("index.html", page=_config().page, teach=teaching_state())


@bp.get("/api/results")
def results():
    """The latest result; with ``?after=FRAME_ID&wait=S`` waits up to S (<= 5) seconds for a newer one."""
    port = _appliance()
    latest = port.latest()
    after = request.args.get("after", type=int)
    wait = min(max(request.args.get("wait", 0.0, type=float), 0.0), 5.0)
    if wait and latest is not None and after is not None and latest.frame_id == after:
        latest = _wait_for_result(port, latest, wait) or port.latest()
    elif wait and latest is None:
        latest = _wait_for_result(port, None, wait)
    body = latest.as_dict() if latest is not None else {"frame_id": None, "matches": []}
    body["ready"] = latest is not None
    body["status"] = status()
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _wait_for_result(port: Appliance, after, wait: float):
    """``port.wait_for_result`` in slices of at most ``CHECK_S``: a client that left frees its thread."""
    gone = request.environ.get("waitress.client_disconnected")
    deadline = time.monotonic() + wait
    while port.running and not (gone and gone()):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        fresh = port.wait_for_result(after, min(left, CHECK_S))
        if fresh is not None:
            return fresh
    return None


@bp.post("/api/search")
def search():
    """Search with an uploaded photo: multipart field ``image``; answers ``{"matches": [...]}``."""
    port = _appliance()
    if not port.catalog.serving:  # an empty list would read as "nothing like it in the catalog"
        raise _no_catalog(port.catalog.problem)
    upload = check_form(request)[0]
    k = request.args.get("k", type=int)
    k = request.form.get("k", type=int) if k is None else k
    if k is not None and not 1 <= k <= 100:
        raise BadInput(f"k={k}: ask for 1 to 100 matches")
    photo = {}

    def read_and_decode():  # runs once an upload slot is held: bytes and pixels held by two at most
        try:
            data = upload.read()
        finally:
            upload.close()
        rgb = decode_upload(data, name=_display_name(upload.filename))
        photo["size"] = list(photo_size(data) or (rgb.shape[1], rgb.shape[0]))  # as shown, not as decoded
        t0 = time.perf_counter()
        photo["codes"] = codes_in_photo(data, _display_name(upload.filename))  # in the upload slot too
        photo["codes_ms"] = (time.perf_counter() - t0) * 1000.0
        return rgb

    matches, timings = port.search_image(read_and_decode, k)   # a full upload slot raises Busy (503)
    matches, codes = codes_first(port.catalog, photo.get("codes", []), matches, k or len(matches))
    timings["codes"] = photo.get("codes_ms", 0.0)
    if not matches and not port.catalog.serving:  # the bundle went away while the photo was searched
        raise _no_catalog(port.catalog.problem)
    return jsonify({"matches": [m.as_dict() for m in matches], "codes": codes,
                    "timings_ms": {k: round(v, 2) for k, v in timings.items()},
                    "image_size": photo["size"]})


def _display_name(filename: str | None) -> str:
    """The client's file name for messages: printable, at most 80 characters, never used as a path."""
    name = "".join(c for c in (filename or "") if c.isprintable())[:80]
    return name or "upload"


@bp.get("/thumbs/<path:item_id>")
def thumb(item_id: str):
    cat = _appliance().catalog
    # a damaged row raises BundleError: JSON 500 for this request (web/errors.py), /healthz shows it
    photo = request.args.get("photo", 0, type=int)   # which of the item's photos (the one that matched)
    data = cat.thumbnail(item_id, min(photo, 1 << 20)) if photo > 0 else cat.thumbnail(item_id)
    if data is None and not cat.serving:
        raise NoCatalog(f"no catalog is served right now: {cat.problem}")
    if data is None:
        raise NotFound(f"no thumbnail for item {item_id!r}")
    resp = Response(data, mimetype="image/jpeg")
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp


@bp.get("/frame.jpg")
def frame():
    """One published frame as JPEG: ``?id=N`` that frame (404 once it is no longer kept), else the latest.

    The page loads the frame of each result by id, so the preview always shows the frame whose matches it
    lists.
    """
    port = _appliance()
    frame_id = request.args.get("id", type=int)
    if frame_id is not None:
        latest = port.recent(frame_id)
        if latest is None:
            raise NotFound(f"frame {frame_id} is no longer kept; ask /api/results for the latest")
    else:
        latest = port.latest()
        if latest is None:
            raise Unavailable("no frame yet; the camera is starting")
    resp = Response(latest.jpeg, mimetype="image/jpeg")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Id"] = str(latest.frame_id)
    return resp


@bp.route("/stream.mjpg", methods=["GET", "HEAD"])
def stream():
    """Live preview as multipart JPEG; each viewer only waits for the shared JPEG, never encodes.

    Every JPEG is followed at once by the boundary and the headers of the next part (parts carry no
    Content-Length): Chromium shows a part only once the next part's headers have arrived, so a still scene
    (no new part) would otherwise keep showing the previous frame. HEAD answers the headers and takes no
    viewer slot.
    """
    ext = _ext()
    port, viewers = ext["appliance"], ext["viewers"]
    if request.method == "HEAD":
        resp = Response(b"", content_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        resp.headers["Cache-Control"] = "no-store"
        return resp
    if not viewers.enter(ext["config"].server.max_viewers):
        raise Busy("too many preview viewers; close another one or raise server.max_viewers")
    port.stats.set_viewers(viewers.count)
    resp = Response(_Preview(port, viewers, request.environ),
                    content_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


class _Preview:
    """The parts of one /stream.mjpg response; holds a viewer slot until closed (always, even unstarted).

    The viewer leaves, freeing its slot and its server thread, when the client disconnects (noticed within
    ``CHECK_S``), when it has not taken the parts already sent for ``KEEPALIVE_S`` (a client that stopped
    reading), or when the appliance stops. A client still reading the previous part is sent the newest frame
    once it is done, never a queue of old ones.
    """

    def __init__(self, port: Appliance, viewers, environ):
        self.port, self.viewers = port, viewers
        self._gone = environ.get("waitress.client_disconnected") or (lambda: False)
        self._backlog = environ.get("pi_search.backlog") or (lambda: 0)
        self._lock = threading.Lock()
        self._open = True

    def __iter__(self):
        head = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\n\r\n"
        port = self.port
        sent_at, drained_at, last = 0.0, time.monotonic(), None
        current = port.latest()
        yield head
        while self._open and port.running and not self._gone():
            now = time.monotonic()
            if self._backlog() == 0:
                drained_at = now
            elif now - drained_at > KEEPALIVE_S:
                log.info("a preview client stopped reading for %.0f s; closing its stream", KEEPALIVE_S)
                return
            due = current is not None and (current is not last or now - sent_at > KEEPALIVE_S)
            if due and drained_at == now:
                yield current.jpeg + b"\r\n" + head
                last, sent_at = current, now
            elif due:
                time.sleep(0.05)  # the client is still taking the previous part
            current = port.wait_for_result(last, CHECK_S) or (current if due else last)

    def close(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        self.viewers.leave()
        self.port.stats.set_viewers(self.viewers.count)


@bp.post("/api/reload")
def reload_bundle():
    """Map the bundle rebuilt in place (like SIGHUP); 409 if it is broken and the bundle in use keeps serving,
    503 if no bundle could be loaded and none is served."""
    return jsonify({"reloaded": True, **_appliance().reload_bundle()})


@bp.get("/healthz")
@_public
def healthz():
    h = _appliance().health()
    resp = jsonify(h)
    resp.status_code = 200 if h["ok"] else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/metrics")
def metrics():
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_ext()["registry"]), mimetype=CONTENT_TYPE_LATEST)

"""Every format is decoded within one memory bound, judged from its header; uploads for a client that left
are dropped before decoding."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes import ListSource, SourceFactory, kiosk, wait_until
from PIL import Image

from pi_search import images
from pi_search.config import load_config
from pi_search.errors import ImageError
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app
from pi_search.web.uploads import ClientGone, decode_upload

ROOT = Path(__file__).resolve().parents[1]
W40, H40 = 7296, 5472  # 39.9 MP: just under the pixel cap


def _dots(shape, dtype, value):
    """A mostly flat image with a sparse grid of dots: compresses small, decodes at full size."""
    a = np.zeros(shape, dtype)
    a[::97, ::89] = value
    return a


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _cv(ext: str, a: np.ndarray, *params) -> bytes:
    ok, buf = cv2.imencode(ext, a, list(params))
    assert ok
    return buf.tobytes()


FAST_PNG = (cv2.IMWRITE_PNG_COMPRESSION, 1)
# Each maker writes a real file of the given size (width, height) in one format and depth.
MAKERS = {
    "png16-rgba": lambda w, h: _cv(".png", _dots((h, w, 4), np.uint16, 40000), *FAST_PNG),
    "png16-rgb": lambda w, h: _cv(".png", _dots((h, w, 3), np.uint16, 40000), *FAST_PNG),
    "png16-grey": lambda w, h: _pil(Image.fromarray(_dots((h, w), np.uint16, 40000)), "PNG",
                                    compress_level=1),
    "png8-rgba": lambda w, h: _pil(Image.new("RGBA", (w, h), (10, 20, 30, 128)), "PNG", compress_level=1),
    "png8-rgb": lambda w, h: _pil(Image.new("RGB", (w, h), (10, 20, 30)), "PNG", compress_level=1),
    "png8-grey": lambda w, h: _pil(Image.new("L", (w, h), 90), "PNG", compress_level=1),
    "png8-palette": lambda w, h: _pil(Image.new("P", (w, h), 3), "PNG", compress_level=1),
    "webp": lambda w, h: _cv(".webp", _dots((h, w, 3), np.uint8, 200), cv2.IMWRITE_WEBP_QUALITY, 1),
    "bmp": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "BMP"),
    "tiff": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "TIFF", compression="tiff_deflate"),
    "gif": lambda w, h: _pil(Image.new("L", (w, h), 9), "GIF"),
    "jpeg-progressive": lambda w, h: _pil(Image.new("RGB", (w, h), (1, 2, 3)), "JPEG", progressive=True,
                                          subsampling=0),
}
SLOW_MAKERS = {"png16-rgba", "png16-rgb", "webp"}  # over a second to write at 40 MP


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MAKERS else n for n in names]


@pytest.mark.parametrize("kind", _params(MAKERS))
def test_a_40_mp_photo_of_any_format_is_bounded_from_its_header(kind):
    """40 MP is within the pixel cap: each format is either refused from its header with the largest size
    it accepts, or decoded with no more than MAX_DECODE_BYTES held by the decoder."""
    data = MAKERS[kind](W40, H40)
    w, h, need, name = images.decode_cost(data)
    assert (w, h) == (W40, H40)
    if need > images.MAX_DECODE_BYTES:
        with pytest.raises(ImageError) as err:
            images.decode(data, name="big")
        message = str(err.value)
        assert "this " in message and "is 40 megapixels" in message and "Send a smaller photo" in message
        most = int(message.split("largest ")[1].split(" accepted is ")[1].split(" megapixels")[0])
        assert 1 <= most < 40
    else:  # decoded within the bound (a grey PNG: 1 or 2 bytes a pixel)
        rgb = images.decode(data, name="big")
        assert rgb.shape[2] == 3 and images.MIN_SIDE <= min(rgb.shape[:2]) < 2 * images.MIN_SIDE


@pytest.mark.parametrize("kind", ["png16-rgba", "png8-rgba", "png8-palette", "bmp", "tiff", "webp"])
def test_the_largest_accepted_size_is_decoded(kind):
    """The size the refusal names is accepted: the bound leaves real photos alone."""
    data = MAKERS[kind](W40, H40) if kind in ("png8-palette",) else MAKERS[kind](64, 48)
    w, h, need, _ = images.decode_cost(data)
    per_pixel = need / (w * h)
    side = int((images.MAX_DECODE_BYTES / per_pixel / 1.34) ** 0.5)  # a 4:3 photo just under the bound
    data = MAKERS[kind](int(side * 1.15), int(side / 1.15))
    assert images.decode_cost(data)[2] <= images.MAX_DECODE_BYTES
    rgb = images.decode(data)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and min(rgb.shape[:2]) >= images.MIN_SIDE


@pytest.mark.slow
def test_a_40_mp_16_bit_upload_is_refused_at_once(tmp_path, extractor, bundle_dir, coffee):
    """The attack: a 1.4 MB 16-bit RGBA PNG of 40 MP posted to /api/search is a 400 with the reason,
    decided from its header (no full-size decode of 320 MB per upload)."""
    catalog = LiveCatalog.open(bundle_dir, extractor=extractor, readonly=True)
    config = load_config(None, {})
    svc = Worker(SourceFactory(lambda n: ListSource([coffee], fps=30.0)), extractor, catalog, config,
                 source_name="test")
    try:
        client = create_app(kiosk(svc), config).test_client()
        data = MAKERS["png16-rgba"](W40, H40)
        t0 = time.perf_counter()
        r = client.post("/api/search", data={"image": (io.BytesIO(data), "big.png")},
                        content_type="multipart/form-data")
        took = time.perf_counter() - t0
        assert r.status_code == 400, r.get_data(as_text=True)
        error = r.get_json()["error"]
        assert "16-bit RGBA PNG is 40 megapixels" in error and "Send a smaller photo" in error
        assert took < 1.0, f"{took:.2f} s: the photo was decoded before it was refused"
    finally:
        catalog.close()


def test_an_upload_for_a_client_that_left_is_not_decoded(coffee):
    """The abandon test is asked before decoding and before the pixels are embedded."""
    jpeg = images.encode_jpeg(coffee)
    calls = []

    def gone():
        calls.append(1)
        return len(calls) > 1  # present for the first look, gone by the second

    with pytest.raises(ClientGone):
        decode_upload(jpeg, "photo.jpg", gone=lambda: True)
    with pytest.raises(ClientGone):
        decode_upload(jpeg, "photo.jpg", gone=gone)
    assert len(calls) == 2
    assert decode_upload(jpeg, "photo.jpg", gone=lambda: False).shape[2] == 3


def test_the_server_tells_a_handler_its_client_left():
    """With real waitress: a handler that waits sees ``pi_search.gone`` turn True once the client closes,
    and False while the client waits for its answer."""
    from flask import Flask

    from pi_search.web.http import make_server

    app = Flask(__name__)
    seen = {}
    release = threading.Event()

    @app.post("/work")
    def work():
        from flask import request

        gone = request.environ["pi_search.gone"]
        seen["at_start"] = gone()
        release.wait(10)
        deadline = time.monotonic() + 5
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["after_close"] = gone()
        return "done"

    @app.post("/quick")
    def quick():
        from flask import request

        return json.dumps(request.environ["pi_search.gone"]())

    server = make_server(app, host="127.0.0.1", port=0, max_viewers=1, max_body_bytes=1 << 20)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        port = server.effective_port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /quick HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"false")
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /work HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert wait_until(lambda: "at_start" in seen, 10)
        s.close()
        release.set()
        assert wait_until(lambda: "after_close" in seen, 10)
        assert seen == {"at_start": False, "after_close": True}
    finally:
        release.set()
        server.task_dispatcher.shutdown(timeout=1)
        server.close()


PEAK_SCRIPT = r"""
import json, resource, sys
from pi_search import images
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
images.decode(data)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({"peak": peak}))
"""


def _largest_accepted(kind: str) -> bytes:
    """The largest 4:3 photo of ``kind`` whose decode the header check lets through."""
    w, h, need, _ = images.decode_cost(MAKERS[kind](800, 600))
    pixels = min(W40 * H40, images.MAX_DECODE_BYTES / (need / (w * h)) * 0.98)
    side = int((pixels * 4 / 3) ** 0.5)
    data = MAKERS[kind](side, side * 3 // 4)
    assert images.too_large(data) is None
    return data


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(set(MAKERS) - {"bmp", "tiff", "gif"}))
def test_the_largest_accepted_photo_decodes_within_the_bound(tmp_path, kind):
    """Measured in a fresh process: the peak resident memory of decoding the largest photo of each
    uploadable format the header check accepts stays within MAX_DECODE_BYTES (plus 10 %): the cost model
    matches the decoders (a 40 MP 16-bit RGBA PNG used to take 640 MB at the decoder's peak)."""
    path = tmp_path / f"big.{kind}"
    path.write_bytes(_largest_accepted(kind))
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    peak = json.loads(out.stdout)["peak"]
    assert peak < images.MAX_DECODE_BYTES * 1.1, f"{kind}: {peak / 1e6:.0f} MB at the peak"


def test_decodes_running_at_once_share_one_budget():
    """Two photos whose decodes would together pass the budget run one after the other; a photo that waits
    too long is Busy (503), and one photo may take the whole budget."""
    from pi_search.errors import Busy

    budget = images.DecodeBudget(100)
    order = []
    first_in = threading.Event()
    release = threading.Event()

    def first():
        with budget.hold(80):
            order.append("first in")
            first_in.set()
            release.wait(10)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(10)
    with pytest.raises(Busy), budget.hold(50, wait=0.2):
        pass
    release.set()
    t.join(10)
    with budget.hold(100):  # the whole budget, once the first photo is done
        order.append("whole")
    assert order == ["first in", "first out", "whole"] and budget.used == 0


def test_the_decoder_holds_the_shared_budget_while_it_runs(coffee, monkeypatch):
    """images.decode takes its photo's cost from images.BUDGET for as long as the decoder runs."""
    seen = []
    real = images._decode

    def spy(*args):
        seen.append(images.BUDGET.used)
        return real(*args)

    monkeypatch.setattr(images, "_decode", spy)
    data = _cv(".png", cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR))
    images.decode(data)
    assert seen == [images.decode_cost(data)[2]] and images.BUDGET.used == 0


def test_an_upload_that_waits_too_long_for_decoding_memory_is_busy(coffee, monkeypatch):
    """Busy (503), not a bad photo, when other decodes hold the budget past the wait."""
    from pi_search.errors import Busy

    monkeypatch.setattr(images, "DECODE_WAIT_S", 0.1)
    monkeypatch.setattr(images, "BUDGET", images.DecodeBudget(1000))
    jpeg = images.encode_jpeg(coffee)
    with images.BUDGET.hold(1000), pytest.raises(Busy):
        decode_upload(jpeg, "photo.jpg", gone=lambda: False)
    assert decode_upload(jpeg, "photo.jpg", gone=lambda: False).shape[2] == 3

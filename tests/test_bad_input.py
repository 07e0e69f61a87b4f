"""Hostile input: bad uploads, path traversal and fuzzed bytes get a 4xx; the daemon keeps serving."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import http.client
import io
import os
import struct
import tempfile
import threading
import zlib

import cv2
import numpy as np
import pytest
from conftest import camera_view, load_photo
from fakes import ListSource, SourceFactory, kiosk, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi_search import images
from pi_search.config import load_config
from pi_search.embed.catalog import read_catalog
from pi_search.errors import CatalogError
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app

FUZZ_EXAMPLES = 2000
COUNTS = {"uploads": 0, "catalogs": 0}


# ---------------------------------------------------------------- sample files
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int = 20000) -> bytes:
    """A real decompression bomb: a 1-bit PNG of side x side pixels (400 MP) in about 50 kB."""
    row = b"\x00" + b"\x00" * (side // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header claiming width x height (small file, huge image)."""
    i = jpeg.find(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


@pytest.fixture(scope="module")
def samples(coffee):
    rng = np.random.default_rng(7)
    jpeg = images.encode_jpeg(coffee)
    bgr = cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR)
    png = cv2.imencode(".png", bgr)[1].tobytes()
    webp = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    corrupt_jpeg = bytearray(jpeg)
    corrupt_jpeg[20:300] = rng.integers(0, 256, 280, dtype=np.uint8).tobytes()
    corrupt_png = bytearray(png)
    corrupt_png[200:260] = rng.integers(0, 256, 60, dtype=np.uint8).tobytes()
    return {"jpeg": jpeg, "png": png, "webp": webp, "corrupt_jpeg": bytes(corrupt_jpeg),
            "corrupt_png": bytes(corrupt_png)}


@pytest.fixture(scope="module")
def catalog(bundle_dir, extractor):
    c = LiveCatalog.open(bundle_dir, extractor=extractor, readonly=True)
    yield c
    c.close()


@pytest.fixture
def app_client(extractor, catalog, coffee):
    config = load_config(None, {"server.max_upload_mb": 2.0})
    svc = Worker(SourceFactory(lambda n: ListSource([coffee], fps=30.0)), extractor, catalog, config,
                  source_name="test")
    svc.start()
    assert wait_until(lambda: svc.latest() is not None)
    app = create_app(kiosk(svc), config)
    yield svc, app, app.test_client()
    svc.stop()


def post(client, files, **kw):
    from werkzeug.datastructures import MultiDict

    data = MultiDict([(name, (io.BytesIO(body), filename)) for name, body, filename in files])
    return client.post("/api/search", data=data, content_type="multipart/form-data", **kw)


# ---------------------------------------------------------------- bad uploads
BAD_UPLOADS = [
    ("not an image", lambda s: b"GIF89a this is text, not a photo" * 3, 415, "not a JPEG, PNG or WebP"),
    ("an executable", lambda s: b"\x7fELF\x02\x01\x01" + bytes(200), 415, "not a JPEG, PNG or WebP"),
    ("a TIFF", lambda s: b"II*\x00" + bytes(200), 415, "not a JPEG, PNG or WebP"),
    ("zero bytes", lambda s: b"", 400, "empty file (0 bytes)"),
    ("truncated JPEG", lambda s: s["jpeg"][: len(s["jpeg"]) // 2], 400, "JPEG file is truncated"),
    ("truncated PNG", lambda s: s["png"][: len(s["png"]) // 3], 400, "PNG file is truncated"),
    ("truncated WebP", lambda s: s["webp"][:5000], 400, "WEBP file is truncated"),
    ("JPEG header only", lambda s: s["jpeg"][:600], 400, "JPEG file is truncated"),
    ("corrupt JPEG", lambda s: s["corrupt_jpeg"], 400, "not a readable image"),
    ("corrupt PNG", lambda s: s["corrupt_png"], 400, "not a readable image"),
    ("PNG bomb", lambda s: png_bomb(), 400, "400 megapixels (20000x20000); the largest accepted is 200"),
    ("JPEG bomb", lambda s: jpeg_with_size(s["jpeg"], 65000, 65000), 400,
     "(65000x65000); the largest accepted is 200 megapixels"),
]


@pytest.mark.parametrize("what, make_body, status, message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_is_a_4xx_with_the_reason(app_client, samples, what, make_body, status, message):
    svc, _, client = app_client
    body = make_body(samples)
    r = post(client, [("image", body, "photo.jpg")])
    assert r.status_code == status, r.get_data(as_text=True)
    assert message in r.get_json()["error"]
    assert client.get("/healthz").status_code == 200
    assert post(client, [("image", samples["jpeg"], "ok.jpg")]).get_json()["matches"][0]["id"] == "coffee"


def test_the_bomb_is_small_but_huge(samples):
    bomb = png_bomb()
    assert len(bomb) < 100_000  # a small file whose image would need 400 MP of memory
    assert images._header_size(bomb) == (20000, 20000)


def test_every_good_format_is_accepted(app_client, samples):
    _, _, client = app_client
    for kind in ("jpeg", "png", "webp"):
        r = post(client, [("image", samples[kind], f"cup.{kind}")])
        assert r.status_code == 200 and r.get_json()["matches"][0]["id"] == "coffee", kind


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/json",
                                          "application/x-www-form-urlencoded", "text/plain"])
def test_wrong_content_type_is_415(app_client, samples, content_type):
    _, _, client = app_client
    r = client.post("/api/search", data=samples["jpeg"], content_type=content_type)
    assert r.status_code == 415 and "multipart/form-data field 'image'" in r.get_json()["error"]


def test_many_files_at_once_are_refused(app_client, samples):
    _, _, client = app_client
    r = post(client, [("image", samples["jpeg"], f"{i}.jpg") for i in range(5)])
    assert r.status_code == 400 and "5 files in one request" in r.get_json()["error"]
    r = post(client, [("image", samples["jpeg"], "a.jpg"), ("other", samples["png"], "b.png")])
    assert r.status_code == 400 and "2 files in one request" in r.get_json()["error"]
    many = {f"f{i}": (io.BytesIO(b"x"), f"{i}.jpg") for i in range(200)}
    r = client.post("/api/search", data=many, content_type="multipart/form-data")
    assert r.status_code == 413 and "too many fields or files" in r.get_json()["error"]


def test_oversized_body_is_413(app_client, samples):
    _, _, client = app_client
    r = post(client, [("image", samples["jpeg"] + bytes(3 * 1024 * 1024), "big.jpg")])
    assert r.status_code == 413 and "the limit is 2 MB" in r.get_json()["error"]
    assert client.get("/healthz").status_code == 200


def test_bad_k_is_400(app_client, samples):
    _, _, client = app_client
    for k in ("0", "-3", "100000"):
        r = post(client, [("image", samples["jpeg"], "a.jpg")], query_string={"k": k})
        assert r.status_code == 400 and "1 to 100" in r.get_json()["error"]


def test_no_temporary_files_are_left(app_client, samples, tmp_path, monkeypatch):
    """Uploads larger than werkzeug's in-memory limit are spooled to disk: nothing may stay there."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    _, _, client = app_client
    big_png = samples["png"] + b"\x00" * 300_000  # > 500 kB, so werkzeug spools it to a file
    fds_before = set(os.listdir("/proc/self/fd"))
    for body in (big_png, big_png[:400_000], png_bomb(), b"\x00" * 900_000, samples["jpeg"]):
        r = post(client, [("image", body, "x.png")])
        assert r.status_code in (200, 400, 415)
        r.close()
    del r
    gc.collect()  # the test client's own request body stream is a spooled file too
    assert list(spool.iterdir()) == []
    leaked = [os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - fds_before
              if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [p for p in leaked if str(spool) in p or "(deleted)" in p], leaked


# ---------------------------------------------------------------- path traversal, over real waitress
@pytest.fixture
def live_server(app_client):
    from waitress import create_server

    from pi_search.web.server import server_options

    _, app, _ = app_client
    # a short poll: close() below ends the loop at its next wake-up, not a second later
    server = create_server(app, host="127.0.0.1", port=0, threads=4,
                           **{**server_options(app), "asyncore_loop_timeout": 0.05})

    def serve():
        with contextlib.suppress(OSError):  # close() from the test thread ends the select loop with EBADF
            server.run()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield server.effective_port
    server.close()
    t.join(5)


TRAVERSALS = [
    ("GET", "/thumbs/../manifest.json"), ("GET", "/thumbs/..%2Fmanifest.json"),
    ("GET", "/thumbs/..%2F..%2F..%2F..%2Fetc%2Fpasswd"), ("GET", "/thumbs/%2e%2e/%2e%2e/etc/passwd"),
    ("GET", "/thumbs//etc/passwd"), ("GET", "/thumbs/%2Fetc%2Fpasswd"), ("GET", "/thumbs/coffee%00.jpg"),
    ("GET", "/thumbs/..\\..\\manifest.json"), ("GET", "/thumbs/items.sqlite"),
    ("GET", "/static/../routes.py"), ("GET", "/static/..%2Froutes.py"), ("GET", "/static/%2e%2e/__init__.py"),
    ("GET", "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd"), ("GET", "/static//etc/passwd"),
    ("GET", "/..%2F..%2Fetc%2Fpasswd"), ("GET", "/api/items/..%2F..%2Fetc%2Fpasswd"),
    ("DELETE", "/api/items/..%2F..%2Fmanifest.json"), ("PATCH", "/api/items/..%2Fx"),
    ("GET", "/teach/../../etc/passwd"),
]


def raw_request(port: int, method: str, path: str):
    """Sends ``path`` byte for byte (no client-side normalisation); returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.headers, body


@pytest.mark.parametrize("method, path", TRAVERSALS)
def test_traversal_reads_nothing_outside(live_server, bundle_dir, method, path):
    status, headers, body = raw_request(live_server, method, path)
    if status in (301, 308):  # merged slashes: a redirect to the normalised path on this server
        target = headers["Location"]
        assert target.startswith(f"http://127.0.0.1:{live_server}/") and ".." not in target
        status, headers, body = raw_request(live_server, method, target.split(str(live_server), 1)[1])
    assert 400 <= status < 500, (status, body[:200])
    manifest = (bundle_dir / "manifest.json").read_bytes()
    for secret in (b"root:", b"import ", b"format_version", manifest[:60], b"SQLite format"):
        assert secret not in body


def test_a_huge_declared_body_is_refused_before_it_is_read(live_server):
    """A client announcing 2 GB gets a 413 at once; the server never buffers it (no disk filled)."""
    conn = http.client.HTTPConnection("127.0.0.1", live_server, timeout=10)
    conn.putrequest("POST", "/api/search")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(2 * 1024**3))
    conn.endheaders()
    conn.send(b"--x\r\n" + b"\0" * 65536)
    r = conn.getresponse()
    assert r.status == 413
    conn.close()
    status, _, _ = raw_request(live_server, "GET", "/healthz")
    assert status == 200


# ---------------------------------------------------------------- fuzzing
def rss_bytes() -> int:
    """Resident memory of this process, after returning freed heap pages to the system."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


SEEDS = {}


def _seeds():
    if not SEEDS:
        rgb = camera_view(load_photo("skimage:coffee"))[::4, ::4]
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        SEEDS["jpeg"] = images.encode_jpeg(rgb, 60)
        SEEDS["png"] = cv2.imencode(".png", bgr)[1].tobytes()
        SEEDS["webp"] = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    return SEEDS


@st.composite
def mutated(draw):
    """A real small JPEG, PNG or WebP, cut, bit-flipped, overwritten or spliced; or plain random bytes."""
    kind = draw(st.sampled_from(["jpeg", "png", "webp", "random", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "header":  # a valid signature followed by anything
        sig = draw(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBP"]))
        return sig + draw(st.binary(max_size=2048))
    data = bytearray(_seeds()[kind])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "overwrite", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=64))
            data[pos: pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos: pos + draw(st.integers(1, 256))]
    return bytes(data)


@pytest.mark.slow
def test_fuzzed_uploads_never_crash_or_leak(app_client, samples):
    svc, _, client = app_client
    for _ in range(5):  # warm up: model, decoders and JSON paths allocated once
        post(client, [("image", samples["jpeg"], "warm.jpg")])
        post(client, [("image", b"junk", "warm.jpg")])
    start = rss_bytes()
    statuses: dict[int, int] = {}
    seen: list[tuple[bytes, str]] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=mutated(), name=st.text(max_size=40))
    def one(data, name):
        COUNTS["uploads"] += 1
        seen.append((data, name or "x"))
        r = post(client, [("image", data, name or "x")])
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400, 415), (r.status_code, data[:64])
        assert "error" in r.get_json() or "matches" in r.get_json()

    one()
    # Memory: the same inputs once more, now that hypothesis is done; the upload path must not grow.
    before = rss_bytes()
    for data, name in seen:
        assert post(client, [("image", data, name)]).status_code in (200, 400, 415)
    after = rss_bytes()
    print(f"\nupload fuzz: {COUNTS['uploads']} generated + {len(seen)} replayed inputs, statuses "
          f"{dict(sorted(statuses.items()))}, RSS {start / 1e6:.1f} MB at start, {before / 1e6:.1f} MB "
          f"before the replay, {after / 1e6:.1f} MB after it")
    assert COUNTS["uploads"] >= FUZZ_EXAMPLES
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0  # both paths were exercised
    assert after < before * 1.10 + 10e6, (before, after)
    assert client.get("/healthz").status_code == 200
    assert kiosk(svc).health()["ok"]


CSV_ALPHABET = st.sampled_from(list("id,title,price,image\n\r\"\x00 ./é\\")
                               + ["images/", "../", "/etc/passwd", "a.jpg", "b.png", "\ufeff", "\u202e",
                                  "../outside.jpg", "images/a.jpg", "x,Title,1.00,images/a.jpg\n"])


@pytest.mark.slow
def test_fuzzed_catalogs_give_rows_or_one_clear_error(tmp_path):
    root = tmp_path / "fuzz-catalog"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(images.encode_jpeg(np.full((8, 8, 3), 90, np.uint8)))
    (root / "images" / "b.png").write_bytes(b"not really a png")
    (tmp_path / "outside.jpg").write_bytes((root / "images" / "a.jpg").read_bytes())
    outcomes = {"rows": 0, "problems": 0, "errors": 0}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(header=st.sampled_from([b"id,title,price,image\n", b"", b"\xef\xbb\xbfid,title,image\n"]),
           body=st.binary(max_size=600)
           | st.lists(CSV_ALPHABET, max_size=120).map(lambda x: "".join(x).encode()))
    def one(header, body):
        COUNTS["catalogs"] += 1
        (root / "catalog.csv").write_bytes(header + body)
        try:
            rows, problems = read_catalog(root)
        except CatalogError as exc:
            assert str(exc).strip() and "Traceback" not in str(exc)
            outcomes["errors"] += 1
            return
        inside = root.resolve()
        for r in rows:
            assert r.image.resolve().is_relative_to(inside) and r.image.is_file()
            assert r.id and r.title
        assert all(str(p) for p in problems)
        outcomes["rows"] += len(rows)
        outcomes["problems"] += len(problems)

    one()
    print(f"\ncatalog fuzz: {COUNTS['catalogs']} catalog files, {outcomes}")
    assert COUNTS["catalogs"] >= FUZZ_EXAMPLES
    assert outcomes["rows"] > 0 and outcomes["problems"] > 0 and outcomes["errors"] > 0

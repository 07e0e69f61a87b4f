"""Every route through Flask's test client, over the worker's read side (``FakeWorker``: no frame loop)
with the real model and the real live catalog. The real worker behind the app: test_load, test_startup,
test_faults, test_lockdown and the daemon tests."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest
from fakes import FakeWorker, kiosk

from pi_search import images
from pi_search.config import load_config
from pi_search.web import create_app


@pytest.fixture
def make(extractor, catalog, coffee):
    """Builds (worker, client) for config overrides; a started worker has published the coffee shot."""

    def _make(start=True, **overrides):
        config = load_config(None, overrides)
        svc = FakeWorker(catalog, extractor, config, source_name="list")
        if start:
            svc.start().publish(coffee)
        return svc, create_app(kiosk(svc), config).test_client()

    return _make


def test_page_has_no_inline_script_and_a_strict_csp(make):
    _, client = make()
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert re.search(r"<script[^>]*>\s*[^<\s]", html) is None  # every script is an empty tag with src
    assert 'src="/static/app.js"' in html and 'id="preview"' in html
    for tag in ('id="freeze"', 'name="image"', 'id="matches"', 'id="status"'):
        assert tag in html


@pytest.mark.parametrize("path, mimetype", [("/static/app.js", "text/javascript"),
                                            ("/static/style.css", "text/css"),
                                            ("/static/icon.svg", "image/svg+xml")])
def test_assets_are_local(make, path, mimetype):
    _, client = make(start=False)
    r = client.get(path)
    assert r.status_code == 200 and r.mimetype == mimetype
    body = re.sub(rb'xmlns="[^"]*"', b"", r.data)  # an SVG namespace is a name, not a download
    assert not re.search(rb"https?://", body)  # no CDN, no network


def test_results_json_shape(make):
    svc, client = make()
    r = client.get("/api/results")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert body["ready"] is True
    assert body["matches"][0]["id"] == "coffee" and body["matches"][0]["title"] == "Cup of coffee"
    for m in body["matches"]:
        assert set(m) >= {"id", "title", "price", "score"} and -1 <= m["score"] <= 1
    assert set(body["timings_ms"]) == {"capture", "gate", "preprocess", "extract", "search", "encode"}
    assert body["frame_id"] >= 0 and body["frame_time"] > 0 and body["latency_ms"] >= 0
    s = body["status"]
    assert s["camera"]["up"] is True and s["camera"]["source"] == "list"  # the name the source reports
    assert s["catalog_items"] == len(svc.catalog) and s["model"] == svc.extractor.name


def test_results_before_the_first_frame(make):
    _, client = make(start=False)
    body = client.get("/api/results").get_json()
    assert body["ready"] is False and body["matches"] == [] and body["frame_id"] is None


def test_results_long_poll_returns_a_newer_frame(make, coffee):
    svc, client = make()
    first = client.get("/api/results").get_json()["frame_id"]
    later = threading.Timer(0.3, svc.publish, args=(coffee,))
    later.start()
    t0 = time.monotonic()
    body = client.get(f"/api/results?after={first}&wait=5").get_json()
    later.join()
    assert body["frame_id"] == first + 1 and time.monotonic() - t0 >= 0.25   # it waited for the new frame


def test_search_upload_answers_matches(make, coffee):
    svc, client = make(start=False)
    data = {"image": (io.BytesIO(images.encode_jpeg(coffee)), "cup.jpg")}
    r = client.post("/api/search", data=data, content_type="multipart/form-data")
    assert r.status_code == 200
    body = r.get_json()
    assert body["matches"][0]["id"] == "coffee"
    assert body["image_size"] == [coffee.shape[1], coffee.shape[0]]
    assert svc.stats.uploads == 1


@pytest.mark.parametrize("data, status, message", [
    ({"image": (io.BytesIO(b"not an image"), "x.jpg")}, 415, "not a JPEG, PNG or WebP photo"),
    ({"image": (io.BytesIO(b""), "empty.jpg")}, 400, "empty"),
    ({"photo": (io.BytesIO(b"abc"), "x.jpg")}, 400, "field 'image'"),
])
def test_search_rejects_bad_uploads(make, data, status, message):
    _, client = make(start=False)
    r = client.post("/api/search", data=data, content_type="multipart/form-data")
    assert r.status_code == status
    assert message in r.get_json()["error"]


def test_search_refuses_large_uploads(make):
    _, client = make(start=False, **{"server.max_upload_mb": 0.1})
    data = {"image": (io.BytesIO(b"\xff\xd8" + b"0" * 200_000), "big.jpg")}
    r = client.post("/api/search", data=data, content_type="multipart/form-data")
    assert r.status_code == 413 and "0.1 MB" in r.get_json()["error"]


def test_search_is_post_only(make):
    _, client = make(start=False)
    r = client.get("/api/search")
    assert r.status_code == 405 and "error" in r.get_json()


def test_thumbnails_by_id(make):
    _, client = make(start=False)
    r = client.get("/thumbs/coffee")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and r.data[:2] == b"\xff\xd8"
    assert images.decode(r.data).shape[2] == 3
    for bad in ("/thumbs/nope", "/thumbs/..%2Fmanifest.json", "/thumbs/../../etc/passwd"):
        assert client.get(bad).status_code == 404


def test_stream_sends_the_shared_jpeg(make):
    svc, client = make()
    r = client.get("/stream.mjpg", buffered=False)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
    parts = iter(r.response)
    head = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n"
    assert next(parts) == head  # the headers go out at once, before any frame
    chunk = next(parts)
    # The part is closed, and the next one opened, in the same write: a browser shows it at once, even when
    # the scene is still and no further JPEG follows.
    assert chunk.endswith(b"\r\n" + head)
    jpeg = chunk[: -len(b"\r\n" + head)]
    assert jpeg == svc.latest().jpeg  # the worker's JPEG itself (a still scene publishes no new one)
    assert svc.stats.viewers == 1
    r.close()
    assert svc.stats.viewers == 0


def test_stream_viewer_limit(make):
    svc, client = make(**{"server.max_viewers": 1})
    first = client.get("/stream.mjpg", buffered=False)
    next(iter(first.response))
    second = client.get("/stream.mjpg")
    assert second.status_code == 503 and "too many" in second.get_json()["error"]
    first.close()


def test_frame_jpeg(make):
    svc, client = make()
    r = client.get("/frame.jpg")
    assert r.status_code == 200 and r.data[:2] == b"\xff\xd8"
    assert int(r.headers["X-Frame-Id"]) >= 0


def test_frame_jpeg_by_id_is_that_frame(make):
    svc, client = make()
    latest = svc.latest()
    r = client.get(f"/frame.jpg?id={latest.frame_id}")
    assert r.status_code == 200 and r.data == latest.jpeg
    assert r.headers["X-Frame-Id"] == str(latest.frame_id)
    gone = client.get("/frame.jpg?id=999999")
    assert gone.status_code == 404 and "no longer kept" in gone.get_json()["error"]


def test_healthz_turns_503_when_the_camera_stops(make):
    svc, client = make()
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json()["ok"] is True and r.get_json()["camera"]["up"] is True
    svc.stop()
    r = client.get("/healthz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["ok"] is False and body["camera"] == {**body["camera"], "up": False, "reason": "stopped"}
    assert "camera: stopped" in body["reasons"]


def test_metrics_are_prometheus_text(make):
    svc, client = make()
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    frames = float(re.search(r"^pi_search_frames_total (\S+)$", text, re.M).group(1))
    assert frames >= 1
    assert re.search(r"^pi_search_inferences_total [1-9]", text, re.M)
    assert re.search(r"^pi_search_skipped_frames_total \d", text, re.M)
    assert re.search(r"^pi_search_camera_up 1\.0$", text, re.M)
    assert re.search(r'^pi_search_stage_seconds_bucket\{le="\+Inf",stage="extract"\} [1-9]', text, re.M)
    assert re.search(r'^pi_search_stage_seconds_count\{stage="search"\} [1-9]', text, re.M)
    svc.stop()
    assert re.search(r"^pi_search_camera_up 0\.0$", client.get("/metrics").get_data(as_text=True), re.M)


def test_unknown_route_is_json_404(make):
    _, client = make(start=False)
    r = client.get("/nope")
    assert r.status_code == 404 and "no such page" in r.get_json()["error"]


def test_token_guards_everything_but_health(make):
    _, client = make(**{"server.token": "b7e1c94a0f3d6e28"})
    assert client.get("/api/results").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/results", headers={"Authorization": "Bearer b7e1c94a0f3d6e28"}).status_code == 200
    assert client.get("/api/results", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/?token=b7e1c94a0f3d6e28")
    assert r.status_code == 200 and "pi_search_token" in r.headers["Set-Cookie"]
    assert client.get("/api/results").status_code == 200  # the cookie now carries it


def test_both_pages_shrink_photos_with_the_one_shared_function():
    """Search photo and Add photo send phone photos shrunk by common.js's ``shrink``, not each by its own."""
    from pathlib import Path

    static = Path(__file__).resolve().parents[1] / "pi_search/web/static"
    common = (static / "common.js").read_text()
    assert "async function shrink(" in common
    for page in ("app.js", "teach.js"):
        text = (static / page).read_text()
        assert "piSearch.shrink(" in text and "function shrink(" not in text and "toBlob(" not in text, page

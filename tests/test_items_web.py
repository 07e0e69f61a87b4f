"""The teaching API and page through Flask's test client, over a real worker, model, bundle and store."""

from __future__ import annotations

import io
import re
import shutil

import cv2
import numpy as np
import pytest
from conftest import camera_view
from fakes import ListSource, SourceFactory, kiosk, wait_until

from pi_search import images
from pi_search.config import is_loopback, load_config
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.tools.benchmark_data import load_rgba, on_white
from pi_search.web import create_app

OSTRICH = "/usr/share/tuxpaint/stamps/animals/birds/ostrich.png"


@pytest.fixture(scope="module")
def ostrich():
    """A photo of an object the test catalog does not hold (RGB uint8 [H, W, 3])."""
    return on_white(load_rgba(OSTRICH), 400)


def jpeg(rgb) -> io.BytesIO:
    return io.BytesIO(images.encode_jpeg(rgb, 90))


def other_view(rgb):
    h, w = rgb.shape[:2]
    return cv2.flip(rgb, 1)[int(h * 0.1):, int(w * 0.05):int(w * 0.9)]


@pytest.fixture
def make(tmp_path, bundle_dir, extractor, ostrich):
    """Builds (service, client) over a private copy of the bundle; the camera shows the ostrich."""
    made = []

    def _make(start=True, **overrides):
        live = tmp_path / f"bundle{len(made)}"
        shutil.copytree(bundle_dir, live)
        cat = LiveCatalog.open(live, extractor=extractor)
        config = load_config(None, {"gate.enabled": False, **overrides})
        frame = camera_view(ostrich)
        svc = Worker(SourceFactory(lambda n: ListSource([frame], fps=20.0)), extractor, cat, config,
                      source_name="test")
        made.append((svc, cat))
        if start:
            svc.start()
            assert wait_until(lambda: svc.latest() is not None)
        return svc, create_app(kiosk(svc), config).test_client()

    yield _make
    for svc, cat in made:
        svc.stop()
        cat.close()


def test_teach_from_the_camera_frame_then_search_another_view(make, ostrich):
    svc, client = make()
    assert client.get("/api/items").get_json()["no_catalog"] is None
    frame = client.get("/frame.jpg")
    assert frame.status_code == 200
    before = client.post("/api/search", data={"image": (jpeg(other_view(ostrich)), "q.jpg")}).get_json()
    assert before["matches"][0]["id"] != "ostrich"
    r = client.post("/api/items", data={
        "title": "Ostrich figure", "price": "24.00", "id": "ostrich",
        "image": [(io.BytesIO(frame.data), "shot-1.jpg"), (jpeg(ostrich), "photo.jpg")],
        "kind": ["camera", "photo"]})
    assert r.status_code == 201, r.get_json()
    item = r.get_json()["item"]
    assert (item["id"], item["title"], item["price"], item["shots"]) == ("ostrich", "Ostrich figure", "24.00",
                                                                         2)
    query = {"image": (jpeg(other_view(ostrich)), "q.jpg")}
    top = client.post("/api/search", data=query).get_json()["matches"]
    assert top[0]["id"] == "ostrich" and top[0]["title"] == "Ostrich figure"
    assert [m["id"] for m in top].count("ostrich") == 1
    # the live camera result follows without a restart
    assert wait_until(lambda: svc.latest().matches[0].id == "ostrich", timeout=20)
    thumb = client.get("/thumbs/ostrich")
    assert thumb.status_code == 200 and thumb.data[:2] == b"\xff\xd8"
    listed = client.get("/api/items").get_json()
    assert [i["id"] for i in listed["items"]] == ["ostrich"] and listed["catalog_items"] == 17
    assert client.get("/api/results").get_json()["status"]["catalog_items"] == 17


def test_edit_remove_and_refusals(make, ostrich):
    _, client = make(start=False)
    photo = [(jpeg(ostrich), "p.jpg")]
    assert client.post("/api/items", data={"title": "Ostrich", "id": "o1", "image": photo}).status_code == 201
    r = client.post("/api/items", data={"title": "Again", "id": "o1", "image": [(jpeg(ostrich), "p.jpg")]})
    assert r.status_code == 409 and "already" in r.get_json()["error"]
    r = client.post("/api/items", data={"title": "No shots", "id": "o2"})
    assert r.status_code == 400 and "no shots" in r.get_json()["error"]
    r = client.post("/api/items", data={"title": "", "id": "o3", "image": [(jpeg(ostrich), "p.jpg")]})
    assert r.status_code == 400 and "title is empty" in r.get_json()["error"]
    r = client.post("/api/items", data={"title": "Bad", "image": [(io.BytesIO(b"not a jpeg"), "x.jpg")]})
    assert r.status_code == 415 and "not a JPEG, PNG or WebP" in r.get_json()["error"]
    cut = jpeg(ostrich).getvalue()[:3000]   # a shot cut short is refused, not taught half grey
    r = client.post("/api/items", data={"title": "Cut", "image": [(io.BytesIO(cut), "cut.jpg")]})
    assert r.status_code == 400 and "truncated" in r.get_json()["error"]
    r = client.patch("/api/items/o1", data={"title": "Tall ostrich", "price": "30.00"})
    assert r.status_code == 200 and r.get_json()["item"]["title"] == "Tall ostrich"
    r = client.patch("/api/items/cat", data={"price": "1.00"})   # a bundle item can be edited too
    assert r.status_code == 200 and r.get_json()["item"]["price"] == "1.00"
    assert client.patch("/api/items/nope", data={"title": "x"}).status_code == 404
    r = client.delete("/api/items/o1")
    assert r.status_code == 200 and r.get_json()["catalog_items"] == 16
    assert client.delete("/api/items/o1").status_code == 409
    assert client.delete("/api/items/nope").status_code == 404
    assert client.get("/thumbs/o1").status_code == 404
    states = {i["id"]: i["deleted"] for i in client.get("/api/items").get_json()["items"]}
    assert states == {"o1": True, "cat": False}


def test_compaction_from_the_api_keeps_the_item(make, ostrich):
    svc, client = make(start=False)
    client.post("/api/items", data={"title": "Ostrich", "id": "ostrich", "image": [(jpeg(ostrich), "p.jpg")]})
    r = client.post("/api/compact")
    assert r.status_code == 202 and r.get_json()["started"] is True
    assert wait_until(lambda: not client.get("/api/items").get_json()["compacting"], timeout=60)
    body = client.get("/api/items").get_json()
    assert body["items"] == [] and body["last_compaction"]["folded"] == 1 and body["catalog_items"] == 17
    # still listed (folded into the bundle), and still editable
    assert [(f["id"], f["title"], f["in_bundle"]) for f in body["folded"]] == [("ostrich", "Ostrich", True)]
    r = client.patch("/api/items/ostrich", data={"price": "26.00"})
    assert r.status_code == 200 and r.get_json()["item"]["price"] == "26.00"
    body = client.get("/api/items").get_json()
    assert [i["id"] for i in body["items"]] == ["ostrich"] and body["folded"] == []
    top = client.post("/api/search", data={"image": (jpeg(other_view(ostrich)), "q.jpg")}).get_json()
    assert top["matches"][0]["id"] == "ostrich"


def test_the_empty_scene_is_captured_and_taken_out_of_camera_shots(make, ostrich, extractor):
    from pi_search.live.teach import embed_background, without_background
    from pi_search.model.framing import embed_query_image

    svc, client = make()
    assert client.get("/api/items").get_json()["background"] is False
    room = np.full((240, 320, 3), (182, 160, 120), np.uint8)   # the counter with nothing on it
    r = client.post("/api/background", data={"image": (jpeg(room), "empty.jpg")})
    assert r.status_code == 200 and client.get("/api/items").get_json()["background"] is True
    from pi_search.live.relearn import scenes_dir

    kept = sorted(scenes_dir(svc.catalog.directory).glob("*.jpg"))   # kept for pi-search index relearn
    assert len(kept) == 1
    assert np.abs(images.read(kept[0]).astype(int) - room).max() <= 6
    shot = camera_view(ostrich)
    r = client.post("/api/items", data={"title": "Ostrich", "id": "o", "image": [(jpeg(shot), "s.jpg")],
                                        "kind": ["camera"]})
    assert r.status_code == 201
    stored = svc.catalog.store.snapshot().vectors[0]
    decoded = images.decode(images.encode_jpeg(shot, 90))
    bg = embed_background(extractor, images.decode(images.encode_jpeg(room, 90)))
    expected = without_background(embed_query_image(extractor, decoded)[None], bg)[0]
    assert np.allclose(stored, expected, atol=1e-4)
    top = client.post("/api/search", data={"image": (jpeg(other_view(ostrich)), "q.jpg")}).get_json()
    assert top["matches"][0]["id"] == "o"
    # without an upload, the camera's current frame is the empty scene; DELETE forgets it
    assert client.post("/api/background").get_json() == {"background": True}
    assert client.delete("/api/background").get_json() == {"background": False}
    assert client.get("/api/items").get_json()["background"] is False


@pytest.mark.parametrize("host, token, headers, status", [
    ("0.0.0.0", "b7e1c94a0f3d6e28", {"Authorization": "Bearer b7e1c94a0f3d6e28"}, 201),
    ("0.0.0.0", "b7e1c94a0f3d6e28", {"Authorization": "Bearer wrong"}, 401),
    ("0.0.0.0", "b7e1c94a0f3d6e28", {}, 401),
    ("0.0.0.0", "", {}, 403),
    ("192.168.1.20", "", {"Authorization": "Bearer anything"}, 403),
    ("127.0.0.1", "", {}, 201),
    ("127.0.0.1", "", {"Origin": "http://evil.example"}, 403),
])
def test_state_changes_need_the_token_off_loopback(make, ostrich, host, token, headers, status):
    _, client = make(start=False, **{"server.host": host, "server.token": token})
    r = client.post("/api/items", headers=headers,
                    data={"title": "Ostrich", "id": "o", "image": [(jpeg(ostrich), "p.jpg")]})
    assert r.status_code == status, r.get_json()
    listing = client.get("/api/items", headers={"Authorization": f"Bearer {token}"} if token else {})
    assert listing.status_code == 200
    assert [i["id"] for i in listing.get_json()["items"]] == (["o"] if status == 201 else [])
    if status != 201:
        assert client.delete("/api/items/cat", headers=headers).status_code == status


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.0.0.2") and not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert not is_loopback("pi.local")


def test_teach_page_and_link(make):
    _, client = make(start=False)
    r = client.get("/teach")
    assert r.status_code == 200 and "unsafe-inline" not in r.headers["Content-Security-Policy"]
    html = r.get_data(as_text=True)
    assert re.search(r"<script[^>]*>\s*[^<\s]", html) is None
    for tag in ('id="capture"', 'id="shots"', 'id="title"', 'id="price"', 'id="item-id"', 'id="recent"',
                'src="/static/teach.js"', 'src="/stream.mjpg"'):
        assert tag in html
    assert 'href="/teach"' in client.get("/").get_data(as_text=True)
    for path in ("/static/teach.js", "/static/teach.css"):
        asset = client.get(path)
        assert asset.status_code == 200 and not re.search(rb"https?://", asset.data)




@pytest.fixture
def no_bundle(tmp_path, extractor, ostrich):
    """(service, client) of a daemon that serves no bundle yet (its bundle directory does not exist)."""
    cat = LiveCatalog.open(tmp_path / "bundle", extractor=extractor, wait=True)
    config = load_config(None, {"gate.enabled": False})
    frame = camera_view(ostrich)
    svc = Worker(SourceFactory(lambda n: ListSource([frame], fps=20.0)), extractor, cat, config,
                 source_name="test")
    yield svc, create_app(kiosk(svc), config).test_client()
    svc.stop()
    cat.close()


def _says_no_catalog(r) -> str:
    assert r.status_code == 503, (r.status_code, r.get_json())
    message = r.get_json()["error"]
    assert message.startswith("there is no catalog yet") and message.count("pi-search index build") == 1 \
        and "pi-search index install" in message and "picks it up by itself" in message
    return message


def test_without_a_bundle_teaching_and_search_say_there_is_no_catalog_yet(no_bundle, ostrich):
    svc, client = no_bundle
    assert not svc.catalog.serving
    shot = {"title": "Ostrich figure", "image": (jpeg(ostrich), "shot-1.jpg")}
    _says_no_catalog(client.post("/api/items", data=shot))
    _says_no_catalog(client.patch("/api/items/ostrich", data={"title": "Ostrich"}))
    _says_no_catalog(client.delete("/api/items/ostrich"))
    # A search is not an empty success ("nothing like it"): the page says the catalog is missing.
    _says_no_catalog(client.post("/api/search", data={"image": (jpeg(ostrich), "q.jpg")}))
    # Listing still answers (the teach page shows it), with nothing in it.
    listed = client.get("/api/items")
    assert listed.status_code == 200 and listed.get_json()["catalog_items"] == 0
    assert listed.get_json()["no_catalog"].startswith("there is no catalog yet")
    # A reload that finds nothing does not claim to keep a bundle that was never there, nor a conflict: the
    # catalog is not there yet (503, like the rest), and the watcher maps one once it is in place.
    r = client.post("/api/reload")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    message = r.get_json()["error"]
    assert "kept the bundle" not in message and "still no catalog" in message and "index build" in message


@pytest.mark.slow
def test_staff_relearn_runs_aside_and_the_new_generation_is_served(make, ostrich):
    import time

    from pi_search.bundle.manifest import read_manifest
    from pi_search.live.relearn import keep_scene

    svc, client = make()
    live = svc.catalog.directory
    keep_scene(live, images.encode_jpeg(np.full((240, 320, 3), (182, 160, 120), np.uint8), 90))
    before = read_manifest(live)
    r = client.post("/api/relearn", headers={"Origin": "http://evil.example"})   # not from the page
    assert r.status_code == 403 and client.get("/api/relearn").get_json()["running"] is False
    r = client.post("/api/relearn")
    assert r.status_code == 202 and r.get_json()["started"] is True
    assert client.post("/api/relearn").get_json()["started"] is False   # one at a time
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        st = client.get("/api/relearn").get_json()
        q = client.post("/api/search", data={"image": (jpeg(camera_view(ostrich)), "q.jpg")})
        assert q.status_code == 200   # the old bundle answers meanwhile
        if not st["running"]:
            break
        time.sleep(0.5)
    assert st["running"] is False and st["error"] is None, st
    assert st["done"] == st["total"] == 16
    after = read_manifest(live)
    assert after.learned["relearned"]["backgrounds"] == 1 and after.created >= before.created
    assert svc.catalog.manifest.learned["relearned"]["times"] == 1   # reloaded: the new one is served
    top = client.post("/api/search", data={"image": (jpeg(camera_view(ostrich)), "q.jpg")}).get_json()
    assert top["matches"]

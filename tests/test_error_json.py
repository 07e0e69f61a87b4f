"""Every error the app answers is JSON {"error": ...} with the status its failure carries."""

from __future__ import annotations

import io
import logging
import shutil
import sqlite3

import pytest
from conftest import camera_view, load_photo
from fakes import ListSource, SourceFactory, kiosk

from pi_search import errors, images
from pi_search.config import load_config
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app


@pytest.fixture
def app_for(tmp_path, bundle_dir, extractor):
    """Builds (appliance, catalog, app) over a private, teachable copy of the bundle (no worker started)."""
    made = []

    def _make(**overrides):
        live = tmp_path / f"bundle{len(made)}"
        shutil.copytree(bundle_dir, live)
        cat = LiveCatalog.open(live, extractor=extractor)
        config = load_config(None, overrides)
        frame = camera_view(load_photo("skimage:coffee"))
        svc = Worker(SourceFactory(lambda n: ListSource([frame], fps=20.0)), extractor, cat, config)
        made.append((svc, cat))
        port = kiosk(svc)
        return port, cat, create_app(port, config)

    yield _make
    for svc, cat in made:
        svc.stop()
        cat.close()


def photo() -> bytes:
    return images.encode_jpeg(camera_view(load_photo("skimage:coffee")), 90)


def _json_error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.data[:200])
    assert r.mimetype == "application/json", r.data[:200]
    body = r.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "<html" not in r.get_data(as_text=True).lower()
    return body["error"]


def test_flask_refusals_are_json(app_for):
    _, _, app = app_for(**{"server.max_upload_mb": 0.1})
    client = app.test_client()
    assert "no such page: /nope" in _json_error(client.get("/nope"), 404)
    head = client.head("/nope")
    assert head.status_code == 404 and head.mimetype == "application/json"
    r = client.get("/api/reload")
    assert "GET is not allowed on /api/reload" in _json_error(r, 405) and "POST" in r.headers["Allow"]
    assert _json_error(client.put("/api/items"), 405)
    big = {"image": (io.BytesIO(b"\xff\xd8" + b"0" * 200_000), "big.jpg")}
    assert "the limit is 0.1 MB" in _json_error(client.post("/api/search", data=big), 413)
    many = {f"f{n}": "x" for n in range(100)}
    assert "too many fields" in _json_error(client.post("/api/items", data=many,
                                                        content_type="multipart/form-data"), 413)
    broken = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\nxx"
    r = client.post("/api/search", data=broken, content_type="multipart/form-data; boundary=b")
    assert 400 <= r.status_code < 500 and _json_error(r, r.status_code)


def test_an_unhandled_fault_is_a_json_500_without_internals_and_the_traceback_is_logged(app_for, monkeypatch,
                                                                                      caplog):
    _, cat, app = app_for()

    def corrupt(item_id):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(cat, "thumbnail", corrupt)
    with caplog.at_level(logging.ERROR, logger="pi_search.web.errors"):
        r = app.test_client().get("/thumbs/coffee")
    message = _json_error(r, 500)
    assert "malformed" not in message and "DatabaseError" not in message and "Traceback" not in message
    assert "journalctl" in message
    logged = [rec for rec in caplog.records if rec.name == "pi_search.web.errors"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "database disk image is malformed" in caplog.text and "Traceback" in caplog.text
    assert app.test_client().get("/api/results").status_code == 200  # the app keeps answering


@pytest.mark.parametrize("cls, status", [(errors.BadInput, 400), (errors.NotFound, 404),
                                         (errors.Conflict, 409), (errors.TooLarge, 413),
                                         (errors.Unsupported, 415), (errors.Busy, 503),
                                         (errors.ImageError, 400), (errors.CatalogError, 400),
                                         (errors.NoSuchItem, 404), (errors.ItemConflict, 409),
                                         (errors.BundleError, 500), (errors.BundleRefused, 409),
                                         (errors.NoCatalog, 503), (errors.Unavailable, 503),
                                         (errors.NeedsToken, 401), (errors.Refused, 403),
                                         (errors.Locked, 403), (errors.TooManyTries, 429),
                                         (errors.NothingFound, 422),
                                         (errors.NoSpace, 507)])
def test_error_classes_map_to_their_status(app_for, monkeypatch, cls, status):
    from pi_search.web.errors import status_of

    port, _, app = app_for()

    def failing():
        raise cls("what went wrong, and what to do")

    monkeypatch.setattr(port, "health", failing)
    r = app.test_client().get("/healthz")
    assert r.status_code == status and r.get_json()["error"] == "what went wrong, and what to do"
    assert set(r.get_json()) == ({"error", "locked"} if cls is errors.Locked else {"error"})  # the PIN pad
    assert status_of(cls("x")) == status and issubclass(cls, errors.PiSearchError)
    wait = "5" if cls is errors.NoCatalog else "1" if status == 503 else None
    assert r.headers.get("Retry-After") == wait


def test_catalog_errors_keep_their_class_for_the_command_line():
    assert issubclass(errors.NoSuchItem, errors.CatalogError) and issubclass(errors.ItemConflict,
                                                                             errors.CatalogError)
    assert issubclass(errors.ImageError, errors.BadInput) and not issubclass(errors.Busy, errors.ImageError)


def test_item_statuses_come_from_the_error_class(app_for):
    _, cat, app = app_for()
    client = app.test_client()
    assert "no item 'walnut'" in _json_error(client.post("/api/items/walnut", data={"title": "Walnut"}), 404)
    assert "no item 'walnut'" in _json_error(client.delete("/api/items/walnut"), 404)
    taken = {"title": "Coffee again", "id": "coffee", "image": [(io.BytesIO(photo()), "a.jpg")]}
    assert "already in the catalog" in _json_error(client.post("/api/items", data=taken), 409)
    assert client.delete("/api/items/coffee").status_code == 200
    assert "already removed" in _json_error(client.delete("/api/items/coffee"), 409)
    assert _json_error(client.patch("/api/items/coffee", data={"title": "Back"}), 404)
    def new(**fields):
        return {"title": "Walnut", "id": "walnut", "image": [(io.BytesIO(photo()), "a.jpg")], **fields}

    assert "no slashes" in _json_error(client.post("/api/items", data=new(id="a b/c")), 400)
    assert "title is empty" in _json_error(client.post("/api/items", data=new(title="")), 400)
    assert client.post("/api/items", data=new()).status_code == 201


def test_a_full_upload_slot_is_503(app_for):
    port, _, app = app_for()

    class Taken:
        """Both upload slots held by other requests: acquiring gives up (as after the 10 s wait)."""

        def acquire(self, timeout=None):
            return False

        def release(self):
            raise AssertionError("released a slot that was never taken")

    port._upload_slots = Taken()
    r = app.test_client().post("/api/search", data={"image": (io.BytesIO(photo()), "q.jpg")})
    assert "busy with other uploads" in _json_error(r, 503) and r.headers["Retry-After"] == "1"
    assert port.stats.uploads == 0

"""The kiosk lock ([page] lock_teaching, pin) through Flask's test client, over a real model and store."""

from __future__ import annotations

import io
import shutil
import time

import pytest
from conftest import camera_view, load_photo
from fakes import ListSource, SourceFactory, kiosk

from pi_search import images
from pi_search.config import load_config
from pi_search.errors import ConfigError
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app
from pi_search.web.lock import MAX_TRIES

PIN = "5731"
TOKEN = "t" * 24


@pytest.fixture
def make(tmp_path, bundle_dir, extractor):
    """(client, catalog) for [page] overrides over a private copy of the bundle (the worker is not started:
    teaching needs no camera)."""
    made = []

    def _make(**overrides):
        live = tmp_path / f"bundle{len(made)}"
        shutil.copytree(bundle_dir, live)
        cat = LiveCatalog.open(live, extractor=extractor)
        config = load_config(None, overrides)
        svc = Worker(SourceFactory(lambda n: ListSource([], fps=1.0)), extractor, cat, config,
                      source_name="test")
        made.append(cat)
        return create_app(kiosk(svc), config).test_client(), cat

    yield _make
    for cat in made:
        cat.close()


def shot():
    return (io.BytesIO(images.encode_jpeg(camera_view(load_photo("skimage:chelsea")), 90)), "cat.jpg")


def teach(client, item_id: str, **headers):
    return client.post("/api/items", data={"title": "A cat", "id": item_id, "image": shot()}, headers=headers)


def test_unlocked_by_default(make):
    client, _ = make()
    assert 'id="teach"' in client.get("/").get_data(as_text=True)
    assert teach(client, "cat-1").status_code == 201


def test_locked_teaching_is_hidden_and_refused_without_the_pin(make):
    client, cat = make(**{"page.lock_teaching": True, "page.pin": PIN})
    html = client.get("/").get_data(as_text=True)
    assert 'id="teach"' not in html and 'id="staff"' in html
    assert 'id="pin"' in client.get("/teach").get_data(as_text=True)
    routes = (("GET", "/api/items"), ("POST", "/api/items"), ("DELETE", "/api/items/coffee"),
              ("PATCH", "/api/items/coffee"), ("POST", "/api/background"), ("POST", "/api/compact"))
    for method, path in routes:
        r = client.open(path, method=method)
        assert r.status_code == 403 and "locked" in r.get_json()["error"], (method, path)
    before = len(cat)
    assert teach(client, "cat-3", **{"X-Pi-Search-Pin": "0000"}).status_code == 403
    assert len(cat) == before
    assert teach(client, "cat-3", **{"X-Pi-Search-Pin": PIN}).status_code == 201
    assert len(cat) == before + 1


def test_the_server_token_unlocks_teaching_too(make):
    client, _ = make(**{"page.lock_teaching": True, "page.pin": PIN, "server.token": TOKEN})
    assert teach(client, "cat-2").status_code == 401   # the token guards everything here
    assert teach(client, "cat-2", Authorization=f"Bearer {TOKEN}").status_code == 201
    assert 'id="teach"' in client.get(f"/?token={TOKEN}").get_data(as_text=True)


def test_unlock_sets_a_cookie_and_lock_forgets_it(make):
    client, _ = make(**{"page.lock_teaching": True, "page.pin": PIN})
    r = client.post("/api/unlock", data={"pin": "9999"})
    assert r.status_code == 403 and "wrong PIN" in r.get_json()["error"]
    r = client.post("/api/unlock", data={"pin": PIN})
    assert r.status_code == 200 and r.get_json() == {"teach": "unlocked"}
    cookie = client.get_cookie("pi_search_teach")
    assert cookie is not None and PIN not in cookie.value and cookie.http_only
    assert 'id="teach"' in client.get("/").get_data(as_text=True)
    assert teach(client, "cat-4").status_code == 201
    assert client.post("/api/lock").status_code == 200
    assert teach(client, "cat-5").status_code == 403
    # The cookie proves the PIN only until it expires, whatever the browser keeps; its expiry cannot be moved.
    state = client.application.extensions["pi_search"]["lock"]
    client.set_cookie("pi_search_teach", state.cookie(PIN, int(time.time()) - 1))
    assert teach(client, "cat-5").status_code == 403
    expires = cookie.value.split(".")[0]
    client.set_cookie("pi_search_teach", cookie.value.replace(expires, str(int(expires) + 10**6)))
    assert teach(client, "cat-5").status_code == 403
    client.set_cookie("pi_search_teach", cookie.value)
    assert teach(client, "cat-5").status_code == 201
    # A cookie from another site's form is refused.
    r = client.post("/api/unlock", data={"pin": PIN}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_wrong_pins_pause_unlocking(make):
    client, _ = make(**{"page.lock_teaching": True, "page.pin": PIN})
    for _ in range(MAX_TRIES):
        assert client.post("/api/unlock", data={"pin": "0000"}).status_code == 403
    r = client.post("/api/unlock", data={"pin": PIN})   # even the right PIN waits now
    assert r.status_code == 429 and "too many wrong PINs" in r.get_json()["error"]


def test_locked_without_a_pin_points_to_the_token(make):
    client, _ = make(**{"page.lock_teaching": True})
    assert "/teach?token=TOKEN" in client.get("/teach").get_data(as_text=True)
    r = client.post("/api/items", data={"title": "x"})
    assert r.status_code == 403 and "/teach?token=TOKEN" in r.get_json()["error"]


@pytest.mark.parametrize("key, value, message", [
    ("page.currency", "euro", 'is not a code like "EUR"'),
    ("page.locale", "en_GB", 'is not a tag like "en-GB"'),
    ("page.pin", "12", "is not 4 to 32 characters"),
    ("page.pin", "12 34", "is not 4 to 32 characters"),
])
def test_page_keys_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value})
    good = load_config(None, {"page.currency": "GBP", "page.locale": "de-DE", "page.pin": "0042"})
    assert good.page.currency == "GBP" and good.page.pin == "0042"

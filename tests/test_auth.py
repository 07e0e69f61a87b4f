"""Who may ask what: Host names (DNS rebinding), Origins (cross-site writes), tokens and their cookie."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
from conftest import camera_view, load_photo
from fakes import ListSource, SourceFactory, kiosk, wait_until

from pi_search import images
from pi_search.config import check_bind, load_config, token_problem
from pi_search.errors import ConfigError
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import auth, create_app

TOKEN = "4f9c2e7a1b8d3f60c5e9a2d7b1f84c3e"  # openssl rand -hex 16


@pytest.fixture
def make(tmp_path, bundle_dir, extractor):
    """Builds (service, catalog, client) over a private, teachable copy of the bundle."""
    made = []

    def _make(start=False, **overrides):
        live = tmp_path / f"bundle{len(made)}"
        shutil.copytree(bundle_dir, live)
        cat = LiveCatalog.open(live, extractor=extractor)
        config = load_config(None, overrides)
        frame = camera_view(load_photo("skimage:coffee"))
        svc = Worker(SourceFactory(lambda n: ListSource([frame], fps=20.0)), extractor, cat, config)
        made.append((svc, cat))
        if start:
            svc.start()
            assert wait_until(lambda: svc.latest() is not None)
        return svc, cat, create_app(kiosk(svc), config).test_client()

    yield _make
    for svc, cat in made:
        svc.stop()
        cat.close()


def photo() -> io.BytesIO:
    return io.BytesIO(images.encode_jpeg(camera_view(load_photo("skimage:coffee")), 90))


# Every state-changing route with a body it would accept from the page itself.
CHANGES = [
    ("POST", "/api/items", lambda: {"title": "HACKED", "id": "hacked", "image": [(photo(), "a.jpg")]}),
    ("POST", "/api/items/coffee", lambda: {"title": "HACKED", "price": "0.01"}),
    ("PATCH", "/api/items/coffee", lambda: {"title": "HACKED", "price": "0.01"}),
    ("DELETE", "/api/items/coffee", lambda: None),
    ("POST", "/api/background", lambda: {"image": (photo(), "bg.jpg")}),
    ("DELETE", "/api/background", lambda: None),
    ("POST", "/api/compact", lambda: None),
    ("POST", "/api/reload", lambda: None),
    ("POST", "/api/search", lambda: {"image": (photo(), "q.jpg")}),
]

HOSTILE = [
    {"Origin": "null"},                                                     # a sandboxed iframe, a file://
    {"Origin": "http://evil.example"},                                      # another site
    {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://localhost:9999"},                                    # another port of this machine
    {"Origin": "https://localhost"},                                        # another scheme
    {"Sec-Fetch-Site": "cross-site"},                                       # a browser that left Origin out
    {"Sec-Fetch-Site": "same-site"},                                        # a sibling app on this host
]


def _state(cat, client):
    listing = client.get("/api/items").get_json()
    return cat.item("coffee"), listing["background"], len(cat), [i["id"] for i in listing["items"]]


@pytest.mark.parametrize("headers", HOSTILE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_cross_site_changes_are_refused_and_change_nothing(make, headers):
    svc, cat, client = make()
    before = _state(cat, client)
    for method, path, body in CHANGES:
        r = client.open(path, method=method, headers=headers, data=body())
        assert r.status_code == 403, (method, path, r.get_json())
        assert r.is_json and "refused" in r.get_json()["error"], (method, path)
    assert _state(cat, client) == before
    assert cat.item("coffee")["title"] == "Cup of coffee" and svc.stats.uploads == 0


def test_same_origin_changes_pass(make):
    _, cat, client = make()
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}  # the test client's Host: localhost
    r = client.post("/api/items/coffee", headers=own, data={"title": "Espresso", "price": "2.40"})
    assert r.status_code == 200, r.get_json()
    assert cat.item("coffee")["title"] == "Espresso"
    r = client.post("/api/items/coffee", headers={"Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080"},
                    data={"price": "2.50"})
    assert r.status_code == 200 and cat.item("coffee")["price"] == "2.50"
    r = client.post("/api/items/coffee", data={"price": "2.60"})  # curl, scripts: no Origin at all
    assert r.status_code == 200 and cat.item("coffee")["price"] == "2.60"
    assert client.delete("/api/items/coffee", headers={"Origin": "http://localhost:80"}).status_code == 200
    assert cat.item("coffee") is None


@pytest.mark.parametrize("host", ["evil:8080", "evil.example", "attacker.localhost:8080",
                                  "127.0.0.1.evil.com", "pi.local:8080", "localhost:8080:1", "[::1", "",
                                  "loc alhost"])
def test_unknown_host_names_are_refused_on_every_route(make, host):
    _, cat, client = make()
    for method, path in (("GET", "/"), ("GET", "/healthz"), ("GET", "/api/results"), ("GET", "/api/items"),
                         ("GET", "/static/app.js"), ("DELETE", "/api/items/coffee"), ("GET", "/nope")):
        r = client.open(path, method=method, headers={"Host": host})
        assert r.status_code == 400, (host, path)
        assert "allowed_hosts" in r.get_json()["error"]
    assert cat.item("coffee") is not None


def test_dns_rebinding_delete_is_refused(make):
    _, cat, client = make()
    r = client.delete("/api/items/coffee", headers={"Host": "evil:8080", "Origin": "http://evil:8080"})
    assert r.status_code == 400 and cat.item("coffee") is not None


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LOCALHOST", "[::1]:8080",
                                  "localhost.:8080", "192.168.1.20:8080", "[fe80::1]:8080", "pi.local:8080",
                                  "Kiosk.Shop.Lan", "kiosk.shop.lan:80"])
def test_loopback_names_ip_addresses_and_listed_names_pass(make, host):
    _, _, client = make(**{"server.allowed_hosts": ["pi.local", "kiosk.shop.lan"]})
    assert client.get("/api/results", headers={"Host": host}).status_code == 200, host
    assert client.get("/", headers={"Host": host}).status_code == 200, host


def test_the_configured_bind_host_is_a_name_too(make):
    _, _, client = make(**{"server.host": "kiosk.lan", "server.token": TOKEN})
    auth_header = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/results", headers={"Host": "kiosk.lan:8080", **auth_header}).status_code == 200
    assert client.get("/api/results", headers={"Host": "other.lan:8080", **auth_header}).status_code == 400


def test_another_sites_page_cannot_load_the_preview_but_may_link_to_the_page(make):
    svc, _, client = make(start=True)
    embedded = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    r = client.get("/stream.mjpg", headers=embedded)
    assert r.status_code == 403 and svc.stats.viewers == 0
    assert client.get("/frame.jpg", headers=embedded).status_code == 403
    assert client.get("/api/results", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
                      ).status_code == 403
    linked = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert client.get("/", headers=linked).status_code == 200
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    assert client.get("/frame.jpg", headers=own).status_code == 200


# ---------------------------------------------------------------- the token
def _cookie(r) -> str:
    return r.headers.get("Set-Cookie", "")


def test_token_sources(make):
    _, cat, client = make(start=True, **{"server.host": "0.0.0.0", "server.token": TOKEN})
    assert client.get("/api/results").status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/static/app.js").status_code == 200
    assert client.get("/api/results", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/results", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200
    assert client.get("/api/results", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    # ?token= counts only on a page, and only a page sets the cookie
    r = client.get(f"/api/results?token={TOKEN}")
    assert r.status_code == 401 and "pi_search_token" not in _cookie(r)
    assert client.post(f"/api/items/coffee?token={TOKEN}", data={"title": "HACKED"}).status_code == 401
    # the old extra sources are gone: a custom header and a form field
    assert client.post("/api/items/coffee", headers={"X-Pi-Search-Token": TOKEN},
                       data={"title": "HACKED"}).status_code == 401
    assert client.post("/api/items/coffee", data={"title": "HACKED", "token": TOKEN}).status_code == 401
    assert cat.item("coffee")["title"] == "Cup of coffee"
    r = client.get(f"/teach?token={TOKEN}")
    assert r.status_code == 200
    cookie = _cookie(r)
    assert f"pi_search_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/results").status_code == 200  # the cookie carries it now
    assert client.post("/api/items/coffee", data={"title": "Espresso"}).status_code == 200
    assert cat.item("coffee")["title"] == "Espresso"


def test_a_wrong_token_in_the_page_url_sets_no_cookie_and_a_right_one_replaces_a_stale_cookie(make):
    _, _, client = make(**{"server.host": "0.0.0.0", "server.token": TOKEN})
    r = client.get("/?token=" + "0" * 32)
    assert r.status_code == 401 and "pi_search_token" not in _cookie(r)
    client.set_cookie(auth.TOKEN_COOKIE, "an-old-token-from-last-year", domain="localhost")
    assert client.get("/api/results").status_code == 401
    r = client.get(f"/?token={TOKEN}")
    assert r.status_code == 200 and f"pi_search_token={TOKEN}" in _cookie(r)
    assert client.get("/api/results").status_code == 200


def test_token_of_spaces_no_longer_authenticates(make):
    spaces = " " * 20
    with pytest.raises(ConfigError, match="whitespace"):
        check_bind(load_config(None, {"server.host": "0.0.0.0", "server.token": spaces}).server)
    assert auth.token_matches("", TOKEN) is False and auth.token_matches(TOKEN, "") is False


def test_cross_site_is_refused_even_with_the_token(make):
    _, cat, client = make(**{"server.host": "0.0.0.0", "server.token": TOKEN})
    r = client.delete("/api/items/coffee", headers={"Authorization": f"Bearer {TOKEN}", "Origin": "null"})
    assert r.status_code == 403 and cat.item("coffee") is not None


@pytest.mark.parametrize("token, problem", [
    (" " * 20, "contains whitespace"),
    ("\t" * 16, "contains whitespace"),
    ("4f9c2e7a 1b8d3f60c5e9", "contains whitespace"),
    ("s3cret", "is 6 characters long: use at least 16"),
    ("x" * 15, "is 15 characters long"),
    ("t" * 20, "is one character repeated ('t')"),
    ("ab" * 12, "uses only 2 different characters"),
    ("1234" * 5, "uses only 4 different characters"),
    ("abcdefghijklmnopqrst", "straight run"),
    ("ZYXWVUTSRQPONMLKJ", "straight run"),
    ("my-shop-password-2024", "contains the word 'password'"),
    ("a-long-random-string", "contains the word 'random'"),
    ("Kiosk_Secret_12345", "contains the word 'secret'"),
    ("kF9+2/x7Qa==Lm0pZ3w", "contains '+' '/' '='"),
    ("caf\u00e9-caf\u00e9-4f9c2e7a1b", "contains '\u00e9'"),
])
def test_weak_tokens_are_named(token, problem):
    assert problem in token_problem(token)


@pytest.mark.parametrize("token", [TOKEN, "0123456789abcdef", "k3Jd9-xx_Qw.Lm~0pZ", "Zm9vYmFyYmF6cXV4MTIz"])
def test_random_tokens_pass(token):
    assert token_problem(token) is None
    check_bind(load_config(None, {"server.host": "0.0.0.0", "server.token": token}).server)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_serve_refuses_a_weak_token_in_one_line(tmp_path, host):
    from click.testing import CliRunner

    from pi_search.cli import main

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[server]\nhost = "{host}"\ntoken = "{" " * 20}"\n')
    res = CliRunner().invoke(main, ["serve", "--config", str(cfg), "--bundle", str(tmp_path / "nope")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: [server] token contains whitespace")
    assert lines[0].endswith("; use e.g. openssl rand -hex 16")


# ---------------------------------------------------------------- allowed_hosts in the config
def test_allowed_hosts_are_checked_with_their_line(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[server]\nallowed_hosts = ["pi.local", "10.0.0.5", "kiosk.shop.lan."]\n')
    assert load_config(cfg).server.allowed_hosts == ("pi.local", "10.0.0.5", "kiosk.shop.lan.")
    for bad, message in (('["http://pi.local"]', "is not a host name"),
                         ('["pi.local:8080"]', "without scheme"), ('["*.local"]', "wildcard"),
                         ('"pi.local"', "is not a list of strings"),
                         ("[8080]", "is not a list of strings")):
        cfg.write_text(f"[server]\nport = 8080\nallowed_hosts = {bad}\n")
        where = r"\[server\] allowed_hosts \(line 3\): .*"
        with pytest.raises(ConfigError, match=where + re.escape(message)):
            load_config(cfg)


def test_the_example_config_documents_the_server_keys_as_config_py_reads_them():
    from pathlib import Path

    from pi_search.config import ServerConfig

    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    text = example.read_text()
    server = load_config(example).server
    assert server.allowed_hosts == ServerConfig().allowed_hosts and server.token == ServerConfig().token
    section = text[text.index("[server]"):]
    # the example value shown in the comment is one config.py accepts
    shown = re.search(r"^#.*e\.g\. (\[[^\]]*\])", section[:section.index("allowed_hosts =")], re.M)
    cfg = load_config(None, {"server.allowed_hosts": json.loads(shown.group(1))})
    names = cfg.server.allowed_hosts
    assert names and all(auth.host_allowed(h, cfg.server) for h in names)
    # the token rules the comment lists are the ones token_problem applies
    comment = section[:section.index("token =")]
    for rule, weak in (("fewer than 16", "4f9c2e7a1b8d3f6"), ("whitespace", "4f9c2e7a 1b8d3f60c"),
                       ("one character repeated", "e" * 16), ("fewer than 5 different", "abcd" * 4),
                       ("a run like abcdef", "abcdefghijklmnop"), ('"password"', "my-password-4f9c2e7a")):
        assert rule in comment.replace("\n# ", " "), rule
        assert token_problem(weak), weak
    assert "openssl rand -hex 16" in comment

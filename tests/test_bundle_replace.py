"""Replacing the served bundle the ways people do it (cp, rsync, index install) while queries run, and a
daemon started on a broken or half-copied bundle: it never dies, says why, and serves the new bundle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import CATALOG_PHOTOS, camera_view, load_photo, write_catalog
from fakes import free_port as _free_port
from fakes import serve_command, wait_until

from pi_search import images

EXE = Path(sys.executable).with_name("pi-search")
OTHER = CATALOG_PHOTOS[:4]          # the replacement catalog: 4 of the 16 items
pytestmark = pytest.mark.slow



def _get(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int | None, dict]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else {}
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"html": body[:200]}
    except OSError:
        return None, {}


class Daemon:
    """`pi-search serve` on ``bundle`` replaying the coffee cup; ``health()`` is (status, json)."""

    def __init__(self, tmp_path: Path, bundle: Path, env: dict | None = None):
        frames = tmp_path / "frames"
        frames.mkdir(exist_ok=True)
        frames.joinpath("coffee.jpg").write_bytes(
            images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "daemon.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(serve_command(EXE, frames, bundle, self.port), stdout=fh,
                                         stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        up = wait_until(lambda: self.health()[0] is not None or self.proc.poll() is not None, 90)
        assert up, self.text()
        assert self.proc.poll() is None, self.text()

    def health(self) -> tuple[int | None, dict]:
        return _get(self.url + "/healthz")

    def items(self) -> int | None:
        status, h = self.health()
        return h["index"]["items"] if status == 200 else None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Clients:
    """Three clients querying all the time (results, thumbnails, uploaded photos), recording every answer."""

    def __init__(self, url: str, photo: bytes):
        self.url, self.photo = url, photo
        self.statuses: list[int | None] = []
        self.non_json: list = []
        self.searches = 0
        self.empty: list = []      # searches answered 200 with no matches
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(3)]

    def _run(self, n: int) -> None:
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + self.photo + f"\r\n--{boundary}--\r\n".encode()
        while not self._stop.is_set():
            if n == 0:
                status, body_json = _get(self.url + "/api/results")
            elif n == 1:
                status, body_json = _get(self.url + "/thumbs/coffee")
                body_json = {"ok": True} if status == 200 else body_json
            else:
                status, body_json = _get(self.url + "/api/search", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
            if n == 2 and status == 200:
                self.searches += 1
                if not body_json.get("matches"):
                    self.empty.append(time.monotonic())
            self.statuses.append(status)
            if status != 200 and "error" not in body_json:
                self.non_json.append((status, body_json))
            time.sleep(0.05)

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory, extractor) -> Path:
    """A complete bundle of another catalog (4 items), to copy over the served one."""
    from pi_search.embed.build import build_bundle

    root = tmp_path_factory.mktemp("other")
    out = root / "bundle"
    build_bundle(write_catalog(root / "catalog", OTHER), out, extractor, progress=False)
    return out


@pytest.fixture
def shot() -> bytes:
    return images.encode_jpeg(camera_view(load_photo("skimage:coffee")))


@pytest.fixture(params=["leases"])
def served(request, tmp_path, bundle_dir):
    """A copy of the 16-item session bundle served by a real daemon (``no-leases``: one that cannot take
    read leases on the bundle's files, as when they belong to another user and it lacks CAP_LEASE)."""
    live = tmp_path / "state" / "bundle"
    shutil.copytree(bundle_dir, live)
    d = Daemon(tmp_path, live, {"PI_SEARCH_LEASES": "0"} if request.param == "no-leases" else None)
    assert wait_until(lambda: d.items() == len(CATALOG_PHOTOS), 30), d.text()
    yield live, d
    d.stop()
    assert [p.name for p in live.parent.iterdir() if ".serving-" in p.name] == []   # private copies deleted


def _replaced_within(d: Daemon, items: int, seconds: float = 15.0) -> bool:
    return wait_until(lambda: d.items() == items, seconds)


@pytest.mark.parametrize("served", ["leases", "no-leases"], indirect=True)
def test_cp_over_the_served_files_keeps_the_old_bundle_answering(served, other_bundle, shot):
    live, d = served
    with Clients(d.url, shot) as clients:
        assert wait_until(lambda: clients.searches > 5)
        # One file of another bundle copied in place: the old bundle keeps answering, the mix is refused.
        subprocess.run(["cp", str(other_bundle / "vectors.npy"), str(live / "vectors.npy")], check=True)
        assert wait_until(lambda: "vectors.npy" in (d.health()[1]["index"].get("refused") or ""), 10), \
            d.text()
        status, h = d.health()
        assert d.proc.poll() is None and status == 200 and d.items() == len(CATALOG_PHOTOS)
        assert "copy the whole bundle" in h["index"]["refused"]
        # The whole other bundle copied over it in place, file by file, as `cp -r` does.
        subprocess.run(["cp", "-r", f"{other_bundle}/.", str(live)], check=True)
        copied = time.monotonic()
        assert _replaced_within(d, len(OTHER)), d.text()
        took = time.monotonic() - copied
        searched = clients.searches
        assert wait_until(lambda: clients.searches > searched + 5)
    assert d.proc.poll() is None, d.text()
    assert took <= 15.0
    assert set(clients.statuses) == {200}, clients.statuses
    assert clients.empty == [] and clients.searches > 20, (clients.searches, len(clients.empty))
    assert "Traceback" not in d.text()
    copies = [p.name for p in live.parent.iterdir() if ".serving-" in p.name]
    assert len(copies) <= 1, copies          # at most the one served (no leases); old ones are deleted


@pytest.mark.parametrize("served", ["leases", "no-leases"], indirect=True)
def test_cp_r_again_and_again_over_the_served_bundle(served, other_bundle, bundle_dir, shot):
    live, d = served
    with Clients(d.url, shot) as clients:
        assert wait_until(lambda: clients.searches > 5)
        for source, items in ((other_bundle, len(OTHER)), (bundle_dir, len(CATALOG_PHOTOS)),
                              (other_bundle, len(OTHER))):
            # its manifest first (the old files are then listed by no manifest on the disk), then the rest
            subprocess.run(["cp", str(source / "manifest.json"), str(live)], check=True)
            subprocess.run(["cp", "-r", f"{source}/.", str(live)], check=True)
            assert _replaced_within(d, items), d.text()
            assert d.proc.poll() is None, d.text()
    assert set(clients.statuses) == {200}, clients.statuses
    assert clients.empty == [] and clients.searches > 20, (clients.searches, len(clients.empty))
    assert "Traceback" not in d.text()


def test_rsync_over_the_served_bundle_keeps_the_old_one_answering(served, other_bundle, shot):
    live, d = served
    assert shutil.which("rsync"), "rsync is installed by install.sh --dev"
    with Clients(d.url, shot) as clients:
        assert wait_until(lambda: len(clients.statuses) > 20)
        # rsync writes each file under a temporary name and renames it into place; the old files stay
        # mapped (and intact) until the new bundle is complete.
        subprocess.run(["rsync", "-a", "--delete", f"{other_bundle}/", f"{live}/"], check=True)
        assert _replaced_within(d, len(OTHER)), d.text()
    assert d.proc.poll() is None
    assert set(clients.statuses) == {200}, clients.statuses


def test_index_install_replaces_the_bundle_atomically_while_serving(served, other_bundle, shot):
    live, d = served
    with Clients(d.url, shot) as clients:
        assert wait_until(lambda: len(clients.statuses) > 20)
        p = subprocess.run([str(EXE), "index", "install", str(other_bundle), "--to", str(live), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["items"] == len(OTHER)
        assert _replaced_within(d, len(OTHER), 5.0), d.text()
    assert set(clients.statuses) == {200}, clients.statuses
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []   # nothing left over


def test_index_install_refuses_a_broken_source_and_touches_nothing(tmp_path, bundle_dir, other_bundle):
    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    before = {p.name: p.read_bytes() for p in live.iterdir()}
    broken = tmp_path / "broken"
    shutil.copytree(other_bundle, broken)
    data = (broken / "items.sqlite").read_bytes()
    (broken / "items.sqlite").write_bytes(data[: len(data) // 2])
    p = subprocess.run([str(EXE), "index", "install", str(broken), "--to", str(live)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "items.sqlite" in p.stderr, p.stderr
    assert {p.name: p.read_bytes() for p in live.iterdir()} == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["broken", "bundle"]


def _broken(bundle_dir: Path, other: Path, tmp_path: Path, kind: str) -> Path:
    d = tmp_path / "state" / "bundle"
    if kind == "missing":
        d.parent.mkdir(parents=True)
        return d
    shutil.copytree(bundle_dir, d)
    if kind == "half-copied":
        data = (d / "vectors.npy").read_bytes()
        (d / "vectors.npy").write_bytes(data[: len(data) // 3])
    elif kind == "mixed":
        shutil.copy(other / "items.sqlite", d / "items.sqlite")
    elif kind == "corrupt-items":
        path = d / "items.sqlite"
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 4096] = os.urandom(4096)   # same size, damaged pages
        path.write_bytes(bytes(data))
    elif kind == "damaged-index":   # a bad block inside a file the daemon never reads in exact mode
        path = d / "index.ann"
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 4096] = os.urandom(4096)
        path.write_bytes(bytes(data))
    elif kind == "garbage-manifest":
        (d / "manifest.json").write_text("{not json")
    elif kind == "another-model":
        m = json.loads((d / "manifest.json").read_text())
        m["model"]["dim"] = 512
        (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize("kind, says", [
    ("missing", "no such bundle directory"),
    ("half-copied", "vectors.npy"),
    ("mixed", "items.sqlite"),
    ("corrupt-items", "items.sqlite: damaged"),
    ("damaged-index", "index.ann: damaged"),
    ("garbage-manifest", "manifest.json: unreadable"),
    ("another-model", "bundle embeddings are 512-d"),
])
def test_a_daemon_started_on_a_broken_bundle_waits_and_says_why(tmp_path, bundle_dir, other_bundle, kind,
                                                                 says):
    live = _broken(bundle_dir, other_bundle, tmp_path, kind)
    d = Daemon(tmp_path, live)
    try:
        time.sleep(2.5)   # longer than a refresh: it keeps waiting, it does not exit
        status, h = d.health()
        assert d.proc.poll() is None and status == 503, d.text()
        assert says in h["index"]["problem"] and any(says in r for r in h["reasons"]), h
        assert _get(d.url + "/api/results")[0] == 200          # the page keeps answering
        assert d.text().count(says) <= 2, d.text()              # said once, not once a second
        p = subprocess.run([str(EXE), "index", "install", str(other_bundle), "--to", str(live)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert _replaced_within(d, len(OTHER)), d.text()
    finally:
        d.stop()
    assert d.proc.returncode == 0 and "Traceback" not in d.text()


def test_sighup_with_a_corrupt_items_file_keeps_the_old_bundle_and_answers_409(served, tmp_path):
    live, d = served
    status, body = _get(d.url + "/api/reload", b"")
    assert status == 200 and body["items"] == len(CATALOG_PHOTOS)
    staged = tmp_path / "staged"
    shutil.copytree(live, staged)
    path = staged / "items.sqlite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    m = json.loads((staged / "manifest.json").read_text())
    m["files"]["items.sqlite"]["sample_sha256"] = None     # only the deep check can find this damage
    (staged / "manifest.json").write_text(json.dumps(m))
    from pi_search.bundle.files import _exchange

    assert _exchange(staged, live)
    status, body = _get(d.url + "/api/reload", b"")
    assert status == 409 and "items.sqlite" in body["error"], body
    assert d.health()[0] == 200 and d.items() == len(CATALOG_PHOTOS)   # the old bundle keeps serving
    assert _get(d.url + "/thumbs/coffee")[0] == 200

"""Teaching end to end: a running `pi-search serve` learns an item, compacts, and survives kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import camera_view, load_photo
from fakes import free_port as _free_port
from fakes import multipart
from fakes import request_json as _request

from pi_search import images
from pi_search.live.catalog import LiveCatalog
from pi_search.live.changes import store_path
from pi_search.tools.benchmark_data import load_rgba, on_white

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("pi-search"))
OSTRICH = "/usr/share/tuxpaint/stamps/animals/birds/ostrich.png"
DIM = 1280





def _multipart(fields):
    return multipart(fields, "image/jpeg")


class Daemon:
    """`pi-search serve` in a subprocess on a free port."""

    def __init__(self, tmp: Path, bundle: Path, frames: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        cmd = [EXE, "-v", "serve", "--source", f"folder:{frames}", "--bundle", str(bundle), "--port",
               str(self.port), "--fps", "5"]
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _request(self.url + "/healthz")[0] == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(self.log.read_text())

    def search(self, rgb) -> list[dict]:
        body, headers = _multipart([("image", ("q.jpg", images.encode_jpeg(rgb, 90)))])
        status, out = _request(self.url + "/api/search", body, headers)
        assert status == 200, out
        return out["matches"]

    def items(self) -> int:
        return _request(self.url + "/api/results")[1]["status"]["catalog_items"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def setup(tmp_path, bundle_dir):
    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    frames = tmp_path / "frames"
    frames.mkdir()
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    return live, frames


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)


def test_running_daemon_learns_items_and_keeps_them_through_compaction(tmp_path, setup):
    live, frames = setup
    photo = on_white(load_rgba(OSTRICH), 400)
    h, w = photo.shape[:2]
    other = cv2.flip(photo, 1)[int(h * 0.1):, int(w * 0.05):int(w * 0.9)]   # a view never taught
    shots = tmp_path / "shots"
    shots.mkdir()
    shots.joinpath("front.jpg").write_bytes(images.encode_jpeg(photo, 92))
    shots.joinpath("side.jpg").write_bytes(images.encode_jpeg(camera_view(photo), 92))
    d = Daemon(tmp_path, live, frames)
    try:
        assert d.search(other)[0]["id"] != "ostrich" and d.items() == 16
        # taught from another process (the CLI): the daemon picks it up without a restart
        r = _cli("item", "add", "--bundle", str(live), "--title", "Ostrich figure", "--price", "24.00",
                 "--id", "ostrich", str(shots / "front.jpg"), str(shots / "side.jpg"))
        assert r.returncode == 0 and r.stdout.strip() == "ostrich", r.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.search(other)[0]["id"] != "ostrich":
            time.sleep(0.3)
        top = d.search(other)
        assert top[0]["id"] == "ostrich" and top[0]["title"] == "Ostrich figure" and d.items() == 17
        # taught through the daemon's own API (the page's path)
        yak = on_white(load_rgba("/usr/share/tuxpaint/stamps/animals/mammals/bovines/yak.png"), 400)
        body, headers = _multipart([("title", "Yak plush"), ("id", "yak"),
                                    ("image", ("a.jpg", images.encode_jpeg(yak, 92))), ("kind", "photo")])
        status, out = _request(d.url + "/api/items", body, headers)
        assert status == 201, out
        assert d.search(camera_view(yak[:, ::-1]))[0]["id"] == "yak"
        # compaction by another process while the daemon serves
        r = _cli("index", "compact", str(live), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["folded"] == 2
        listing = json.loads(_cli("item", "list", "--bundle", str(live), "--json").stdout)
        assert listing["items"] == [] and listing["catalog_items"] == 18
        assert [f["id"] for f in listing["folded"]] == ["yak", "ostrich"]   # most recently taught first
        time.sleep(1.5)  # the daemon looks for a swapped bundle once a second
        assert d.search(other)[0]["id"] == "ostrich" and d.search(camera_view(yak[:, ::-1]))[0]["id"] == "yak"
        assert d.items() == 18 and d.proc.poll() is None
    finally:
        d.stop()
    assert d.proc.returncode == 0


ADDER = textwrap.dedent("""
    import sys, numpy as np
    from pi_search.live.catalog import LiveCatalog
    cat = LiveCatalog.open(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(100000):
        v = rng.normal(size=(3, 1280)).astype(np.float32)
        cat.add(f"Item {i}", "1.00", v, item_id=f"k{i}", thumb=b"\\xff\\xd8" + bytes(3000))
        print(f"k{i}", flush=True)
""")


def _vectors(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(size=(3, DIM)).astype(np.float32) for _ in range(n)])


def test_kill_9_during_adds_loses_nothing_acknowledged(tmp_path, setup):
    live, frames = setup
    proc = subprocess.Popen([sys.executable, "-c", ADDER, str(live), "7"], stdout=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < 25:
        line = proc.stdout.readline()
        assert line, "the adding process stopped early"
        acked.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)   # most likely in the middle of the next add
    proc.wait()
    proc.stdout.close()
    db = sqlite3.connect(store_path(live))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    cat = LiveCatalog.open(live)
    present = {it.id for it in cat.changes()}
    assert set(acked) <= present and len(present) <= len(acked) + 1
    vecs = _vectors(7, len(present))
    for i in range(len(present)):
        assert cat.search(vecs[i][1], 1)[0].id == f"k{i}"
        assert cat.item(f"k{i}")["shots"] == 3
    cat.close()
    d = Daemon(tmp_path, live, frames)   # the daemon starts on what the crash left
    try:
        assert d.items() == 16 + len(present)
    finally:
        d.stop()


COMPACTOR = textwrap.dedent("""
    import sys, time
    import pi_search.bundle.write as index
    from pi_search.live.compact import compact
    from pi_search.live.changes import ChangeStore, store_path
    bundle, where = sys.argv[1], sys.argv[2]
    real_fsync = index.fsync_tree
    def fsync_tree(path):
        real_fsync(path)
        if where == "writing" and ".tmp-" in path.name:
            print("writing", flush=True)
            time.sleep(60)
    index.fsync_tree = fsync_tree
    def progress(step):
        print(step, flush=True)
        if step == where:
            time.sleep(60)
    store = ChangeStore(store_path(bundle), dim=1280)
    compact(bundle, store, progress=progress)
    print("done", flush=True)
""")


@pytest.mark.parametrize("where", ["writing", "built", "swapped"])
def test_kill_9_during_compaction_loses_nothing(tmp_path, setup, where):
    live, _ = setup
    cat = LiveCatalog.open(live)
    vecs = _vectors(11, 12)
    for i, v in enumerate(vecs):
        cat.add(f"Thing {i}", None, v, item_id=f"t{i}")
    cat.remove("coffee")
    cat.close()
    proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(live), where], stdout=subprocess.PIPE,
                            text=True)
    seen = []
    while not seen or seen[-1] != where:
        line = proc.stdout.readline()
        assert line, f"compaction ended before {where}: {seen}"
        seen.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    def consistent():
        c = LiveCatalog.open(live)
        try:
            assert len(c) == 16 + 12 - 1
            assert [c.search(v[2], 1)[0].id for v in vecs] == [f"t{i}" for i in range(12)]
            assert c.item("coffee") is None
            return c.bundle.manifest.folded_seq, c.store.pending()
        finally:
            c.close()

    folded, pending = consistent()
    if where == "swapped":
        assert folded == 13 and pending == 0       # the new bundle was live: its changes are forgotten
    else:
        assert folded == 0 and pending == 13       # the old bundle stayed live: the changes wait
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []
    r = _cli("index", "compact", str(live), "--json")
    assert r.returncode == 0, r.stderr
    assert consistent() == (13, 0)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=800,480", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 800, "height": 480, "deviceScaleFactor": 1, "mobile": False})
    yield drv
    drv.quit()


def text(browser, css: str) -> str:
    """textContent of the first element matching ``css`` ('' if none), read in one script call."""
    return browser.execute_script("const e = document.querySelector(arguments[0]); "
                                  "return e ? e.textContent : ''", css)


@pytest.mark.browser
def test_add_an_item_through_the_page(tmp_path, bundle_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    photo = on_white(load_rgba(OSTRICH), 400)
    frames = tmp_path / "frames"     # the camera shows the new object from two sides
    frames.mkdir()
    frames.joinpath("a.jpg").write_bytes(images.encode_jpeg(camera_view(photo)))
    frames.joinpath("b.jpg").write_bytes(images.encode_jpeg(camera_view(photo[:, ::-1])))
    upload = tmp_path / "ostrich.jpg"   # a phone-sized photo: the page shrinks it before sending
    upload.write_bytes(images.encode_jpeg(cv2.resize(photo, (2400, 2400), interpolation=cv2.INTER_CUBIC), 95))
    d = Daemon(tmp_path, live, frames)
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(d.url + "/")
        first = wait.until(lambda b: text(b, "#matches .card .title"))
        assert first != "Ostrich figure"
        browser.find_element(By.ID, "teach").click()
        wait.until(lambda b: b.current_url.endswith("/teach"))
        wait.until(lambda b: b.execute_script("return document.getElementById('preview').naturalWidth") > 0)
        for n in (1, 2):
            browser.find_element(By.ID, "capture").click()
            wait.until(lambda b, n=n: len(b.find_elements(By.CSS_SELECTOR, "#shots img")) == n)
        browser.find_element(By.ID, "files").send_keys(str(upload))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#shots img")) == 3)
        # the shots are shown before saving, and one can be dropped
        wait.until(lambda b: b.execute_script("return [...document.querySelectorAll('#shots img')]"
                                              ".every(i => i.complete && i.naturalWidth > 0)"))
        browser.find_elements(By.CSS_SELECTOR, "#shots button")[1].click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#shots img")) == 2)
        assert "2 shots" in browser.find_element(By.ID, "save").text
        browser.find_element(By.ID, "title").send_keys("Ostrich figure")
        browser.find_element(By.ID, "price").send_keys("24.00")
        browser.find_element(By.ID, "item-id").send_keys("ostrich")
        shot = Path(os.environ.get("PI_SEARCH_TEACH_SCREENSHOT", tmp_path / "teach.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot))
        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "searchable now" in b.find_element(By.ID, "message").text)
        row = wait.until(lambda b: text(b, "#recent .card[data-id='ostrich']"))
        assert "Ostrich figure" in row and "2 shots" in row
        assert browser.find_elements(By.CSS_SELECTOR, "#shots img") == []
        # the live page now finds it in front of the camera
        browser.get(d.url + "/")
        wait.until(lambda b: text(b, "#matches .card .title") == "Ostrich figure")
        # edit the price, then remove it (sent once Undo was not tapped for 10 s)
        browser.get(d.url + "/teach")
        edit = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#recent .card[data-id='ostrich'] .edit")
                          or False)[0]
        edit.click()
        assert browser.find_element(By.ID, "item-id").get_attribute("readonly") is not None
        price = browser.find_element(By.ID, "price")
        price.clear()
        price.send_keys("19.50")
        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: "Saved changes" in b.find_element(By.ID, "message").text)
        wait.until(lambda b: "19.50" in text(b, "#recent .card[data-id='ostrich']"))
        browser.find_element(By.CSS_SELECTOR, "#recent .card[data-id='ostrich'] .remove").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#recent .card[data-id='ostrich'] .undo"))
        assert d.items() == 17   # not yet
        wait.until(lambda b: "removed" in text(b, "#recent .card[data-id='ostrich']"))
        assert d.items() == 16
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        d.stop()

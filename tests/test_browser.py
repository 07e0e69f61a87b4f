"""The appliance as a person sees it: `pi-search serve` replaying photos, opened in headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import camera_view, load_photo
from fakes import free_port as _free_port

from pi_search import images

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [pytest.mark.browser, pytest.mark.slow]



def _get(url: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


@pytest.fixture
def server(tmp_path, bundle_dir):
    """`pi-search serve` on a free port, replaying camera-like shots of the catalog's coffee cup."""
    frames = tmp_path / "frames"
    frames.mkdir()
    coffee = load_photo("skimage:coffee")
    frames.joinpath("coffee-1.jpg").write_bytes(images.encode_jpeg(camera_view(coffee)))
    frames.joinpath("coffee-2.jpg").write_bytes(images.encode_jpeg(camera_view(coffee[:, ::-1])))
    port = _free_port()
    exe = Path(sys.executable).with_name("pi-search")
    url = f"http://127.0.0.1:{port}"
    cmd = [str(exe), "-v", "serve", "--source", f"folder:{frames}", "--bundle", str(bundle_dir),
           "--port", str(port), "--fps", "5"]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if _get(url + "/healthz")[0] == 200:
                    break
                time.sleep(0.2)
            assert _get(url + "/healthz")[0] == 200, (tmp_path / "serve.log").read_text()
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=800,480", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    # The page as the Pi's 7-inch 800x480 screen shows it (the viewport, not the window).
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 800, "height": 480, "deviceScaleFactor": 1, "mobile": False})
    yield drv
    drv.quit()


def _cards(driver) -> list[dict]:
    """Titles and texts of the match cards, read atomically (the page replaces cards on each result)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#matches .card')].map(c => ({"
        "title: (c.querySelector('.title') || {}).textContent || '', text: c.innerText}));")


def test_page_shows_the_item_in_front_of_the_camera(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc = server
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    # Cards are re-rendered on every new result: read them in one script call, never hold elements.
    wait.until(lambda d: _cards(d))
    try:
        cards = wait.until(lambda d: (c := _cards(d)) and c[0]["title"] == "Cup of coffee" and c)
    except Exception:
        raise AssertionError(f"the coffee cup never came first: {_cards(browser)}") from None
    assert "3.20" in cards[0]["text"] and "match" in cards[0]["text"]
    # The live preview and the thumbnails really loaded (decoded images have a size).
    wait.until(lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") > 0)
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#matches img')].every(i => i.complete && i.naturalWidth > 0)"))
    status = wait.until(lambda d: "Camera OK" in d.find_element(By.ID, "status").text
                        and d.find_element(By.ID, "status").text)
    assert "16 items" in status
    # The figures for those who want them are one tap away.
    browser.find_element(By.ID, "details").click()
    tech = wait.until(lambda d: d.find_element(By.ID, "tech").text)
    assert "frames/s" in tech and "efficientnet" in tech
    # No console errors (CSP violations or failed requests would show here).
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []

    shot = Path(os.environ.get("PI_SEARCH_SCREENSHOT", tmp_path / "screenshot.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # On a phone the preview and the matches stack, and the cards fit the screen's width.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    browser.refresh()
    wait.until(lambda d: _cards(d))
    preview, card = browser.execute_script(
        "const r = e => { const b = e.getBoundingClientRect(); return {x: b.x, y: b.y, width: b.width,"
        " height: b.height}; };"
        "return [r(document.getElementById('preview')), r(document.querySelector('#matches .card'))];")
    assert card["y"] >= preview["y"] + preview["height"]
    assert card["x"] >= 0 and card["x"] + card["width"] <= 390

    # Freeze holds the result: the button flips, the badge shows, the still frame loads.
    browser.find_element(By.ID, "freeze").click()
    wait.until(lambda d: d.find_element(By.ID, "freeze").get_attribute("aria-pressed") == "true")
    assert browser.find_element(By.ID, "badge").is_displayed()
    wait.until(lambda d: d.execute_script("const p = document.getElementById('preview');"
                                          "return p.src.startsWith('blob:') && p.naturalWidth > 0"))

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_upload_from_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    photo = tmp_path / "rocket.jpg"
    photo.write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:rocket"))))
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#matches .card"))
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    wait.until(lambda d: "rocket.jpg" in d.find_element(By.ID, "heading").text)
    assert _cards(browser)[0]["title"] == "Rocket on the pad"
    assert "pi_search_uploads_total 1.0" in _get(url + "/metrics")[1].decode()


@pytest.fixture(autouse=True)
def _needs_chromium():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists() and not shutil.which(p.name)]
    assert not missing, f"install Debian's chromium and chromium-driver (./install.sh --dev): {missing}"


@pytest.fixture
def photo_server(tmp_path, photo_bundle_dir):
    """`pi-search serve` (this checkout's code) on a copy of the bundle of real-size photos (items can be
    taught), replaying a grey frame."""
    import numpy as np

    live = tmp_path / "bundle"
    shutil.copytree(photo_bundle_dir, live)
    frames = tmp_path / "frames"
    frames.mkdir()
    frames.joinpath("empty.jpg").write_bytes(images.encode_jpeg(np.full((480, 640, 3), 120, np.uint8)))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("pi-search")), "-v", "serve", "--source", f"folder:{frames}",
           "--bundle", str(live), "--port", str(port), "--fps", "2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None and _get(url + "/healthz")[0] != 200:
                time.sleep(0.2)
            assert _get(url + "/healthz")[0] == 200, (tmp_path / "serve.log").read_text()
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_5_mb_phone_photo_uploaded_from_the_page_is_matched(photo_server, browser, corpus):
    """A 12 MP phone JPEG of 5 MB, stored sideways with EXIF orientation 6, sent as it is by the page."""
    from corpus import PHONE_ITEM, PHOTO_ITEMS
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = corpus.phone_5mb
    assert photo.stat().st_size >= 5_000_000 and images.orientation(photo.read_bytes()) == 6
    browser.get(photo_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#matches .card"))
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    wait.until(lambda d: photo.name in d.find_element(By.ID, "heading").text)
    title = dict((i, t) for i, t, _ in PHOTO_ITEMS)[PHONE_ITEM]
    assert _cards(browser)[0]["title"] == title, browser.find_element(By.TAG_NAME, "body").text
    assert "pi_search_uploads_total 1.0" in _get(photo_server + "/metrics")[1].decode()


def test_a_sideways_phone_photo_taught_on_the_page_is_found_upright(photo_server, browser, corpus):
    """The add-item form with a 5 MB phone JPEG stored sideways (EXIF 6): the item taught is upright."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(photo_server + "/teach")
    browser.find_element(By.ID, "files").send_keys(str(corpus.phone_5mb))
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#shots img")) == 1)
    browser.find_element(By.ID, "title").send_keys("Nuthatch print")
    browser.find_element(By.ID, "item-id").send_keys("print")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda b: "searchable now" in b.find_element(By.ID, "message").text)
    def post(path: str, fields: bytes, photo: bytes):
        body = fields + b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n\r\n" \
            + photo + b"\r\n--b--\r\n"
        req = urllib.request.Request(photo_server + path, data=body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    # the same shot stored upright, taught through the API: the page's item must score like it
    fields = b"".join(f'--b\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                      for k, v in (("title", "Upright print"), ("id", "upright")))
    post("/api/items", fields, corpus.phone[1].read_bytes())
    matches = post("/api/search?k=5", b"", corpus.phone[1].read_bytes())["matches"]
    found = {m["id"]: m["score"] for m in matches}
    assert {"print", "upright"} <= set(found) and max(found, key=found.get) in ("print", "upright"), matches
    assert abs(found["print"] - found["upright"]) <= 0.03, matches  # turned a quarter: about 0.1 lower

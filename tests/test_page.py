"""The page as kiosk staff and phone users see it, in headless Chromium over a real `pi-search serve`.

The preview shows the frame whose matches it lists; a failed upload says why and shows no stale answer;
nothing is cut off at the screen sizes people have; axe-core finds no serious accessibility problem; the
kiosk lock hides teaching and the daemon refuses it without the PIN.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import camera_view, load_photo
from fakes import free_port as _free_port
from fakes import multipart as _multipart
from fakes import request_json as _request
from fakes import serve_command

from pi_search import images

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
AXE = ROOT / "tests/node/node_modules/axe-core/axe.min.js"
EXE = Path(sys.executable).with_name("pi-search")
SIZES = {"kiosk": (800, 480), "hdmi7": (1024, 600), "tv": (1920, 1080), "phone": (390, 844)}
# Replayed frames: each photo carries its number in a strip of black and white blocks along the bottom.
BITS, STRIP_H = 8, 48
SCENE = [("coffee", "skimage:coffee"), ("rocket", "skimage:rocket"),
         *[("astronaut", "skimage:astronaut")] * 6]
PIN = "2468"


# ------------------------------------------------------------------ helpers



def coded_frame(rgb: np.ndarray, code: int, size=(640, 480)) -> np.ndarray:
    """A 640x480 camera-like frame of ``rgb`` with ``code`` drawn along its bottom as BITS black/white blocks
    (most significant first), each block framed by grey so neighbours never blur into each other."""
    frame = cv2.resize(camera_view(rgb), size, interpolation=cv2.INTER_AREA)
    w = size[0] // BITS
    frame[-STRIP_H:] = 128
    for bit in range(BITS):
        on = (code >> (BITS - 1 - bit)) & 1
        frame[-STRIP_H + 8: -8, bit * w + 8: (bit + 1) * w - 8] = 255 if on else 0
    return frame


# JS: the code drawn in the image the page displays, and the frame id and top match the page lists, read
# in one task (the page changes them together in one task).
READ_PAGE = """
const img = document.getElementById('preview');
const frame = document.getElementById('results').dataset.frame;
const title = (document.querySelector('#matches .card .title') || {}).textContent || null;
if (!frame || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d');
g.drawImage(img, 0, 0);
const bits = arguments[0], h = arguments[1];
const w = c.width / bits, y = c.height - h / 2;
let code = 0;
for (let b = 0; b < bits; b++) {
  const px = g.getImageData(Math.floor(b * w + w / 2), Math.floor(y), 1, 1).data;
  code = code * 2 + ((px[0] + px[1] + px[2]) / 3 > 128 ? 1 : 0);
}
return {frame: Number(frame), code: code, title: title, src: img.src};
"""

# JS: every visible element whose content is cut off or spills out of its box, and text that is ellipsized.
# Scroll areas meant as such (arguments[0], CSS selectors) may scroll along their own axis.
OVERFLOW = """
const scrollers = arguments[0];
const bad = [];
const vw = document.documentElement.clientWidth;
const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
  (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
if (document.documentElement.scrollWidth > vw + 1) bad.push('page scrolls sideways: ' +
  document.documentElement.scrollWidth + ' > ' + vw);
for (const e of document.querySelectorAll('body *')) {
  const cs = getComputedStyle(e);
  const r = e.getBoundingClientRect();
  if (cs.display === 'none' || cs.visibility === 'hidden' || r.width === 0 || r.height === 0) continue;
  if (e.matches('input[type=file]')) continue;   // the 1-pixel file input inside its label button
  if (r.left < -1 || r.right > vw + 1) bad.push(name(e) + ' sticks out: ' + r.left + '..' + r.right);
  if (e.matches('option, script, style')) continue;
  if (cs.textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth + 1) bad.push(name(e) + ' ellipsized');
  if (e.clientWidth === 0 && e.clientHeight === 0) continue;   // inline boxes
  const scroller = scrollers.some((s) => e.matches(s));
  const xs = e.scrollWidth > e.clientWidth + 1, ys = e.scrollHeight > e.clientHeight + 1;
  if (xs && !(scroller && (cs.overflowX === 'auto' || cs.overflowX === 'scroll'))) {
    bad.push(name(e) + ' cut off sideways: ' + e.scrollWidth + ' > ' + e.clientWidth + ' "' +
             e.textContent.trim().slice(0, 40) + '"');
  }
  if (ys && !(scroller && (cs.overflowY === 'auto' || cs.overflowY === 'scroll'))) {
    bad.push(name(e) + ' cut off below: ' + e.scrollHeight + ' > ' + e.clientHeight + ' "' +
             e.textContent.trim().slice(0, 40) + '"');
  }
}
// Button labels stay on one line.
for (const e of document.querySelectorAll('button, .button')) {
  const cs = getComputedStyle(e);
  if (cs.display === 'none' || e.getBoundingClientRect().width === 0) continue;
  const range = document.createRange();
  range.selectNodeContents(e);
  const tops = new Set([...range.getClientRects()].filter((q) => q.width > 2).map((q) => Math.round(q.top)));
  if (tops.size > 1) bad.push(name(e) + ' label wraps: "' + e.textContent.trim() + '"');
}
return bad;
"""


# JS: buttons whose label comes closer than 8 px to their left or right edge.
PADDING = """
const tight = [];
const all = '.controls button, .controls .button, .status button, .status .button';
for (const b of document.querySelectorAll(all)) {
  const r = b.getBoundingClientRect();
  if (!r.width || getComputedStyle(b).display === 'none') continue;
  const range = document.createRange();
  range.selectNodeContents(b);
  const text = [...range.getClientRects()].filter((q) => q.width > 2);
  if (!text.length) continue;
  const left = Math.min(...text.map((q) => q.left)) - r.left;
  const right = r.right - Math.max(...text.map((q) => q.right));
  if (left < 8 || right < 8) tight.push(b.textContent.trim() + ': ' + left + ' / ' + right);
}
return tight;
"""


class Daemon:
    """`pi-search serve` with a config file, in a subprocess on a free port."""

    def __init__(self, tmp: Path, bundle: Path, frames: Path, config: str = "", fps: float = 4):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        conf = tmp / f"config-{self.port}.toml"
        conf.write_text(config)
        cmd = [*serve_command(EXE, frames, bundle, self.port, fps), "--config", str(conf)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}   # this checkout's package, whatever the venv points at
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _request(self.url + "/healthz")[0] == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(self.log.read_text())

    def post(self, path: str, fields, headers: dict | None = None):
        body, head = _multipart(fields)
        return _request(self.url + path, body, {**head, **(headers or {})})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list[int]]:
    """The replayed folder (two items, then the third held still for six frames) and each frame's code."""
    frames = tmp_path_factory.mktemp("frames")
    codes = []
    for n, (name, source) in enumerate(SCENE):
        code = 1 + [s for s, _ in SCENE].index(name) * 37   # the still frames share their photo's code
        frames.joinpath(f"{n:02d}-{name}.jpg").write_bytes(images.encode_jpeg(coded_frame(load_photo(source),
                                                                                          code), 92))
        codes.append(code)
    return frames, codes


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, bundle_dir, scene):
    """One daemon for the module: a writable copy of the bundle, prices in euros, the coded scene."""
    tmp = tmp_path_factory.mktemp("daemon")
    live = tmp / "bundle"
    shutil.copytree(bundle_dir, live)
    d = Daemon(tmp, live, scene[0], '[page]\ncurrency = "EUR"\nlocale = "en-GB"\n')
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shop(tmp_path_factory, bundle_dir):
    """A daemon as in a shop: the camera sees a cup of coffee on the counter; prices in euros."""
    tmp = tmp_path_factory.mktemp("shop")
    live = tmp / "bundle"
    shutil.copytree(bundle_dir, live)
    frames = tmp / "frames"
    frames.mkdir()
    coffee = camera_view(load_photo("skimage:coffee"))
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(coffee, 90))
    d = Daemon(tmp, live, frames, '[page]\ncurrency = "EUR"\nlocale = "en-GB"\n')
    yield d
    d.stop()


def _chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=800,480", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def _size(drv, name: str) -> None:
    w, h = SIZES[name]
    phone = name == "phone"
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": w, "height": h, "deviceScaleFactor": 2 if phone else 1, "mobile": phone})


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    drv = _chrome(tmp_path_factory.mktemp("chromium"))
    yield drv
    drv.quit()


@pytest.fixture
def browser(chrome):
    """The module's Chromium at 800x480, a fresh page and fresh cookies for each test."""
    chrome.delete_all_cookies()
    _size(chrome, "kiosk")
    chrome.get_log("browser")   # drop what earlier tests logged
    yield chrome
    chrome.get("about:blank")


def _severe(drv) -> list:
    return [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _wait(drv, cond, timeout=30, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.1).until(cond)
    except Exception:
        raise AssertionError(f"{what} never happened") from None


def _text(drv, css: str) -> str:
    return drv.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                              css)


def _shown(drv, css: str) -> bool | None:
    """Whether the first element matching ``css`` is rendered (None: there is none), asked in one script:
    the page redraws its matches several times a second, so an element found by one call may be gone by
    the next."""
    return drv.execute_script("const e = document.querySelector(arguments[0]); if (!e) return null;"
                              "return e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "
                              "'hidden';", css)


# ------------------------------------------------------------------ 1. preview in step with the matches
def test_preview_shows_the_frame_whose_matches_it_lists(daemon, scene, browser):
    _, codes = scene
    browser.get(daemon.url + "/")
    _wait(browser, lambda d: d.execute_script(READ_PAGE, BITS, STRIP_H), what="a result with its frame")
    samples = []
    deadline = time.monotonic() + 14   # several passes over the scene at 4 frames/s, still part included
    while time.monotonic() < deadline:
        s = browser.execute_script(READ_PAGE, BITS, STRIP_H)
        if s:
            samples.append(s)
        time.sleep(0.05)
    assert len(samples) > 50
    wrong = [s for s in samples if s["code"] != codes[s["frame"] % len(codes)]]
    assert not wrong, f"{len(wrong)} of {len(samples)} samples showed another frame than listed: {wrong[:5]}"
    shown = {s["frame"] for s in samples}
    still_code = codes[-1]
    # Moving and still parts were both on screen, and a frame stayed on screen while the scene was still.
    assert {codes[0], codes[1], still_code} <= {s["code"] for s in samples}
    assert len(shown) >= 6
    still = [s for s in samples if s["code"] == still_code]
    assert len(still) > 10 and all(s["src"].startswith("blob:") for s in samples)
    # The cards are those of the frame shown: the held-still item is first while its frame is on screen.
    settled = [s for s in still if s["title"] is not None]
    assert settled and sum(s["title"] == "Astronaut portrait" for s in settled) >= 0.9 * len(settled)
    assert _severe(browser) == []


# JS: the code in the MJPEG preview now, and the newest published frame id (asked synchronously, so both
# describe the same moment).
READ_STREAM = """
const img = document.getElementById('preview');
if (!img.complete || !img.naturalWidth) return null;
const x = new XMLHttpRequest();
x.open('GET', '/api/results', false);
x.send();
const frame = JSON.parse(x.responseText).frame_id;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d');
g.drawImage(img, 0, 0);
const bits = arguments[0], h = arguments[1];
const w = c.width / bits, y = c.height - h / 2;
let code = 0;
for (let b = 0; b < bits; b++) {
  const px = g.getImageData(Math.floor(b * w + w / 2), Math.floor(y), 1, 1).data;
  code = code * 2 + ((px[0] + px[1] + px[2]) / 3 > 128 ? 1 : 0);
}
return {frame: frame, code: code};
"""


def test_mjpeg_preview_shows_the_newest_frame_at_once(daemon, scene, browser):
    """/stream.mjpg (the teach page's preview, other viewers): each part is shown as soon as it is sent, so
    a scene that turns still shows its own frame, not the one before."""
    _, codes = scene
    browser.get(daemon.url + "/teach")
    _wait(browser, lambda d: d.execute_script(READ_STREAM, BITS, STRIP_H), what="the live preview")
    samples = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if s := browser.execute_script(READ_STREAM, BITS, STRIP_H):
            samples.append(s)
        time.sleep(0.05)
    assert len(samples) > 40
    # The stream and the results are separate requests: right at a change the two may differ for a moment.
    # A part held back until the next one arrives shows the previous frame for the whole still part.
    behind = [s for s in samples if s["code"] != codes[s["frame"] % len(codes)]]
    assert len(behind) < 0.2 * len(samples), f"{len(behind)} of {len(samples)} behind: {behind[:5]}"
    assert codes[-1] in {s["code"] for s in samples}


# ------------------------------------------------------------------ 2. failed uploads
def test_failed_upload_says_why_and_shows_no_stale_matches(shop, browser, tmp_path):
    daemon = shop
    from selenium.webdriver.common.by import By

    good = images.encode_jpeg(camera_view(load_photo("skimage:chelsea")), 90)
    cases = {"notes.txt": b"shopping list: eggs, milk\n", "half.jpg": good[: len(good) // 2]}
    browser.get(daemon.url + "/")
    _wait(browser, lambda d: _text(d, "#matches .card .title"), what="live matches")
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        status, body = daemon.post("/api/search", [("image", (name, data))])
        assert status in (400, 415) and body["error"]
        browser.find_element(By.ID, "photo").send_keys(str(path))
        _wait(browser, lambda d: not d.find_element(By.ID, "problem").get_attribute("hidden")
              and "could not be searched" in _text(d, "#problem"), what=f"the error for {name}")
        problem = _text(browser, "#problem")
        assert body["error"] in problem and name in problem   # the appliance's own words, for this file
        assert browser.find_elements(By.CSS_SELECTOR, "#matches .card") == []
        assert _text(browser, "#heading") == "Photo not searched"
        time.sleep(1.0)   # live results keep arriving meanwhile: they must not come back as the answer
        assert browser.find_elements(By.CSS_SELECTOR, "#matches .card") == []
        assert browser.find_element(By.ID, "freeze").text == "Live"
        assert browser.find_element(By.ID, "badge").text == "Photo not searched"
    # A good photo afterwards is searched and answered; Live goes back to the camera.
    path = tmp_path / "cat.jpg"
    path.write_bytes(good)
    browser.find_element(By.ID, "photo").send_keys(str(path))
    _wait(browser, lambda d: "cat.jpg" in _text(d, "#heading"), what="the good photo's matches")
    assert _text(browser, "#matches .card .title") == "Chelsea the cat"
    assert browser.find_element(By.ID, "problem").get_attribute("hidden") is not None
    browser.find_element(By.ID, "freeze").click()
    _wait(browser, lambda d: _text(d, "#heading") == "Best matches", what="live matches again")
    assert browser.find_element(By.ID, "problem").get_attribute("hidden") is not None


def test_failed_teaching_upload_says_why_and_saves_nothing(shop, browser, tmp_path):
    daemon = shop
    from selenium.webdriver.common.by import By

    good = images.encode_jpeg(camera_view(load_photo("skimage:chelsea")), 90)
    half = tmp_path / "half.jpg"
    half.write_bytes(good[: len(good) // 2])
    before = _request(daemon.url + "/api/items")[1]
    browser.get(daemon.url + "/teach")
    _wait(browser, lambda d: "items in the catalog" in _text(d, "#count"), what="the teach page")
    browser.find_element(By.ID, "capture").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#shots li")) == 1, what="a camera shot")
    browser.find_element(By.ID, "files").send_keys(str(half))
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#shots li")) == 2, what="the bad photo")
    browser.find_element(By.ID, "title").send_keys("Broken photo item")
    browser.find_element(By.ID, "save").click()
    _wait(browser, lambda d: "Not saved" in _text(d, "#message"), what="the refusal")
    message = browser.find_element(By.ID, "message")
    status, body = daemon.post("/api/items", [("title", "x"), ("image", ("shot-2.jpg", half.read_bytes()))])
    assert status == 400 and body["error"] in message.text
    assert "error" in message.get_attribute("class") and message.get_attribute("role") == "alert"
    # The shot the appliance could not read is marked; the form keeps everything for another try.
    marked = browser.execute_script("return [...document.querySelectorAll('#shots li')]"
                                    ".map(l => l.className)")
    assert marked == ["", "bad"]
    assert browser.find_element(By.ID, "title").get_attribute("value") == "Broken photo item"
    assert _request(daemon.url + "/api/items")[1]["items"] == before["items"]
    assert "Broken photo item" not in _text(browser, "#recent")


# ------------------------------------------------------------------ 3. staff page: words, sizes, a11y
def _fill_teach_list(daemon) -> None:
    """Two taught items, one with a long title and a price written in words (as people do)."""
    listed = {i["id"] for i in _request(daemon.url + "/api/items")[1]["items"]}
    shot = images.encode_jpeg(camera_view(load_photo("skimage:chelsea")), 90)
    for item_id, title, price in (("mug-blue", "Blue enamel mug", "7.90"),
                                  ("tea-set", "Porcelain tea set with six cups, saucers and a matching "
                                              "teapot (hand-painted)", "on request")):
        if item_id not in listed:
            status, body = daemon.post("/api/items", [("title", title), ("price", price), ("id", item_id),
                                                      ("image", ("shot.jpg", shot))])
            assert status == 201, body


def _axe(drv) -> list[str]:
    """axe-core's serious and critical violations on the current page (injected here; the page never
    loads it)."""
    assert AXE.is_file(), "run ./install.sh --dev (npm ci --prefix tests/node installs axe-core)"
    drv.execute_script(AXE.read_text())
    drv.set_script_timeout(60)
    found = drv.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map(v => ({"
        "id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))))"
        ".catch(e => done([{id: 'axe failed: ' + e, impact: 'critical', nodes: []}]));")
    return [f"{v['impact']}: {v['id']} at {v['nodes']}" for v in found
            if v["impact"] in ("serious", "critical")]


def _shot_path(name: str, tmp_path: Path) -> Path:
    """Where a screenshot goes: PI_SEARCH_SCREENSHOTS=DIR (e.g. docs) keeps them; else the test's tmp."""
    out = Path(os.environ.get("PI_SEARCH_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out / name


SCREENSHOTS = {("search", "kiosk"): "screenshot.png", ("teach", "kiosk"): "teach.png",
               ("search", "phone"): "phone.png"}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("mode", ["search", "teach"])
def test_nothing_is_cut_off_and_axe_finds_no_serious_problem(shop, browser, tmp_path, mode, size):
    daemon = shop
    _fill_teach_list(daemon)
    _size(browser, size)
    if mode == "search":
        browser.get(daemon.url + "/")
        _wait(browser, lambda d: _text(d, "#matches .card .price"), what="priced matches")
        _wait(browser, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#matches img, #preview')].every(i => i.complete "
            "&& i.naturalWidth > 0)"), what="loaded pictures")
        # Staff words: a plain status, a plain similarity word, prices in the catalog's currency.
        assert browser.execute_script("return document.getElementById('status').textContent") \
            .startswith("Camera OK · ")
        card = _text(browser, "#matches .card")
        assert "€3.20" in card and "Cup of coffee" in card and "match" in card and "cosine" not in card
        assert _shown(browser, "#matches .num") is False
        scrollers = ["#matches"]
    else:
        browser.get(daemon.url + "/teach")
        _wait(browser, lambda d: _text(d, "#recent .card[data-id='tea-set']"), what="the recent changes")
        assert "on request" in _text(browser, "#recent .card[data-id='tea-set'] .price")
        assert _text(browser, "#recent .card[data-id='mug-blue'] .price") == "€7.90"
        browser.find_element("id", "capture").click()   # one shot in the strip, a title typed
        _wait(browser, lambda d: d.find_elements("css selector", "#shots li"), what="a shot")
        browser.find_element("id", "title").send_keys("Espresso cup")
        browser.find_element("id", "price").send_keys("3.50")
        scrollers = ["#shots"]
    _wait(browser, lambda d: d.execute_script("return [...document.images].every(i => i.complete "
                                              "&& i.naturalWidth > 0)"), what="loaded pictures")
    assert browser.save_screenshot(str(tmp_path / f"{mode}-{size}.png"))   # kept by pytest for a look
    shot = SCREENSHOTS.get((mode, size))
    if shot:
        assert browser.save_screenshot(str(_shot_path(shot, tmp_path)))
    problems = browser.execute_script(OVERFLOW, scrollers)
    assert problems == [], f"{mode} at {SIZES[size]}: {problems}"
    # The buttons of a row look alike: same height, same weight, none underlined (links styled as buttons).
    rows = browser.execute_script(
        "return [...document.querySelectorAll('.controls')].filter(r => r.offsetWidth).map(r =>"
        " [...r.querySelectorAll('button, .button')].filter(b => b.offsetWidth).map(b => {"
        " const cs = getComputedStyle(b); return [Math.round(b.getBoundingClientRect().height),"
        " cs.fontWeight, cs.textDecorationLine]; }))")
    for row in rows:
        assert len({tuple(b) for b in row}) == 1 and row[0][2] == "none", rows
    # No label touches its button's edges ("Search photo" at 800x480 and 390x844 did): 8 px at least.
    tight = browser.execute_script(PADDING)
    assert tight == [], f"{mode} at {SIZES[size]}: {tight}"
    if mode == "teach":   # the whole page scrolls, so the end of the list can be reached
        last = browser.execute_script("const l = document.querySelector('#recent .card:last-child');"
                                      "l.scrollIntoView(); const r = l.getBoundingClientRect();"
                                      "return [r.top, r.bottom, innerHeight];")
        assert last[0] >= 0 and last[1] <= last[2] + 1
    else:   # with the numbers shown (Details), still nothing is cut off
        browser.find_element("id", "details").click()
        _wait(browser, lambda d: _shown(d, "#matches .num"), what="details")
        assert "similarity 0." in _text(browser, "#matches .card")
        assert "frames/s" in _text(browser, "#tech")
        problems = browser.execute_script(OVERFLOW, scrollers)
        browser.find_element("id", "details").click()
        assert problems == [], f"{mode} with details at {SIZES[size]}: {problems}"
    assert _axe(browser) == []
    assert _severe(browser) == []


def test_guide_box_and_hint_are_drawn_over_the_frame(shop, browser):
    """An optional ``guide`` in a result: its target box lies over the picture (not the letterbox), the hint
    shows under it; a result without one clears both."""
    browser.get(shop.url + "/")
    _wait(browser, lambda d: d.execute_script("return document.getElementById('preview').src"
                                              ".startsWith('blob:')"), what="a result's frame")
    browser.set_script_timeout(30)
    box, stage, hint = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        # a newer result arriving meanwhile wins (showResult answers false): try again with it
        "for (let shown = false, n = 0; !shown && n < 10; n++) {"
        "  const r = await fetch('/api/results'); const body = await r.json();"
        "  body.guide = {hint: 'Hold the item closer', target: [0.25, 0.25, 0.75, 0.75], region: null};"
        "  latest = body; shown = await showResult(body); }"
        "const q = (id) => { const b = document.getElementById(id).getBoundingClientRect();"
        "  return [b.left, b.top, b.width, b.height]; };"
        "done([q('target'), q('preview'), document.getElementById('guide').textContent]);")
    assert hint == "Hold the item closer"
    # The frame is 4:3 like the stage: the box is the middle half of it both ways.
    assert abs(box[2] - stage[2] / 2) <= 2 and abs(box[3] - stage[3] / 2) <= 2
    assert abs(box[0] - (stage[0] + stage[2] / 4)) <= 2 and abs(box[1] - (stage[1] + stage[3] / 4)) <= 2
    assert browser.execute_script(OVERFLOW, ["#matches"]) == []
    hidden = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "for (let shown = false, n = 0; !shown && n < 10; n++) {"
        "  const r = await fetch('/api/results'); const body = await r.json(); delete body.guide;"
        "  latest = body; shown = await showResult(body); }"
        "done([document.getElementById('target').hidden, document.getElementById('guide').hidden]);")
    assert hidden == [True, True]


def test_staff_are_told_what_is_wrong_and_what_to_do(tmp_path, bundle_dir, chrome):
    """The camera stops (a replay that ends), then the appliance itself: the page says so in plain words."""
    frames = tmp_path / "frames"
    frames.mkdir()
    coffee = camera_view(load_photo("skimage:coffee"))
    frames.joinpath("coffee.jpg").write_bytes(images.encode_jpeg(coffee, 90))
    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    d = Daemon(tmp_path, live, frames, "[camera]\nloop = false\ntimeout_s = 1.0\n")
    try:
        chrome.delete_all_cookies()
        _size(chrome, "kiosk")
        chrome.get(d.url + "/")
        _wait(chrome, lambda b: "Camera not working" in _text(b, "#status"), what="the camera message")
        problem = _text(chrome, "#problem")
        assert "camera sends no picture" in problem and "Check that it is plugged in" in problem
        assert chrome.execute_script(OVERFLOW, ["#matches"]) == []
        assert _axe(chrome) == []
    finally:
        d.stop()
    _wait(chrome, lambda b: "No connection" in _text(b, "#status"), what="the connection message")
    assert "restart the appliance" in _text(chrome, "#problem")
    assert chrome.execute_script(OVERFLOW, ["#matches"]) == []


# ------------------------------------------------------------------ 3b. the kiosk lock
def test_locked_kiosk_hides_teaching_and_the_daemon_refuses_it(tmp_path, bundle_dir, scene, chrome):
    from selenium.webdriver.common.by import By

    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    d = Daemon(tmp_path, live, scene[0], f'[page]\nlock_teaching = true\npin = "{PIN}"\n')
    shot = images.encode_jpeg(camera_view(load_photo("skimage:chelsea")), 90)
    fields = [("title", "Locked cat"), ("id", "locked-cat"), ("image", ("shot.jpg", shot))]
    try:
        # The daemon refuses teaching without the PIN, with a wrong one, and takes it with the right one.
        status, body = d.post("/api/items", fields)
        assert status == 403 and "locked" in body["error"] and "tap Staff and enter the PIN" in body["error"]
        assert _request(d.url + "/api/items")[0] == 403
        assert d.post("/api/unlock", [("pin", "0000")])[0] == 403
        assert d.post("/api/items", fields, {"X-Pi-Search-Pin": "0000"})[0] == 403
        assert d.post("/api/items", fields, {"X-Pi-Search-Pin": PIN})[0] == 201

        chrome.delete_all_cookies()
        chrome.get_log("browser")   # drop what earlier tests logged
        _size(chrome, "kiosk")
        chrome.get(d.url + "/")
        _wait(chrome, lambda b: _text(b, "#matches .card .title"), what="matches")
        assert chrome.find_elements(By.ID, "teach") == []   # no "Add item" on the kiosk screen
        chrome.find_element(By.ID, "staff").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "pin"), what="the PIN form")
        assert chrome.find_elements(By.ID, "capture") == []
        assert chrome.execute_script(OVERFLOW, []) == []
        assert _axe(chrome) == []
        chrome.find_element(By.ID, "pin").send_keys("1111")
        chrome.find_element(By.ID, "unlock-button").click()
        _wait(chrome, lambda b: "wrong PIN" in _text(b, "#message"), what="the wrong-PIN message")
        chrome.find_element(By.ID, "pin").send_keys(PIN)
        chrome.find_element(By.ID, "unlock-button").click()
        _wait(chrome, lambda b: _text(b, "#recent .card[data-id='locked-cat']"),
              what="the unlocked teach page")
        assert _shown(chrome, "#lock-state") and "Unlocked" in _text(chrome, "#lock-state")
        # Every page says it is unlocked and has Lock: the main page too.
        chrome.get(d.url + "/")
        _wait(chrome, lambda b: b.find_elements(By.ID, "teach"), what="Add item once unlocked")
        assert _shown(chrome, "#lock-state") and _text(chrome, "#lock-state") == "Unlocked"
        assert _shown(chrome, "#relock") and chrome.find_elements(By.ID, "staff") == []
        assert chrome.execute_script(OVERFLOW, ["#matches"]) == []
        assert chrome.execute_script(PADDING) == []
        assert _axe(chrome) == []
        chrome.find_element(By.ID, "teach").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "relock"), what="the Lock button")
        assert _shown(chrome, "#lock-state")
        assert chrome.execute_script(OVERFLOW, []) == [] and chrome.execute_script(PADDING) == []
        assert _axe(chrome) == []
        chrome.find_element(By.ID, "relock").click()
        _wait(chrome, lambda b: b.current_url.rstrip("/") == d.url and b.find_elements(By.ID, "staff"),
              what="locked again")
        assert chrome.find_elements(By.ID, "teach") == [] and chrome.find_elements(By.ID, "lock-state") == []
        # Unlocked again, then locked from the main page: staff leaving from there leave it locked.
        chrome.find_element(By.ID, "staff").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "pin"), what="the PIN form")
        chrome.find_element(By.ID, "pin").send_keys(PIN)
        chrome.find_element(By.ID, "unlock-button").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "relock"), what="unlocked again")
        chrome.get(d.url + "/")
        _wait(chrome, lambda b: b.find_elements(By.ID, "relock"), what="Lock on the main page")
        chrome.find_element(By.ID, "relock").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "staff"), what="locked from the main page")
        assert chrome.find_elements(By.ID, "teach") == [] and chrome.find_elements(By.ID, "lock-state") == []
        # When the unlock runs out (its cookie gone), the open main page shows itself locked by itself.
        chrome.find_element(By.ID, "staff").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "pin"), what="the PIN form")
        chrome.find_element(By.ID, "pin").send_keys(PIN)
        chrome.find_element(By.ID, "unlock-button").click()
        _wait(chrome, lambda b: b.find_elements(By.ID, "relock"), what="unlocked again")
        chrome.get(d.url + "/")
        _wait(chrome, lambda b: b.find_elements(By.ID, "lock-state"), what="Unlocked on the main page")
        chrome.delete_cookie("pi_search_teach")
        _wait(chrome, lambda b: b.find_elements(By.ID, "staff") and not b.find_elements(By.ID, "lock-state"),
              timeout=15, what="the page locked when the unlock ran out")
        chrome.get(d.url + "/teach")
        _wait(chrome, lambda b: b.find_elements(By.ID, "pin"), what="the teach page locked")
        assert chrome.find_elements(By.ID, "capture") == []
        # The only console errors are the refused wrong PIN (a 403 the page explains).
        assert [e for e in _severe(chrome) if "/api/unlock" not in e["message"]] == []
    finally:
        d.stop()


# ------------------------------------------------------------------ 4. full-size phone photos
# JS: records the size of every photo the page sends (the multipart field "image").
RECORD_UPLOADS = """
window.sentSizes = [];
const send = window.fetch;
window.fetch = (url, opts) => {
  if (opts && opts.body instanceof FormData) {
    for (const f of opts.body.getAll('image')) window.sentSizes.push(f.size);
  }
  return send(url, opts);
};
"""


def test_full_size_phone_photo_is_shrunk_and_searched_on_both_pages(shop, browser, corpus):
    """Phone JPEGs stored turned (EXIF 6): 40 MP of 21.5 MB and 50 MP of 10 MB. Search photo and Add photo
    send them shrunk by the same function (upright, 1280 px on the long side) and they are searched /
    taught."""
    from selenium.webdriver.common.by import By

    assert corpus.phone_21mb.stat().st_size > 20 * 1024 * 1024
    assert images.photo_size(corpus.phone_50mp.read_bytes()) == (8160, 6120)
    browser.get(shop.url + "/")
    _wait(browser, lambda d: _text(d, "#matches .card .title"), what="live matches")
    browser.execute_script(RECORD_UPLOADS)
    for photo in (corpus.phone_21mb, corpus.phone_50mp):
        browser.find_element(By.ID, "photo").send_keys(str(photo))
        _wait(browser, lambda d, p=photo: _text(d, "#heading") == f"Matches for {p.name}", timeout=60,
              what=f"the matches of {photo.name}")
        assert browser.execute_script("const i = document.getElementById('preview');"
                                      "return [i.naturalWidth, i.naturalHeight]") == [1280, 960]
        assert browser.find_elements(By.CSS_SELECTOR, "#matches .card")
        assert _text(browser, "#badge") == "Photo" and not _shown(browser, "#problem")
    sent = browser.execute_script("return window.sentSizes")
    assert len(sent) == 2 and max(sent) < 1024 * 1024, sent
    photo = corpus.phone_50mp

    browser.get(shop.url + "/teach")
    _wait(browser, lambda d: "items in the catalog" in _text(d, "#count"), what="the teach page")
    browser.find_element(By.ID, "files").send_keys(str(photo))
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#shots li")) == 1, timeout=60,
          what="the photo as a shot")
    size, width, height = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; const b = shots[0].blob;"
        "createImageBitmap(b).then((bmp) => done([b.size, bmp.width, bmp.height]));")
    assert size < 1024 * 1024 and (width, height) == (1280, 960)
    assert _text(browser, "#message").startswith("Photo added: 1 shot ready")
    assert _severe(browser) == []


def test_a_photo_too_big_to_shrink_here_is_refused_in_staff_words(shop, browser, tmp_path):
    """A 27 MB photo this browser cannot decode (HEIC) goes as it is: the daemon refuses it before reading
    it and the page says so once, in staff words, over an empty picture (not the live camera)."""
    from selenium.webdriver.common.by import By

    heic = tmp_path / "IMG_0412.HEIC"
    head = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    heic.write_bytes(head + np.random.default_rng(3).integers(0, 256, 27 * 1024 * 1024 - len(head),
                                                              np.uint8).tobytes())
    browser.get(shop.url + "/")
    _wait(browser, lambda d: _text(d, "#matches .card .title"), what="live matches")
    browser.find_element(By.ID, "photo").send_keys(str(heic))
    _wait(browser, lambda d: "could not be searched" in _text(d, "#problem"), timeout=60, what="the refusal")
    problem = _text(browser, "#problem")
    assert "This photo is too big (27 MB); the limit is 25 MB." in problem, problem
    assert problem.count(heic.name) == 1 and "request body" not in problem
    assert _text(browser, "#badge") == _text(browser, "#heading") == "Photo not searched"
    time.sleep(1.0)   # live frames keep arriving: the picture stays empty
    assert browser.execute_script("const i = document.getElementById('preview');"
                                  "return [i.getAttribute('src'), i.naturalWidth]") == [None, 0]


def test_a_failed_upload_names_the_file_once(shop, browser, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"shopping list: eggs, milk\n")
    browser.get(shop.url + "/")
    _wait(browser, lambda d: d.execute_script("return document.getElementById('preview').src"
                                              ".startsWith('blob:')"), what="a live frame")
    browser.find_element(By.ID, "photo").send_keys(str(notes))
    _wait(browser, lambda d: "could not be searched" in _text(d, "#problem"), what="the refusal")
    problem = _text(browser, "#problem")
    assert problem.count("notes.txt") == 1 and "not a JPEG, PNG or WebP photo" in problem, problem
    assert browser.execute_script("return document.getElementById('preview').getAttribute('src')") is None


# ------------------------------------------------------------------ 5. teaching in staff words
@pytest.fixture(scope="module")
def german(tmp_path_factory, bundle_dir, scene):
    """A daemon with prices in euros written the German way (16,72 €)."""
    tmp = tmp_path_factory.mktemp("german")
    live = tmp / "bundle"
    shutil.copytree(bundle_dir, live)
    d = Daemon(tmp, live, scene[0], '[page]\ncurrency = "EUR"\nlocale = "de-DE"\n')
    yield d
    d.stop()


def _teach(drv, title: str, price: str) -> None:
    """Capture one camera shot, type title and price, save; waits for the answer."""
    from selenium.webdriver.common.by import By

    drv.find_element(By.ID, "capture").click()
    _wait(drv, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#shots li")) == 1, what="a shot")
    drv.find_element(By.ID, "title").send_keys(title)
    drv.find_element(By.ID, "price").send_keys(price)
    drv.find_element(By.ID, "save").click()
    _wait(drv, lambda d: "searchable now" in _text(d, "#message") or "Not saved" in _text(d, "#message"),
          what=f"{title} saved")


def test_prices_typed_in_the_locale_show_like_catalog_prices(german, browser):
    from selenium.webdriver.common.by import By

    browser.get(german.url + "/teach")
    _wait(browser, lambda d: "items in the catalog" in _text(d, "#count"), what="the teach page")
    for title, typed, stored, shown in (("Kaffeetasse", "22,90", "22.90", "22,90\u00a0€"),
                                        ("Teekanne", "22.90", "22.90", "22,90\u00a0€"),
                                        ("Esstisch", "1.234,50", "1234.50", "1.234,50\u00a0€"),
                                        ("Vase", "auf Anfrage", "auf Anfrage", "auf Anfrage")):
        _teach(browser, title, typed)
        assert "searchable now" in _text(browser, "#message")
        item = next(i for i in _request(german.url + "/api/items")[1]["items"] if i["title"] == title)
        assert item["price"] == stored, (typed, item)
        _wait(browser, lambda d, i=item["id"], want=shown: _text(d, f"#recent .card[data-id='{i}'] .price")
              == want, what=f"{typed} shown as {shown}")
    # Editing shows the price the way it is typed here.
    table = next(i for i in _request(german.url + "/api/items")[1]["items"] if i["title"] == "Esstisch")
    browser.find_element(By.CSS_SELECTOR, f"#recent .card[data-id='{table['id']}'] .edit").click()
    assert browser.find_element(By.ID, "price").get_attribute("value") == "1234,50"
    assert browser.find_element(By.ID, "item-id").get_attribute("value") == ""   # an automatic id: not shown
    # A catalog item's price and a taught one look alike on the search page.
    browser.get(german.url + "/")
    _wait(browser, lambda d: _text(d, "#matches .card .price"), what="priced matches")
    assert _text(browser, "#matches .card .price").endswith("\u00a0€")


def test_teach_page_words_and_undo_remove(shop, browser):
    from selenium.webdriver.common.by import By

    browser.get(shop.url + "/teach")
    _wait(browser, lambda d: "items in the catalog" in _text(d, "#count"), what="the teach page")
    # The how-to stays; the count is shown apart, in plain words.
    assert _text(browser, "#hint").startswith("Hold the item in front of the camera")
    assert "compact" not in _text(browser, "#count").lower()
    browser.find_element(By.ID, "background").click()
    _wait(browser, lambda d: _text(d, "#message").startswith("Empty scene captured"), what="the empty scene")
    _teach(browser, "Green teapot", "12.50")
    message = _text(browser, "#message")
    assert message == "Taught “Green teapot”: it is searchable now.", message   # no made-up id
    item = next(i for i in _request(shop.url + "/api/items")[1]["items"] if i["title"] == "Green teapot")
    assert item["id"].startswith("item-")
    card = f"#recent .card[data-id='{item['id']}']"
    _wait(browser, lambda d: _text(d, card), what="the new item listed")
    assert item["id"] not in _text(browser, "#recent")
    # Remove waits for Undo; Undo keeps the item.
    browser.find_element(By.CSS_SELECTOR, card + " .remove").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, card + " .undo"), what="Undo")
    assert "Undo" in _text(browser, "#message")
    browser.find_element(By.CSS_SELECTOR, card + " .undo").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, card + " .remove"), what="the item kept")
    time.sleep(11)   # past the 10 s the removal would have waited
    listed = {i["id"]: i for i in _request(shop.url + "/api/items")[1]["items"]}
    assert not listed[item["id"]]["deleted"]
    # Removed and not undone: gone after 10 s.
    browser.find_element(By.CSS_SELECTOR, card + " .remove").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, card + " .undo"), what="Undo")
    assert not {i["id"]: i for i in _request(shop.url + "/api/items")[1]["items"]}[item["id"]]["deleted"]
    assert _axe(browser) == [] and browser.execute_script(OVERFLOW, ["#shots"]) == []
    _wait(browser, lambda d: _request(shop.url + "/api/items")[1]["items"] and next(
        i for i in _request(shop.url + "/api/items")[1]["items"] if i["id"] == item["id"])["deleted"],
        timeout=20, what="the removal sent after 10 s")
    assert _text(browser, "#message") == "Removed “Green teapot”."
    # A removal still waiting when staff leave the page is sent as they leave.
    _teach(browser, "Red teapot", "")
    red = next(i for i in _request(shop.url + "/api/items")[1]["items"] if i["title"] == "Red teapot")
    remove = f"#recent .card[data-id='{red['id']}'] .remove"
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, remove), what="the red teapot listed")
    browser.find_element(By.CSS_SELECTOR, remove).click()
    browser.get(shop.url + "/")
    _wait(browser, lambda d: next(i for i in _request(shop.url + "/api/items")[1]["items"]
                                  if i["id"] == red["id"])["deleted"], timeout=5, what="the removal sent")
    assert _severe(browser) == []


def test_adding_a_photo_says_it_was_added(shop, browser, tmp_path):
    from selenium.webdriver.common.by import By

    photo = tmp_path / "mug.jpg"
    photo.write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:chelsea")), 90))
    browser.get(shop.url + "/teach")
    _wait(browser, lambda d: "items in the catalog" in _text(d, "#count"), what="the teach page")
    browser.find_element(By.ID, "background").click()
    _wait(browser, lambda d: _text(d, "#message").startswith("Empty scene captured"), what="the empty scene")
    browser.find_element(By.ID, "files").send_keys(str(photo))
    _wait(browser, lambda d: _text(d, "#message").startswith("Photo added"), what="the photo added")
    assert "Empty scene" not in _text(browser, "#message")


def test_a_code_in_an_uploaded_photo_shows_its_item_first_with_barcode(shop, browser, tmp_path):
    """An item taught with a barcode: a photo showing that code lists it first with "Barcode" instead of the
    similarity; a code of no item is said so above the matches; the page stays accessible."""
    import corpus
    from selenium.webdriver.common.by import By

    tin = camera_view(load_photo("skimage:rocket"))
    status, body = shop.post("/api/items", [("title", "Tea tin"), ("id", "tea-tin"),
                                            ("barcode", "4006381333931"), ("kind", "camera"),
                                            ("image", ("tin.jpg", images.encode_jpeg(tin, 90)))])
    assert status == 201, body
    scene = cv2.resize(camera_view(load_photo("skimage:chelsea")), (1600, 1200))
    scene = corpus.with_code(scene, corpus.barcode("4006381333931"), 0.25, at=(0.3, 0.8))
    scene = corpus.with_code(scene, corpus.barcode("5012345678900"), 0.25, at=(0.7, 0.8))
    photo = tmp_path / "codes.jpg"
    photo.write_bytes(corpus.jpeg_bytes(scene, 90))
    browser.get(shop.url + "/")
    _wait(browser, lambda d: _text(d, "#matches .card .title"), what="live matches")
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    _wait(browser, lambda d: _text(d, "#heading") == "Matches for codes.jpg", timeout=60, what="the matches")
    assert _text(browser, "#matches .card .title") == "Tea tin"
    assert _text(browser, "#matches .card .score") == "Barcode"
    assert _text(browser, "#codes") == "Code 5012345678900: not in the catalog" and _shown(browser, "#codes")
    # the matches by look follow, with their similarity bar
    assert browser.execute_script("return [...document.querySelectorAll('#matches .card')].map("
                                  "(c) => !!c.querySelector('.score .bar'))")[:2] == [False, True]
    assert browser.execute_script(OVERFLOW, ["#matches"]) == []
    assert _axe(browser) == [] and _severe(browser) == []

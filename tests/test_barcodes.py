"""Barcodes: read from real-size photos and camera frames (zxing-cpp), looked up in the catalog, put first."""

from __future__ import annotations

import csv

import corpus
import cv2
import numpy as np
import pytest
from conftest import camera_view, load_photo, write_catalog

from pi_search.barcodes.codes import check_codes, keys
from pi_search.barcodes.decode import Code, read_codes
from pi_search.barcodes.pictures import codes_in_photo
from pi_search.barcodes.search import codes_first
from pi_search.embed.build import build_bundle
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.photos import query_images

EAN = "5012345678900"
EAN_APPLE = "4006381333931"
EAN8 = "96385074"


def test_one_spelling_for_ean_upc_and_text_codes():
    assert keys("012345678905") == keys("0012345678905") == ["00012345678905"]   # UPC-A is EAN-13 with 0
    assert "00012345000065" in keys("01234565")            # UPC-E also as the UPC-A it stands for
    assert keys(" https://shop.example/p/1 ") == ["https://shop.example/p/1"]
    assert keys("") == []
    assert check_codes("5012345678900;96385074") is None
    assert "wrong check digit" in check_codes("5012345678901")


@pytest.fixture(scope="module")
def shot() -> np.ndarray:
    """A 12 MP phone photo (4032x3024, RGB) of a packaged photo: the background a code is printed on."""
    src = corpus.wallpaper(dict((i, f) for i, _, f in corpus.PHOTO_ITEMS)[corpus.PHONE_ITEM])
    return corpus.handheld(corpus.full_size(src))


def _on(s, width, **kw):
    return corpus.with_code(s, corpus.barcode(EAN), width, **kw)


CONDITIONS = {   # photo -> (the photo with the code, JPEG quality)
    "small (10% of the width)": lambda s: (_on(s, 0.10, at=(0.3, 0.6)), 92),
    "tilted 15 degrees": lambda s: (_on(s, 0.15, angle=15), 92),
    "dim (30% light)": lambda s: ((_on(s, 0.12) * 0.3).astype(np.uint8), 92),
    "blurred (sigma 3 px)": lambda s: (cv2.GaussianBlur(_on(s, 0.12), (0, 0), 3), 92),
    "JPEG quality 70": lambda s: (_on(s, 0.10), 70),
}


@pytest.mark.slow
@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_a_code_is_read_from_a_real_size_photo(shot, condition):
    img, quality = CONDITIONS[condition](shot)
    codes = codes_in_photo(corpus.jpeg_bytes(img, quality))
    assert [(c.text, c.format) for c in codes] == [(EAN, "EAN13")]


@pytest.mark.slow
def test_a_wrong_check_digit_is_refused_and_two_codes_come_in_reading_order(shot):
    import zxingcpp

    bad = corpus.ean13_wrong_check(EAN, "3")
    img = corpus.with_code(shot, bad, 0.15)
    # the bars are there and readable: the decoder sees the number and refuses its check digit
    seen = zxingcpp.read_barcodes(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), return_errors=True)
    bars = [b for b in seen if b.text]
    assert [b.text for b in bars] == ["5012345678903"] and not bars[0].valid
    assert codes_in_photo(corpus.jpeg_bytes(img, 92)) == []
    two = corpus.with_code(corpus.with_code(shot, corpus.barcode(EAN8, "EAN8"), 0.12, at=(0.7, 0.5)),
                           corpus.barcode(EAN), 0.15, at=(0.3, 0.52))
    assert [c.text for c in codes_in_photo(corpus.jpeg_bytes(two, 90))] == [EAN, EAN8]


def test_codes_on_a_camera_frame_qr_and_code128():
    frame = camera_view(load_photo("skimage:chelsea"))
    frame = cv2.resize(frame, (640, 480), interpolation=cv2.INTER_AREA)
    qr = corpus.with_code(frame, corpus.barcode("https://shop.example/p/7", "QRCode"), 0.3, at=(0.25, 0.5))
    both = corpus.with_code(qr, corpus.barcode("SKU-0042", "Code128"), 0.45, at=(0.7, 0.5))
    assert [(c.text, c.format) for c in read_codes(both)] == [("https://shop.example/p/7", "QRCode"),
                                                             ("SKU-0042", "Code128")]
    assert read_codes(frame) == []


@pytest.fixture(scope="module")
def barcode_bundle(tmp_path_factory, extractor):
    root = write_catalog(tmp_path_factory.mktemp("barcode-catalog"))
    with open(root / "catalog.csv", newline="") as f:
        rows = list(csv.reader(f))
    codes = {"apple": EAN_APPLE, "coffee": f"{EAN8}; SKU-0042", "orange": "012345678905"}
    out = [rows[0] + ["barcode"]] + [r + [codes.get(r[0], "")] for r in rows[1:]]
    with open(root / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows(out)
    bundle = tmp_path_factory.mktemp("barcode") / "bundle"
    build_bundle(root, bundle, extractor, progress=False)
    return bundle


def test_a_code_of_a_catalog_item_puts_it_first_via_barcode(barcode_bundle, extractor, tmp_path):
    cat_photo = cv2.resize(camera_view(load_photo("skimage:chelsea")), (1600, 1200))
    known = tmp_path / "known.jpg"
    known.write_bytes(corpus.jpeg_bytes(corpus.with_code(cat_photo, corpus.barcode(EAN_APPLE), 0.3), 90))
    unknown = tmp_path / "unknown.jpg"
    unknown.write_bytes(corpus.jpeg_bytes(corpus.with_code(cat_photo, corpus.barcode(EAN), 0.3), 90))
    upca = tmp_path / "upca.jpg"   # printed as UPC-A, listed as UPC-A; read as EAN-13 with a leading 0
    upca.write_bytes(corpus.jpeg_bytes(corpus.with_code(cat_photo, corpus.barcode("012345678905", "UPCA"),
                                                        0.3), 90))
    two = tmp_path / "two.jpg"     # two items' codes: both first, in reading order (right one higher up)
    two.write_bytes(corpus.jpeg_bytes(corpus.with_code(corpus.with_code(
        cat_photo, corpus.barcode("012345678905", "UPCA"), 0.25, at=(0.7, 0.3)),
        corpus.barcode(EAN_APPLE), 0.25, at=(0.3, 0.75)), 90))
    with LiveCatalog.open(barcode_bundle, extractor=extractor, readonly=True) as cat:
        res = query_images(extractor, cat, [known, unknown, upca, two], k=3)
    assert [(m["id"], m["via"]) for m in res[3]["matches"]] == [("orange", "barcode"), ("apple", "barcode"),
                                                                ("cat", "image")]
    first = res[0]
    assert first["codes"] == [{"code": EAN_APPLE, "format": "EAN13", "matched": True, "id": "apple"}]
    assert [(m["id"], m["via"]) for m in first["matches"]][:2] == [("apple", "barcode"), ("cat", "image")]
    assert len(first["matches"]) == 3
    second = res[1]
    assert second["codes"] == [{"code": EAN, "format": "EAN13", "matched": False, "id": None}]
    assert second["matches"][0]["id"] == "cat" and {m["via"] for m in second["matches"]} == {"image"}
    assert res[2]["matches"][0]["id"] == "orange" and res[2]["matches"][0]["via"] == "barcode"


def test_taught_items_keep_their_barcode(barcode_bundle, extractor, tmp_path):
    import shutil

    directory = tmp_path / "bundle"
    shutil.copytree(barcode_bundle, directory)
    with LiveCatalog.open(directory, extractor=extractor) as cat:
        vec = np.ones((1, extractor.dim), np.float32)
        cat.add("Tea tin", "4.00", vec, item_id="tea", extra={"barcode": EAN})
        matches, codes = codes_first(cat, [Code(EAN, "EAN13", (0, 0, 1, 1))], [], 5)
        assert [m.id for m in matches] == ["tea"] and codes[0]["matched"]
        cat.edit("apple", extra={"barcode": EAN8})          # the apple's code changed after the build
        found = cat.code_items(keys(EAN8) + keys(EAN_APPLE))
        # the edited item's code is the one that counts: its old one names nothing now
        assert {k: m.id for k, m in found.items()} == {keys(EAN8)[0]: "apple"}
        cat.compact()                                        # folded into the bundle's codes table
        found = cat.code_items(keys(EAN) + keys(EAN_APPLE) + keys("SKU-0042"))
        assert {k: m.id for k, m in found.items()} == {keys(EAN)[0]: "tea", "SKU-0042": "coffee"}


def test_the_camera_loop_reads_codes_once_the_scene_is_still(barcode_bundle, extractor):
    from fakes import ListSource

    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker

    frame = cv2.resize(camera_view(load_photo("skimage:chelsea")), (640, 480), interpolation=cv2.INTER_AREA)
    frame = corpus.with_code(frame, corpus.barcode(EAN_APPLE), 0.45, at=(0.5, 0.75))
    with LiveCatalog.open(barcode_bundle, extractor=extractor, readonly=True) as cat:
        svc = Worker(None, extractor, cat, load_config(None, {"gate.refresh_s": 0.0}), source_name="test")
        src = ListSource([frame], loop=True, noise=1.0)
        src.start()
        first = svc.process(src.read())     # inferred: by its look only, no read on a changing scene
        assert first.codes == () and first.matches[0].via == "image" and svc.stats.code_reads == 0
        assert svc.process(src.read()) is None   # still: read once, published with the item first
        still = svc.latest()
        assert svc.stats.code_reads == 1 and still is not first and still.jpeg == first.jpeg
        d = still.as_dict()
        assert d["codes"] == [{"code": EAN_APPLE, "format": "EAN13", "matched": True, "id": "apple"}]
        assert [(m["id"], m["via"]) for m in d["matches"]][:2] == [("apple", "barcode"), ("cat", "image")]
        for _ in range(5):
            svc.process(src.read())
        assert svc.stats.code_reads == 1            # once per still scene
        svc.gate.reset()                            # the same item moves a little: it keeps its code
        moved = svc.process(src.read())
        assert moved.matches[0].id == "apple" and moved.matches[0].via == "barcode"


def test_an_upload_with_a_code_answers_the_item_first_and_lists_the_codes(barcode_bundle, extractor):
    import io

    from fakes import FakeWorker, kiosk

    from pi_search.config import load_config
    from pi_search.web import create_app

    photo = cv2.resize(camera_view(load_photo("skimage:chelsea")), (1600, 1200))
    photo = corpus.with_code(corpus.with_code(photo, corpus.barcode(EAN_APPLE), 0.25, at=(0.3, 0.8)),
                             corpus.barcode(EAN), 0.25, at=(0.7, 0.8))
    config = load_config(None, {})
    with LiveCatalog.open(barcode_bundle, extractor=extractor, readonly=True) as cat:
        client = create_app(kiosk(FakeWorker(cat, extractor, config)), config).test_client()
        upload = (io.BytesIO(corpus.jpeg_bytes(photo, 85)), "p.jpg")
        r = client.post("/api/search?k=3", data={"image": upload}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["codes"] == [{"code": EAN_APPLE, "format": "EAN13", "matched": True, "id": "apple"},
                             {"code": EAN, "format": "EAN13", "matched": False, "id": None}]
    assert [(m["id"], m["via"]) for m in body["matches"]][:2] == [("apple", "barcode"), ("cat", "image")]
    assert len(body["matches"]) == 3 and body["timings_ms"]["codes"] > 0


def test_staff_scan_a_code_into_a_taught_item_and_edit_it(barcode_bundle, extractor, tmp_path):
    import io
    import shutil

    from fakes import FakeWorker, kiosk

    from pi_search.config import load_config
    from pi_search.web import create_app

    directory = tmp_path / "bundle"
    shutil.copytree(barcode_bundle, directory)
    tin = cv2.resize(camera_view(load_photo("skimage:rocket")), (640, 480), interpolation=cv2.INTER_AREA)
    held = corpus.with_code(tin, corpus.barcode(EAN), 0.5, at=(0.5, 0.7))
    config = load_config(None, {})
    with LiveCatalog.open(directory, extractor=extractor) as cat:
        svc = FakeWorker(cat, extractor, config).start()
        client = create_app(kiosk(svc), config).test_client()
        svc.publish(tin)
        r = client.post("/api/scan")
        assert r.status_code == 422 and "no barcode found" in r.get_json()["error"]
        svc.publish(held)                               # the code held up to the camera
        r = client.post("/api/scan")
        assert r.get_json() == {"codes": [{"code": EAN, "format": "EAN13", "id": None}], "barcode": EAN}
        shot = (io.BytesIO(corpus.jpeg_bytes(tin, 90)), "shot.jpg")
        r = client.post("/api/items", data={"title": "Tea tin", "id": "tea", "barcode": EAN, "image": shot,
                                            "kind": "camera"}, content_type="multipart/form-data")
        assert r.status_code == 201 and r.get_json()["item"]["extra"] == {"barcode": EAN}
        r = client.post("/api/scan")                    # the code names the new item now
        assert r.get_json()["codes"][0]["id"] == "tea"
        bad = client.post("/api/items", data={"title": "X", "barcode": "5012345678901", "image": (
            io.BytesIO(corpus.jpeg_bytes(tin, 90)), "s.jpg")}, content_type="multipart/form-data")
        assert bad.status_code == 400 and "wrong check digit" in bad.get_json()["error"]
        # an item from the bundle gets a code, keeping its other columns
        r = client.patch("/api/items/cat", data={"barcode": EAN8})
        assert r.status_code == 200 and r.get_json()["item"]["extra"] == {"colour": "n/a", "barcode": EAN8}
        assert cat.code_items(keys(EAN8))[keys(EAN8)[0]].id == "cat"
        r = client.patch("/api/items/tea", data={"barcode": ""})       # cleared
        assert r.get_json()["item"]["extra"] == {} and cat.code_items(keys(EAN)) == {}


def test_scanning_needs_the_same_staff_unlock_as_teaching(barcode_bundle, extractor):
    from fakes import FakeWorker, kiosk

    from pi_search.config import load_config
    from pi_search.web import create_app

    config = load_config(None, {"page.lock_teaching": True, "page.pin": "4321"})
    with LiveCatalog.open(barcode_bundle, extractor=extractor, readonly=True) as cat:
        svc = FakeWorker(cat, extractor, config).start()
        svc.publish(corpus.with_code(np.full((480, 640, 3), 200, np.uint8), corpus.barcode(EAN), 0.5))
        client = create_app(kiosk(svc), config).test_client()
        assert client.post("/api/scan").status_code == 403
        assert client.post("/api/unlock", data={"pin": "4321"}).status_code == 200
        assert client.post("/api/scan").get_json()["barcode"] == EAN


def test_a_catalog_code_with_a_wrong_check_digit_is_a_warning_naming_the_line(tmp_path, caplog):
    import logging

    from pi_search.embed.catalog import read_catalog

    root = write_catalog(tmp_path / "cat", [("apple", "Apple", "0.50", "skimage:coffee")])
    with open(root / "catalog.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(root / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0] + ["barcode"], rows[1] + ["5012345678901"]])
    with caplog.at_level(logging.WARNING):
        rows, problems = read_catalog(root)
    assert len(rows) == 1 and problems == []
    assert "catalog.csv line 2: barcode 5012345678901: wrong check digit" in caplog.text


def test_item_add_and_edit_take_a_barcode_from_the_command_line(barcode_bundle, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from pi_search.cli import main

    directory = tmp_path / "bundle"
    shutil.copytree(barcode_bundle, directory)
    photo = tmp_path / "tin.jpg"
    photo.write_bytes(corpus.jpeg_bytes(camera_view(load_photo("skimage:rocket")), 90))
    run = CliRunner().invoke
    r = run(main, ["item", "add", "--bundle", str(directory), "--title", "Tea tin", "--id", "tea",
                   "--barcode", f" {EAN} ; SKU-9 ", "--json", str(photo)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["item"]["extra"] == {"barcode": f"{EAN};SKU-9"}
    r = run(main, ["item", "edit", "tea", "--bundle", str(directory), "--barcode", "5012345678901"])
    assert r.exit_code != 0 and "wrong check digit" in r.output
    r = run(main, ["item", "edit", "cat", "--bundle", str(directory), "--barcode", EAN8, "--json"])
    assert json.loads(r.stdout)["item"]["extra"] == {"colour": "n/a", "barcode": EAN8}
    held = tmp_path / "held.jpg"   # the tin's code in view: the taught item first, in the text output too
    scene = cv2.resize(camera_view(load_photo("skimage:chelsea")), (1600, 1200))
    held.write_bytes(corpus.jpeg_bytes(corpus.with_code(scene, corpus.barcode(EAN), 0.3), 90))
    r = run(main, ["query", "--bundle", str(directory), "--k", "2", str(held)])
    assert r.exit_code == 0 and "   1. barcode  tea  Tea tin" in r.stdout, r.output


@pytest.mark.slow
def test_a_big_progressive_jpeg_is_not_decoded_again_for_codes(shot):
    """Its decoder would hold every coefficient a second time: left out; baseline photos of any size are
    read, and a small progressive one too."""
    from pi_search.barcodes.pictures import PROGRESSIVE_MAX_PIXELS, grey_for_codes

    img = corpus.with_code(cv2.resize(shot, (4800, 3600)), corpus.barcode(EAN), 0.12)
    assert PROGRESSIVE_MAX_PIXELS < 4800 * 3600
    progressive = [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    prog = cv2.imencode(".jpg", img, progressive)[1]
    assert grey_for_codes(prog.tobytes()) is None and codes_in_photo(prog.tobytes()) == []
    assert [c.text for c in codes_in_photo(corpus.jpeg_bytes(img, 85))] == [EAN]
    small = cv2.imencode(".jpg", img[:1500, :2000], progressive)[1]
    assert grey_for_codes(small.tobytes()).shape == (1500, 2000)

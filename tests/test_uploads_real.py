"""Real-size photos (phone JPEGs with EXIF orientation, wallpapers, PNG, WebP, 40 MP) on every path that
takes a photo: upload search, teaching, the CLI's query, item add and index build."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from corpus import ALPHA_ITEM, PHONE_ITEM, PHOTO_ITEMS, jpeg_bytes, wallpaper, wallpapers, write_photo_catalog
from fakes import ListSource, SourceFactory, kiosk

from pi_search import images
from pi_search.bundle.reader import Bundle
from pi_search.config import load_config
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app

pytestmark = pytest.mark.slow   # real-size photos (up to 40 MP) through every path

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# The int8 model moves scores by about 0.01 for pixels 1-2 levels apart: two JPEG encodings of one upright
# view (quality 95 and 98) already differ by up to 0.008. A JPEG is decoded one reduction step short and then
# averaged down (images.decode), which keeps a turned copy within 0.01 of the upright one; decoded straight at
# 1/8, the decoder's chroma upsampling (rounded by column) moved it by up to 0.011. Ignoring the orientation
# costs the phone item 0.18.
SAME = 0.01
SAME_WEBP = 0.03  # lossy WebP (q90) turned or not: up to 0.017 apart; still far from 0.18
SAME_LEARNED = 0.02  # two decodings of one photo through a bundle's learned projection (384-d: up to 0.012)


@pytest.fixture
def make(tmp_path, photo_bundle_dir, extractor):
    """(appliance, client) over a private, teachable copy of the photo bundle; the worker is not started
    (uploads never need the camera)."""
    made = []

    def _make(**overrides):
        live = tmp_path / f"bundle{len(made)}"
        shutil.copytree(photo_bundle_dir, live)
        cat = LiveCatalog.open(live, extractor=extractor)
        config = load_config(None, {"gate.enabled": False, **overrides})
        frame = np.full((480, 640, 3), 128, np.uint8)
        svc = Worker(SourceFactory(lambda n: ListSource([frame], fps=5.0)), extractor, cat, config,
                      source_name="test")
        made.append(cat)
        port = kiosk(svc)   # the appliance the app serves: uploads go through it, never through the loop
        return port, create_app(port, config).test_client()

    yield _make
    for cat in made:
        cat.close()


def search(client, path: Path, k: int = 25):
    """POST the file as it is to /api/search; the response."""
    return client.post(f"/api/search?k={k}", data={"image": (io.BytesIO(path.read_bytes()), path.name)})


def scores(body: dict) -> dict[str, float]:
    return {m["id"]: m["score"] for m in body["matches"]}


def assert_same_scores(a: dict[str, float], b: dict[str, float], what: str, within: float = SAME):
    assert set(a) == set(b), what
    worst = max(abs(a[i] - b[i]) for i in a)
    assert worst <= within, f"{what}: scores differ by up to {worst:.3f}"


# ---------------------------------------------------------------- decoding
def test_photos_are_decoded_no_larger_than_framing_needs(corpus, extractor):
    from pi_search.images import THUMB_SIZE
    from pi_search.model.framing import QUERY_CROP

    assert math.ceil(extractor.size / QUERY_CROP) <= images.MIN_SIDE and images.MIN_SIDE >= THUMB_SIZE
    for o, path in corpus.phone.items():  # 4032x3024 -> 1/8 scale straight from the JPEG decoder, upright
        assert images.decode(path.read_bytes()).shape == (378, 504, 3), o
    for path in (corpus.phone_png, corpus.phone_webp, corpus.turned_png, corpus.turned_webp,
                 corpus.phone_5mb):
        assert images.decode(path.read_bytes()).shape == (378, 504, 3), path.name
    assert images.decode(corpus.big.read_bytes()).shape == (456, 608, 3)  # 40 MP: accepted, 1/4 then 1/3
    for path in wallpapers():
        data = path.read_bytes()
        w, h = images.photo_size(data)
        rgb = images.decode(data, name=path.name)
        assert images.MIN_SIDE <= min(rgb.shape[:2]) < 2 * images.MIN_SIDE or min(w, h) < images.MIN_SIDE
        assert abs(rgb.shape[1] / rgb.shape[0] - w / h) < 0.02, path.name
    full = images.read(wallpaper("Kleiber_by_Lukas_Baubkus.jpg"), min_side=None)
    assert full.shape == (3391, 6028, 3)


def test_reduced_decoding_embeds_like_full_size(corpus, extractor):
    """Decoding at 1/8 scale loses nothing the model sees: same embedding as full size shrunk afterwards."""
    import cv2

    from pi_search.model.framing import embed_catalog_image, embed_query_image

    for path in (corpus.phone[1], wallpaper("Kleiber_by_Lukas_Baubkus.jpg"), corpus.big):
        small = images.read(path)
        full = images.read(path, min_side=None)
        full = cv2.resize(full, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
        for embed in (embed_query_image, embed_catalog_image):
            cos = float(embed(extractor, small) @ embed(extractor, full))
            assert cos > 0.98, (path.name, embed.__name__, cos)


def test_every_exif_orientation_is_turned_like_pillow(tmp_path):
    from PIL import Image, ImageOps

    photo = images.read(wallpaper("Picture_1A_by_freespace.jpg"), min_side=None)[:300, :400]
    for o in range(1, 9):
        im = Image.fromarray(photo)
        exif = im.getexif()
        exif[0x0112] = o
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
        data = buf.getvalue()
        ours = images.decode(data, min_side=None)
        theirs = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert images.orientation(data) == o
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), o


def test_orientation_of_png_and_webp_and_phone_jpegs(corpus):
    upright = images.decode(corpus.phone[1].read_bytes())
    for path in (*corpus.phone.values(), corpus.turned_png, corpus.turned_webp, corpus.phone_5mb):
        data = path.read_bytes()
        assert images.photo_size(data) in ((4032, 3024), (2016, 1512)), path.name
        rgb = images.decode(data)
        assert rgb.shape == upright.shape
        assert np.abs(rgb.astype(np.int16) - upright).mean() < 4, path.name  # same picture, same way up
    assert [images.orientation(p.read_bytes()) for p in corpus.phone.values()] == [1, 3, 6, 8]


def test_transparent_cut_out_is_composited_on_white(corpus):
    rgb = images.decode(corpus.alpha_png.read_bytes())
    assert rgb.shape == (800, 435, 3)  # 1306x2400 shrunk 3 times, whole blocks only
    corners = np.concatenate([rgb[:5, :5], rgb[:5, -5:], rgb[-5:, :5], rgb[-5:, -5:]])
    assert corners.min() >= 250
    centre = rgb[350:450, 170:270]
    assert centre.mean() < 200  # the strawberry itself, not white


# ---------------------------------------------------------------- upload search
@pytest.mark.slow
def test_every_real_photo_is_accepted_by_upload_search(make, corpus):
    from pi_search.web.uploads import kind_of

    _, client = make()
    photos = [p for p in sorted(OPENCV_DATA.iterdir()) if p.is_file() and kind_of(p.read_bytes()[:16])]
    assert len(photos) >= 40
    failed = {}
    for path in [*photos, *corpus.all_photos()]:
        r = search(client, path, k=3)
        if r.status_code != 200:
            failed[path.name] = (r.status_code, r.get_json())
    assert not failed


def test_packaged_photos_search_like_on_the_command_line(make, extractor):
    """Each packaged photo uploaded as it ships (0.3-4.4 MB, up to 6028x3391) is searched at its real size
    and gets the answer the command line's decoding gets."""
    from pi_search.model import look as looking

    svc, client = make()
    top1 = 0
    for item_id, _, name in PHOTO_ITEMS:
        path = wallpaper(name)
        r = search(client, path, k=25)
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["image_size"] == list(images.photo_size(path.read_bytes()))
        got = scores(r.get_json())
        seen = looking.look(extractor, images.read(path))   # an upload takes the look a query takes
        want = {m.id: m.score for m in looking.search(svc.catalog, seen, 25)[0]}
        assert_same_scores(got, want, name)
        top1 += max(got, key=got.get) == item_id
    print(f"{top1} of {len(PHOTO_ITEMS)} packaged photos find their own item first")


def test_sideways_phone_photos_match_like_upright(make, corpus, tmp_path):
    _, client = make()
    upright = search(client, corpus.phone[1]).get_json()
    assert upright["matches"][0]["id"] == PHONE_ITEM and upright["image_size"] == [4032, 3024]
    for o in (3, 6, 8):
        r = search(client, corpus.phone[o])
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["image_size"] == [4032, 3024]  # as shown, not as stored
        assert_same_scores(scores(upright), scores(body), f"orientation {o}", SAME_LEARNED)
    body = search(client, corpus.phone_5mb).get_json()
    assert_same_scores(scores(upright), scores(body), corpus.phone_5mb.name, SAME_LEARNED)
    webp = search(client, corpus.phone_webp).get_json()  # another codec: compared with its own kind
    assert_same_scores(scores(webp), scores(search(client, corpus.turned_webp).get_json()), "WebP EXIF",
                       SAME_WEBP)
    sideways = corpus.upright.transpose(1, 0, 2)[::-1]  # what searching the stored pixels as-is would see
    (tmp_path / "no-exif.jpg").write_bytes(jpeg_bytes(sideways, 95))
    ignored = scores(search(client, tmp_path / "no-exif.jpg").get_json())
    assert ignored[PHONE_ITEM] < scores(upright)[PHONE_ITEM] - 0.1  # the check above can tell
    big = search(client, corpus.big).get_json()  # enlarged and saved at q85: a softer photo of the same
    assert big["image_size"] == [7296, 5472] and big["matches"][0]["id"] == PHONE_ITEM
    half = search(client, corpus.phone_png).get_json()
    assert_same_scores(scores(half), scores(search(client, corpus.turned_png).get_json()), "PNG eXIf")


def test_transparent_cut_out_finds_its_item(make, corpus):
    _, client = make()
    r = search(client, corpus.alpha_png, k=3)
    assert r.status_code == 200 and r.get_json()["matches"][0]["id"] == ALPHA_ITEM[0]


def test_a_long_text_field_is_refused_with_the_reason(make, corpus):
    _, client = make()
    data = {"image": (io.BytesIO(corpus.phone[1].read_bytes()), "p.jpg"), "note": "x" * 600_000}
    r = client.post("/api/search", data=data)
    assert r.status_code == 413 and "text field over 512 KB" in r.get_json()["error"]


def test_the_upload_slot_is_taken_before_decoding(make, corpus, monkeypatch):
    import pi_search.web.routes as uploads  # the route's own name for the decoder

    svc, client = make()
    free_at_decode = []
    real = uploads.decode_upload

    def spy(data, name="upload"):
        free_at_decode.append(svc._upload_slots._value)
        return real(data, name)

    monkeypatch.setattr(uploads, "decode_upload", spy)
    held = [svc.upload_slot(), svc.upload_slot()]
    for slot in held:
        slot.__enter__()
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=search(client, corpus.phone[6], k=3)))
    t.start()
    t.join(1.0)
    assert t.is_alive() and free_at_decode == []  # waiting for a slot, the photo not decoded yet
    held.pop().__exit__(None, None, None)
    t.join(30)
    assert answer["r"].status_code == 200 and answer["r"].get_json()["matches"][0]["id"] == PHONE_ITEM
    assert free_at_decode == [0]  # decoded while holding the freed slot (the other still held)
    held.pop().__exit__(None, None, None)


def test_no_free_slot_answers_503(make, corpus, monkeypatch):
    svc, client = make()
    quick = svc.upload_slot
    monkeypatch.setattr(svc, "upload_slot", lambda wait=0.2: quick(wait))
    held = [quick(), quick()]
    for slot in held:
        slot.__enter__()
    try:
        r = search(client, corpus.phone[1], k=3)
        assert r.status_code == 503 and "busy with other uploads; try again" in r.get_json()["error"]
        shot = [(io.BytesIO(corpus.phone[1].read_bytes()), "p.jpg")]
        r = client.post("/api/items", data={"title": "Nuthatch", "image": shot})
        assert r.status_code == 503 and "busy" in r.get_json()["error"]
    finally:
        for slot in held:
            slot.__exit__(None, None, None)
    assert search(client, corpus.phone[1], k=3).status_code == 200


# ---------------------------------------------------------------- teaching
def test_teaching_sideways_photos_like_upright(make, corpus):
    _, client = make()
    query = corpus.phone[1]
    for item_id, path in (("taught-upright", corpus.phone[1]), ("taught-turned", corpus.phone[6]),
                          ("taught-turned-png", corpus.turned_png), ("taught-5mb", corpus.phone_5mb)):
        r = client.post("/api/items", data={"title": item_id, "id": item_id,
                                            "image": [(io.BytesIO(path.read_bytes()), path.name)]})
        assert r.status_code == 201, (path.name, r.get_json())
    found = scores(search(client, query, k=30).get_json())
    assert max(found, key=found.get) in {"taught-upright", "taught-turned", "taught-turned-png", "taught-5mb"}
    for item_id in ("taught-turned", "taught-turned-png", "taught-5mb"):
        assert abs(found[item_id] - found["taught-upright"]) <= SAME, (item_id, found)
    # two phone shots in one request (5.8 MB) are taken too
    shots = [(io.BytesIO(corpus.phone[o].read_bytes()), f"{o}.jpg") for o in (3, 8)]
    r = client.post("/api/items", data={"title": "Two shots", "id": "two", "image": shots})
    assert r.status_code == 201 and r.get_json()["item"]["shots"] == 2


# ---------------------------------------------------------------- command line
@pytest.fixture
def run():
    from pi_search.cli import main

    def _run(*args):
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout) if "--json" in args else r.stdout

    return _run


def test_cli_query_and_item_add_honour_orientation(run, corpus, photo_bundle_dir, tmp_path):
    res = run("query", "--bundle", photo_bundle_dir, "--k", 25, "--json", *corpus.phone.values(),
              corpus.phone_webp, corpus.turned_webp)["results"]
    found = [{m["id"]: m["score"] for m in entry["matches"]} for entry in res]
    assert res[0]["matches"][0]["id"] == PHONE_ITEM
    for n in (1, 2, 3):   # the photo bundle learned its projection: scores through it
        assert_same_scores(found[0], found[n], res[n]["query"], SAME_LEARNED)
    assert_same_scores(found[4], found[5], res[5]["query"], SAME_WEBP)
    live = tmp_path / "live"
    shutil.copytree(photo_bundle_dir, live)
    run("item", "add", "--bundle", live, "--title", "Upright", "--id", "up", corpus.phone[1])
    run("item", "add", "--bundle", live, "--title", "Turned", "--id", "turned", corpus.phone[8])
    res = run("query", "--bundle", live, "--k", 30, "--json", corpus.phone[1])["results"]
    found = {m["id"]: m["score"] for m in res[0]["matches"]}
    # the same photo taught upright and turned by EXIF: decoded a little differently, which the bundle's
    # learned projection stretches a little (measured 0.0104 apart)
    assert max(found, key=found.get) in {"up", "turned"}, found
    assert abs(found["up"] - found["turned"]) <= SAME_LEARNED, found


@pytest.mark.slow
def test_catalog_photos_shot_on_phones_build_like_upright(run, corpus, tmp_path):
    """Catalog rows whose photo is a phone JPEG with EXIF build the same vectors as the upright photo."""
    bundles = {}
    for o in (1, 6, 3):
        root = write_photo_catalog(tmp_path / f"catalog-o{o}", [], phone=corpus.phone[o])
        report = run("index", "build", root, "--out", tmp_path / f"bundle-o{o}", "--json")
        assert report["items"] == len(PHOTO_ITEMS) and report["skipped"] == 0
        bundles[o] = tmp_path / f"bundle-o{o}"
    query = jpeg_bytes(corpus.upright[200:2800, 300:3900], 90)
    (tmp_path / "q.jpg").write_bytes(query)
    found = {o: run("query", "--bundle", b, "--k", 9, "--json", tmp_path / "q.jpg")["results"][0]["matches"]
             for o, b in bundles.items()}
    assert found[1][0]["id"] == PHONE_ITEM
    for o in (6, 3):
        assert_same_scores({m["id"]: m["score"] for m in found[1]}, {m["id"]: m["score"] for m in found[o]},
                           f"catalog photo in orientation {o}")
    with Bundle.open(bundles[1]) as a, Bundle.open(bundles[6]) as b:
        assert a.thumbnail(PHONE_ITEM)[:2] == b"\xff\xd8"
        ta = images.decode(a.thumbnail(PHONE_ITEM), min_side=None)
        tb = images.decode(b.thumbnail(PHONE_ITEM), min_side=None)
        assert ta.shape == tb.shape and ta.shape[1] > ta.shape[0]  # the thumbnail is upright too


def test_over_200_mp_is_still_refused_from_the_header(make, corpus):
    """The pixel cap stays: a JPEG declaring 20000x12000 (240 MP) is refused before any decoding."""
    _, client = make()
    data = bytearray(corpus.phone[1].read_bytes())
    sof = data.find(b"\xff\xc0")
    assert sof > 0 and images.photo_size(bytes(data)) == (4032, 3024)
    data[sof + 5: sof + 9] = (12000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    r = client.post("/api/search", data={"image": (io.BytesIO(bytes(data)), "huge.jpg")})
    assert r.status_code == 400 and "(20000x12000); the largest accepted is 200" in r.get_json()["error"]


def test_orientation_of_cut_or_damaged_metadata_is_as_stored(corpus):
    data = corpus.phone[6].read_bytes()
    assert images.orientation(data) == 6
    for cut in range(0, 64):  # EXIF cut anywhere: never an exception, never a made-up turn
        assert images.orientation(data[:cut]) in (1, 6)
    bad = data.replace(b"Exif\x00\x00II*\x00\x08\x00\x00\x00", b"Exif\x00\x00II*\x00\xff\xff\x00\x00", 1)
    assert bad != data and images.orientation(bad) == 1


# ---------------------------------------------------------------- a top phone camera's full-size photo
MB = 1024 * 1024


def test_a_21_mb_phone_photo_is_searched_and_decoded_within_its_bound(make, corpus):
    """A 40 MP phone JPEG of 21.5 MB goes through /api/search under the default limit (25 MB); the decoder
    never holds its full-size pixels (120 MB): at most a quarter-scale decode (7.5 MB) and the result."""
    import tracemalloc

    data = corpus.phone_21mb.read_bytes()
    assert 20 * MB < len(data) < 25 * MB and images.photo_size(data) == (7296, 5472)   # as shown
    tracemalloc.start()
    try:
        rgb = images.decode(data, name="phone.jpg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    h, w = rgb.shape[:2]   # upright (stored turned), no larger than framing needs
    assert w > h and images.MIN_SIDE <= h < 2 * images.MIN_SIDE and abs(w / h - 7296 / 5472) < 0.01
    assert peak < 12 * MB, f"decoding took {peak / MB:.1f} MB"
    svc, client = make()
    assert svc.config.server.max_upload_mb == 25
    r = search(client, corpus.phone_21mb, k=3)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["image_size"] == [7296, 5472] and body["matches"][0]["id"] == PHONE_ITEM


def test_a_50_mp_phone_photo_sent_as_it_is_is_searched(make, corpus):
    """A 50 MP phone JPEG (8160x6120, EXIF 6) posted straight to /api/search, not shrunk by a page: decoded
    reduced, upright, and its item found."""
    data = corpus.phone_50mp.read_bytes()
    assert images.photo_size(data) == (8160, 6120)   # as shown
    assert images.too_large(data) is None
    _, client = make()
    r = search(client, corpus.phone_50mp, k=3)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["image_size"] == [8160, 6120]
    assert body["matches"][0]["id"] == PHONE_ITEM


def test_a_photo_over_the_limit_is_refused_in_staff_words(make, corpus):
    """27 MB (the 21.5 MB photo with 5.5 MB more after its end): 413 saying how big it is and the limit."""
    data = corpus.phone_21mb.read_bytes()
    big = data + bytes(27 * MB - len(data))
    _, client = make()
    r = client.post("/api/search", data={"image": (io.BytesIO(big), "IMG_2041.jpg")})
    assert r.status_code == 413
    assert r.get_json()["error"] == "This photo is too big (27 MB); the limit is 25 MB. Take it again at a " \
                                    "smaller size."
    r = client.post("/api/items", data={"title": "Bird", "image": (io.BytesIO(big), "IMG_2041.jpg")})
    assert r.status_code == 413 and "too big (27 MB)" in r.get_json()["error"]

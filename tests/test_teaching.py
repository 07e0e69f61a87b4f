"""The teaching service over a real model, bundle and store, and the command line as a thin caller of it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import camera_view, load_photo

from pi_search import images
from pi_search.cli import main
from pi_search.errors import CatalogError, ItemConflict, NoSuchItem
from pi_search.live.catalog import LiveCatalog
from pi_search.model.framing import embed_query_image

WRONG_EAN = "5012345678901"   # its check digit should be 0


@pytest.fixture
def live(tmp_path, bundle_dir, extractor):
    d = tmp_path / "bundle"
    shutil.copytree(bundle_dir, d)
    cat = LiveCatalog.open(d, extractor=extractor, refresh_s=0.0)
    yield cat
    cat.close()


@pytest.fixture(scope="module")
def rocket():
    return load_photo("skimage:rocket")


def test_teach_edit_and_remove_through_the_service(live, rocket, coffee):
    teaching = live.teaching
    before = len(live)
    taught = teaching.add("Model rocket", "19.00", [(camera_view(rocket), "camera"), (rocket, "photo")],
                          item_id="model-rocket", barcode=" 4006381333931 ; SKU-1 ")
    assert (taught.id, taught.shots) == ("model-rocket", 2)
    assert taught.item == {"id": "model-rocket", "title": "Model rocket", "price": "19.00", "taught": True,
                           "extra": {"barcode": "4006381333931;SKU-1"}, "in_bundle": False, "shots": 2}
    assert len(live) == before + 1
    with pytest.raises(ItemConflict):
        teaching.add("Again", None, [(rocket, "photo")], item_id="model-rocket")
    edited = teaching.edit("model-rocket", price="", barcode="", shots=[(camera_view(rocket), "camera")])
    assert (edited.item["price"], edited.item["extra"], edited.item["shots"]) == (None, {}, 3)
    listing = teaching.listing()
    assert [it.id for it in listing.changes] == ["model-rocket"] and listing.items == before + 1
    assert teaching.remove("coffee") == before   # a bundle item: it stops matching at once
    assert "coffee" not in [m.id for m in live.search(embed_query_image(live.extractor, coffee), 16)]
    with pytest.raises(NoSuchItem):
        teaching.edit("no-such-thing", title="X")


def test_bad_input_is_refused_before_anything_is_embedded_or_stored(live, rocket):
    teaching = live.teaching
    with pytest.raises(CatalogError, match="^no shots: capture or upload"):
        teaching.add("Nothing", None, [], barcode=WRONG_EAN)    # the shots are told of first, as on the page
    with pytest.raises(CatalogError, match="wrong check digit"):
        teaching.add("Tin", None, [(rocket, "photo")], barcode=WRONG_EAN)
    with pytest.raises(CatalogError, match="shot kind 'video'"):
        teaching.add("Tin", None, [(rocket, "video")])
    assert teaching.listing().changes == [] and live.store.pending() == 0


def test_the_empty_scene_is_taken_out_of_camera_shots_only(live, rocket, coffee):
    teaching = live.teaching
    shot = camera_view(rocket)
    teaching.add("Plain", None, [(shot, "camera"), (rocket, "photo")], item_id="plain")
    teaching.add("Given", None, [(shot, "camera"), (rocket, "photo")], item_id="given", scene=coffee)
    assert not teaching.has_scene
    teaching.set_scene(coffee)
    assert teaching.has_scene
    teaching.add("Kept", None, [(shot, "camera"), (rocket, "photo")], item_id="kept")
    teaching.clear_scene()
    assert not teaching.has_scene
    snap = live.store.snapshot()
    rows = {i: snap.vectors[snap.owners == i] for i in ("plain", "given", "kept")}
    np.testing.assert_allclose(rows["given"], rows["kept"], atol=1e-6)   # a scene given = the one kept
    assert float(rows["plain"][0] @ rows["given"][0]) < 0.99             # the camera shot changed ...
    np.testing.assert_allclose(rows["plain"][1], rows["given"][1], atol=1e-6)   # ... the photo did not


def test_the_command_line_answers_what_the_service_does(tmp_path, bundle_dir, extractor, rocket):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(bundle_dir, a)
    shutil.copytree(bundle_dir, b)
    photo = tmp_path / "rocket.jpg"
    photo.write_bytes(images.encode_jpeg(rocket, 92))
    r = CliRunner().invoke(main, ["item", "add", "--bundle", str(a), "--title", "Rocket kit", "--price", "9",
                                  "--id", "kit", "--barcode", "4006381333931", "--json", str(photo)])
    assert r.exit_code == 0, r.output
    with LiveCatalog.open(b, extractor=extractor) as cat:
        taught = cat.teaching.add("Rocket kit", "9", [(images.read(photo), "photo")], item_id="kit",
                                  barcode="4006381333931")
        mine = cat.store.snapshot().vectors
    assert json.loads(r.stdout) == {"item": taught.item}
    with LiveCatalog.open(a) as cat:
        np.testing.assert_allclose(cat.store.snapshot().vectors, mine, atol=1e-6)
    r = CliRunner().invoke(main, ["item", "edit", "kit", "--bundle", str(a), "--barcode", WRONG_EAN])
    assert r.exit_code == 2 and "error: barcode 5012345678901: wrong check digit" in r.output
    r = CliRunner().invoke(main, ["item", "list", "--bundle", str(a), "--json"])
    assert [it["id"] for it in json.loads(r.stdout)["items"]] == ["kit"]

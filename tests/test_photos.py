"""Several photos per item: built from repeated catalog rows, searched as items, kept by compaction."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import CATALOG_PHOTOS, camera_view, load_photo, write_catalog

from pi_search import images
from pi_search.bundle.reader import Bundle
from pi_search.bundle.write import BuildOptions
from pi_search.embed.build import FromShards, FromVectors, build_bundle
from pi_search.live.catalog import LiveCatalog
from pi_search.model.framing import embed_query_image
from pi_search.updates.install import info

# "pair" is one item with two photos that look nothing alike (its front and its back): the astronaut and
# the rocket. "fruit" has two photos of oranges.
SINGLE = [p for p in CATALOG_PHOTOS if p[0] not in ("astronaut", "rocket", "orange", "seville-orange")]
SOURCES = {p[0]: p[3] for p in CATALOG_PHOTOS}


def _catalog(root):
    write_catalog(root, SINGLE + [p for p in CATALOG_PHOTOS if p[0] in ("astronaut", "rocket", "orange",
                                                                         "seville-orange")])
    with open(root / "catalog.csv", newline="") as f:
        rows = list(csv.reader(f))
    out = [rows[0]]
    for r in rows[1:]:
        if r[0] == "astronaut":
            r = ["pair", "Astronaut and rocket", "20.00", r[3], "n/a"]
        elif r[0] == "rocket":
            r = ["pair", "", "", r[3], ""]                 # a further photo: the rest may stay empty
        elif r[0] == "orange":
            r = ["fruit", "Oranges", "1.00", r[3], "n/a"]
        elif r[0] == "seville-orange":
            r = ["fruit", "Oranges", "", r[3], ""]
        out.append(r)
    with open(root / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows(out)
    return root


@pytest.fixture(scope="module")
def photos_bundle(tmp_path_factory, extractor):
    root = _catalog(tmp_path_factory.mktemp("photos-catalog"))
    out = tmp_path_factory.mktemp("photos") / "bundle"
    report = build_bundle(root, out, extractor, progress=False)
    assert (report.items, report.photos) == (len(SINGLE) + 2, len(SINGLE) + 4)
    return out


def _query(source):
    return camera_view(load_photo(source))


@pytest.mark.slow   # builds a real bundle: over 1.5 s
@pytest.mark.parametrize("mode", ["exact", "ann"])
def test_an_item_is_found_by_any_of_its_photos_once_and_says_which(photos_bundle, extractor, tmp_path, mode):
    directory = photos_bundle
    if mode == "ann":   # Annoy: the index is asked for more rows until k distinct items come back
        directory = tmp_path / "ann"
        build_bundle(_catalog(tmp_path / "cat"), directory, extractor, progress=False,
                     options=BuildOptions(search="ann"), dims=None)
    with Bundle.open(directory, extractor=extractor) as b:
        assert b.manifest.search.mode == mode
        top = b.search(embed_query_image(extractor, _query(SOURCES["rocket"])), k=3)
        assert (top[0].id, top[0].photo) == ("pair", 1)
        top = b.search(embed_query_image(extractor, _query(SOURCES["astronaut"])), k=3)
        assert (top[0].id, top[0].photo) == ("pair", 0)
        n = len(SINGLE) + 2
        every = b.search(embed_query_image(extractor, _query(SOURCES["orange"])), k=n)
        ids = [m.id for m in every]
        assert len(ids) == n and sorted(ids) == sorted({p[0] for p in SINGLE} | {"pair", "fruit"})
        assert ids[0] == "fruit"
        assert [m.score for m in every] == sorted((m.score for m in every), reverse=True)


def test_info_counts_items_and_photos_and_each_photo_has_its_thumbnail(photos_bundle):
    data = info(photos_bundle)
    assert (data["items"], data["photos"]) == (len(SINGLE) + 2, len(SINGLE) + 4)
    with Bundle.open(photos_bundle) as b:
        front, back = b.thumbnail("pair", 0), b.thumbnail("pair", 1)
        assert front and back and front != back
        assert b.item("pair")["title"] == "Astronaut and rocket" and b.item("pair")["price"] == "20.00"
        # the thumbnail of photo 1 is the rocket's: closer to it than to the astronaut
        rocket = images.thumbnail(load_photo(SOURCES["rocket"]))
        diff = [np.abs(images.decode(t).astype(int)
                       - images.decode(rocket).astype(int)).mean() if images.decode(t).shape == images.decode(
                           rocket).shape else 255 for t in (front, back)]
        assert diff[1] < diff[0]


def test_compaction_keeps_every_photo(photos_bundle, extractor, tmp_path):
    import shutil

    directory = tmp_path / "bundle"
    shutil.copytree(photos_bundle, directory)
    with LiveCatalog.open(directory, extractor=extractor) as cat:
        vec = embed_query_image(extractor, load_photo("skimage:chelsea"))
        cat.add("Another cat", "1.00", vec[None, :], item_id="cat2")
        report = cat.compact()
        assert report["folded"] == 1
        m = cat.search(embed_query_image(extractor, _query(SOURCES["rocket"])), k=3)[0]
        assert (m.id, m.photo) == ("pair", 1)
        assert cat.thumbnail("pair", 1) is not None and cat.thumbnail("pair", 1) != cat.thumbnail("pair")
    data = info(directory)
    assert (data["items"], data["photos"]) == (len(SINGLE) + 3, len(SINGLE) + 5)


def test_the_page_shows_the_thumbnail_of_the_photo_that_matched(photos_bundle, extractor):
    from fakes import FakeWorker, kiosk

    from pi_search.config import load_config
    from pi_search.web import create_app

    config = load_config(None, {})
    with LiveCatalog.open(photos_bundle, extractor=extractor, readonly=True) as cat:
        svc = FakeWorker(cat, extractor, config)
        client = create_app(kiosk(svc), config).test_client()
        svc.start().publish(_query(SOURCES["rocket"]))
        top = client.get("/api/results").get_json()["matches"][0]
        assert (top["id"], top["photo"], top["via"]) == ("pair", 1, "image")
        back, front = client.get("/thumbs/pair?photo=1"), client.get("/thumbs/pair")
        assert back.status_code == front.status_code == 200 and back.data != front.data
        assert back.data == cat.thumbnail("pair", 1)
        assert client.get("/thumbs/pair?photo=7").data == front.data   # no such photo: the item's first


@pytest.mark.slow
def test_shards_from_index_embed_build_the_same_items_and_photos(photos_bundle, extractor, tmp_path):
    from pi_search.embed.local import embed_local

    root = _catalog(tmp_path / "cat")
    embed_local(root, tmp_path / "shards", extractor, shard_rows=5, progress=False)
    report = build_bundle(root, tmp_path / "b", extractor, source=FromShards(tmp_path / "shards"),
                          progress=False)
    assert (report.items, report.photos) == (len(SINGLE) + 2, len(SINGLE) + 4)
    with Bundle.open(tmp_path / "b") as b, Bundle.open(photos_bundle) as a:
        q = embed_query_image(extractor, _query(SOURCES["rocket"]))
        assert [(m.id, m.photo) for m in b.search(q, 4)] == [(m.id, m.photo) for m in a.search(q, 4)]
        assert b.thumbnail("pair", 1) == a.thumbnail("pair", 1)


def test_one_vector_per_id_cannot_feed_several_photos(extractor, tmp_path):
    from pi_search.errors import CatalogError

    root = _catalog(tmp_path / "cat")
    np.save(tmp_path / "v.npy", np.ones((2, extractor.dim), np.float32))
    (tmp_path / "ids.txt").write_text("pair\nfruit\n")
    with pytest.raises(CatalogError, match=r"item 'pair' has several photos .*pi-search index embed"):
        build_bundle(root, tmp_path / "b", extractor, progress=False,
                     source=FromVectors(tmp_path / "v.npy", tmp_path / "ids.txt"))
    assert not (tmp_path / "b").exists()

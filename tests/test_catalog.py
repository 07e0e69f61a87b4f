"""Catalog reading and bundle building with the real model: bad rows, resume, atomic replacement, imports."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi_search.bundle.backends.annoy import Annoy
from pi_search.bundle.ids import MAX_ID, RULE, check_id
from pi_search.bundle.manifest import STORE_FILE
from pi_search.bundle.reader import Bundle
from pi_search.embed import local as engine
from pi_search.embed import shards as sh
from pi_search.embed.build import FromVectors, build_bundle, partial_dir
from pi_search.embed.catalog import read_catalog
from pi_search.errors import CatalogError, PiSearchError
from pi_search.live.catalog import LiveCatalog


@pytest.fixture()
def embedded_photos(monkeypatch):
    """Counts the catalog photos embedded (through the real embed_catalog_image and the real model)."""
    seen = []
    real = engine.embed_catalog_image

    def counting(extractor, rgb):
        seen.append(rgb.shape)
        return real(extractor, rgb)

    monkeypatch.setattr(engine, "embed_catalog_image", counting)
    return seen


def _catalog_with_rows(catalog_dir, tmp_path, extra_rows, keep=6):
    """A copy of the first ``keep`` rows of the shared catalog plus ``extra_rows`` (lists of fields)."""
    root = tmp_path / "cat"
    shutil.copytree(catalog_dir / "images", root / "images")
    with open(catalog_dir / "catalog.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows(rows[: keep + 1])
        w.writerows(extra_rows)
    return root


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_bad_rows_are_reported_with_row_and_file_and_skipped(catalog_dir, extractor, tmp_path, caplog):
    root = _catalog_with_rows(catalog_dir, tmp_path, [
        ["ghost", "Ghost", "1", "images/ghost.jpg", ""],          # line 8: missing file
        ["coffee", "Coffee again", "1", "images/coffee.jpg", ""],  # line 9: a second photo of coffee
        ["untitled", "", "1", "images/rocket.jpg", ""],           # line 10: empty title
        ["broken", "Broken", "1", "images/broken.jpg", ""],       # line 11: unreadable image
        ["escape", "Escape", "1", "../outside.jpg", ""],          # line 12: outside the catalog
        ["rocket2", "Rocket copy", "9", "images/rocket.jpg", ""],  # line 13: fine
    ])
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (tmp_path / "outside.jpg").write_bytes((root / "images" / "apple.jpg").read_bytes())
    with caplog.at_level(logging.WARNING):
        report = build_bundle(root, tmp_path / "out", extractor, progress=False)
    assert report.items == 7 and report.photos == 8
    assert len(report.skipped) == 4
    text = "\n".join(str(p) for p in report.skipped)
    assert "line 8: images/ghost.jpg: missing image file" in text
    # a repeated id adds a photo; its other title and price are one warning naming both lines
    assert ("catalog.csv line 9: a further photo of id 'coffee' with another title 'Coffee again' (line 4: "
            "'Cup of coffee') and price '1' (line 4: '3.20'); line 4's are kept") in caplog.text
    assert "line 10: images/rocket.jpg: empty title" in text
    assert "line 11: images/broken.jpg: unreadable image" in text
    assert "line 12: ../outside.jpg: image path must be relative" in text
    assert "4 bad row(s) skipped, 7 items indexed" in caplog.text
    assert "line 11: images/broken.jpg" in caplog.text
    with Bundle.open(tmp_path / "out", extractor=extractor) as b:
        assert len(b) == 8 and b.manifest.views == 1
        assert b.item("rocket2")["title"] == "Rocket copy"
        assert b.item("ghost") is None and b.item("broken") is None
        assert b.item("coffee")["title"] == "Cup of coffee"


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_one_id_rule_for_the_catalog_and_the_taught_items(catalog_dir, extractor, tmp_path):
    """An id the change store could not take is refused at build (with the id and the rule); every id that is
    built can then be edited and removed."""
    long_id = "x" * (MAX_ID + 1)
    root = _catalog_with_rows(catalog_dir, tmp_path, [
        ["shoes/red", "Red shoes", "1", "images/apple.jpg", ""],      # line 8: a slash
        [long_id, "Long", "1", "images/apple.jpg", ""],               # line 9: too long
        ["shoes-red_2.b", "Red shoes 2", "1", "images/apple.jpg", ""],  # line 10: fine
    ])
    report = build_bundle(root, tmp_path / "out", extractor, progress=False)
    text = "\n".join(str(p) for p in report.skipped)
    assert f"line 8: images/apple.jpg: item id 'shoes/red' breaks the id rule: {RULE}" in text
    assert "line 9: " in text and "breaks the id rule" in text and report.items == 7
    with pytest.raises(CatalogError, match="--strict; first: catalog.csv line 8: .*'shoes/red'"):
        build_bundle(root, tmp_path / "strict", extractor, strict=True, progress=False)
    with LiveCatalog.open(tmp_path / "out", extractor=extractor) as cat:
        for rid in [r for r in (cat.bundle.items.all_rows())]:
            check_id(rid[1])                      # every built id passes the store's rule
        cat.edit("shoes-red_2.b", title="Red shoes, size 2")
        assert cat.item("shoes-red_2.b")["title"] == "Red shoes, size 2"
        cat.remove("shoes-red_2.b")
        assert cat.item("shoes-red_2.b") is None
        with pytest.raises(CatalogError, match="breaks the id rule"):
            cat.add("Red shoes", None, np.ones((1, extractor.dim), np.float32), item_id="shoes/red")


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_strict_makes_a_bad_row_fatal_and_writes_nothing(catalog_dir, extractor, tmp_path):
    root = _catalog_with_rows(catalog_dir, tmp_path, [["", "No id", "1", "images/apple.jpg", ""]])
    with pytest.raises(CatalogError, match=r"--strict; first: catalog.csv line 8: images/apple.jpg: empty"):
        build_bundle(root, tmp_path / "out", extractor, strict=True, progress=False)
    assert not (tmp_path / "out").exists()
    (root / "images" / "bad.jpg").write_bytes(b"")
    root2 = _catalog_with_rows(catalog_dir, tmp_path / "b", [["bad", "Bad", "", "images/bad.jpg", ""]])
    (root2 / "images" / "bad.jpg").write_bytes(b"")
    with pytest.raises(CatalogError, match="unreadable image"):
        build_bundle(root2, tmp_path / "out", extractor, strict=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_plain_folder_catalog_takes_id_and_title_from_file_names(catalog_dir, extractor, tmp_path, capsys):
    root = tmp_path / "folder"
    (root / "coffee-cup" / "back").mkdir(parents=True)
    shutil.copy(catalog_dir / "images" / "apple.jpg", root / "green_apple.jpg")
    # a sub-folder is one item with its photos (at any depth), named after the folder
    shutil.copy(catalog_dir / "images" / "coffee.jpg", root / "coffee-cup" / "front.JPG")
    shutil.copy(catalog_dir / "images" / "coffee.jpg", root / "coffee-cup" / "back" / "b.png")
    (root / "green_apple").mkdir()
    shutil.copy(catalog_dir / "images" / "rocket.jpg", root / "green_apple" / "x.png")  # duplicate id
    (root / "notes.txt").write_text("not an image")
    report = build_bundle(root, tmp_path / "out", extractor)
    assert report.items == 2 and report.photos == 3 and len(report.skipped) == 1
    # Without a terminal, progress is plain lines on stderr with the rate and the time left.
    assert re.search(r"embedded 3/3 items \(\d+\.\d items/s, ETA 00:00:00\)", capsys.readouterr().err)
    assert "green_apple.jpg: duplicate id 'green_apple' (also green_apple/)" in str(report.skipped[0])
    with Bundle.open(tmp_path / "out") as b:
        assert b.item("green_apple")["title"] == "green apple"
        assert b.item("coffee-cup")["title"] == "coffee cup"
        assert b.item("coffee-cup")["extra"] == {"folder": "coffee-cup"}
        assert b.thumbnail("coffee-cup", 1) is not None and b.thumbnail("coffee-cup", 2) is None


def test_catalog_level_problems_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="no catalog.csv and no images"):
        read_catalog(tmp_path / "empty")
    with pytest.raises(CatalogError, match="not a directory"):
        read_catalog(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "catalog.csv").write_text("sku,name,picture\n1,a,b.jpg\n")
    with pytest.raises(CatalogError, match=r"missing column\(s\) id, title, image"):
        read_catalog(bad)


def test_csv_oddities_are_rows_not_crashes(tmp_path):
    root = tmp_path / "odd"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(b"x")
    text = ("ID, Title ,price,image,notes\n"
            "a1,Caf\xe9,2,img/a.jpg,\"multi\nline\"\n"
            "\n"
            "a2,Too,many,img/a.jpg,x,y\n"
            "a3,Short\n"
            "a4,Abs,1,/etc/passwd\n")
    (root / "catalog.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("latin-1"))
    rows, problems = read_catalog(root)
    assert [(r.id, r.title) for r in rows] == [("a1", "Caf\xe9")]
    assert rows[0].extra == {"notes": "multi\nline"}
    msgs = [str(p) for p in problems]
    assert any("line 5" in m and "6 values for 5 columns (id,title,price,image,notes): remove the extra value"
               in m for m in msgs)
    assert any("line 6" in m and "no image" in m for m in msgs)
    assert any("line 7" in m and "/etc/passwd" in m and "relative" in m for m in msgs)


def _shop_with_rows(tmp_path, catalog_dir, lines: list[str]):
    """A real catalog: the test catalog's header and photos, plus the given raw CSV lines."""
    shop = tmp_path / "shop"
    shutil.copytree(catalog_dir, shop)
    with open(shop / "catalog.csv", "a", newline="") as f:
        f.write("".join(line + "\r\n" for line in lines))
    return shop


def test_too_many_values_hints_at_quotes_only_for_an_unquoted_comma(tmp_path, catalog_dir):
    """The comma hint appears only where an unquoted comma split a value; a quoted comma with one value too
    many is told as values against columns."""
    image = sorted((catalog_dir / "images").iterdir())[0].relative_to(catalog_dir).as_posix()
    shop = _shop_with_rows(tmp_path, catalog_dir, [
        f'x1,"Mug, blue",3.50,{image},n/a,gift',          # quoted comma, one value too many
        f"x2,Mug, blue,3.50,{image},n/a",                  # unquoted comma inside the title
        f"x3,Jug,3,50,{image},n/a",                        # a decimal comma in the price
        f'x4,"Bowl, ""large""",4.00,{image},n/a',          # quoted comma and quotes: a good row
    ])
    rows, problems = read_catalog(shop)
    assert "x4" in {r.id for r in rows} and 'Bowl, "large"' in {r.title for r in rows}
    found = {p.line: str(p) for p in problems}
    header = "id,title,price,image,colour"
    n = len((catalog_dir / "catalog.csv").read_text().splitlines())  # header + the catalog's rows
    assert found[n + 1].endswith(f"6 values for 5 columns ({header}): remove the extra value, or name its "
                                 "column in the header line")
    assert "comma" not in found[n + 1]
    assert found[n + 2].endswith("6 values for 5 columns: the comma in 'Mug, blue' splits a value; put "
                                 'quotes around a value with a comma ("Mug, blue")')
    assert found[n + 3].endswith("6 values for 5 columns: the comma in '3,50' splits a value; put quotes "
                                 'around a value with a comma ("3,50")')
    assert len(problems) == 3


def test_index_build_strict_names_the_bad_row(tmp_path, catalog_dir):
    from click.testing import CliRunner

    from pi_search.cli import main

    image = sorted((catalog_dir / "images").iterdir())[0].relative_to(catalog_dir).as_posix()
    shop = _shop_with_rows(tmp_path, catalog_dir, [f'x1,"Mug, blue",3.50,{image},n/a,gift'])
    res = CliRunner().invoke(main, ["index", "build", str(shop), "--out", str(tmp_path / "b"), "--strict"])
    assert res.exit_code == 2
    assert "6 values for 5 columns (id,title,price,image,colour): remove the extra value" in res.stderr
    assert "quotes" not in res.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(alphabet=st.sampled_from("id,title,price,image\n\"\r\x00a./é"),
                                          max_size=200).map(lambda s: s.encode()))
def test_any_bytes_in_catalog_csv_give_rows_problems_or_a_catalog_error(tmp_path, data):
    (tmp_path / "catalog.csv").write_bytes(data)
    try:
        rows, problems = read_catalog(tmp_path)
    except CatalogError as exc:
        assert "\n" not in str(exc).strip() or "catalog.csv" in str(exc)
        return
    assert all(r.image.is_file() for r in rows)


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_interrupted_build_resumes_where_it_stopped(catalog_dir, extractor, bundle_dir, tmp_path,
                                                    embedded_photos):
    out = tmp_path / "out"

    def stop_after_two_chunks(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_bundle(catalog_dir, out, extractor, chunk=4, progress=False, on_chunk=stop_after_two_chunks)
    assert len(embedded_photos) == 8
    assert not out.exists()
    chunks = sorted(partial_dir(out).glob("shard-*.npz"))
    assert len(chunks) == 2

    embedded_photos.clear()
    report = build_bundle(catalog_dir, out, extractor, chunk=4, progress=False)
    assert (report.resumed, report.embedded, len(embedded_photos)) == (8, 8, 8)
    assert not partial_dir(out).exists()
    # The resumed bundle holds the same vectors as one built in a single run.
    np.testing.assert_allclose(np.load(out / STORE_FILE), np.load(bundle_dir / STORE_FILE), atol=1e-6)
    with Bundle.open(out, extractor=extractor) as b:
        assert b.thumbnail("astronaut")[:2] == b"\xff\xd8"  # thumbnails of resumed items are kept too


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_checkpoints_of_an_older_kind_are_discarded(catalog_dir, extractor, tmp_path, embedded_photos):
    out = tmp_path / "out"
    part = partial_dir(out)
    part.mkdir()   # chunk files, not shards: left by an earlier pi-search
    (part / "state.json").write_text(json.dumps({"version": 1, "model_sha256": "f" * 64, "dim": 1280}))
    (part / "chunk-000000.npz").write_bytes(b"junk")
    report = build_bundle(catalog_dir, out, extractor, progress=False)
    assert report.resumed == 0 and len(embedded_photos) == report.items == 16


@pytest.mark.slow   # two real builds
def test_shards_of_another_model_left_in_the_partial_are_discarded(catalog_dir, extractor, tmp_path,
                                                                   embedded_photos, caplog):
    out = tmp_path / "out"

    def stop_after_one_chunk(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_bundle(catalog_dir, out, extractor, chunk=4, progress=False, on_chunk=stop_after_one_chunk)
    manifest = sh.ShardsManifest.read(partial_dir(out))
    replace(manifest, model=replace(manifest.model, sha256="f" * 64)).write(partial_dir(out))
    embedded_photos.clear()
    report = build_bundle(catalog_dir, out, extractor, chunk=4, progress=False)
    assert (report.resumed, report.embedded, len(embedded_photos)) == (0, 16, 16)
    assert "left by a build with another catalog, model or vectors" in caplog.text
    assert not partial_dir(out).exists()


@pytest.mark.slow   # two real builds
def test_a_photo_changed_while_stopped_is_embedded_again_with_its_shard_only(catalog_dir, extractor, tmp_path,
                                                                             embedded_photos):
    cat = tmp_path / "cat"
    shutil.copytree(catalog_dir, cat)
    out = tmp_path / "out"

    def stop_after_two_chunks(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_bundle(cat, out, extractor, chunk=4, progress=False, on_chunk=stop_after_two_chunks)
    rows, _ = read_catalog(cat)
    photo = rows[5].image                                # in the second shard (rows 4-7)
    photo.write_bytes(photo.read_bytes() + b"\0")         # another file now (size and time)
    embedded_photos.clear()
    report = build_bundle(cat, out, extractor, chunk=4, progress=False)
    assert (report.resumed, report.embedded, len(embedded_photos)) == (4, 12, 12)
    assert report.items == 16 and not partial_dir(out).exists()


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_failed_build_leaves_the_previous_bundle_untouched(catalog_dir, extractor, tmp_path, monkeypatch):
    small = _catalog_with_rows(catalog_dir, tmp_path, [], keep=5)
    out = tmp_path / "live"
    build_bundle(small, out, extractor, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # A failure while the new bundle is being written (here: the index cannot be built).
    def broken_annoy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Annoy, "build", broken_annoy)
    with pytest.raises(OSError, match="disk full"):
        build_bundle(catalog_dir, out, extractor, progress=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".live")) == []

    # A successful build replaces it whole, and nothing else is left beside it.
    build_bundle(catalog_dir, out, extractor, progress=False)
    with Bundle.open(out, extractor=extractor) as b:
        assert len(b) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "live"]


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(catalog_dir, extractor, tmp_path,
                                                            embedded_photos):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(PiSearchError, match=r"photos is a catalog \(it holds photos\), not a bundle: "
                                            r".* --out .*photos-bundle \(nothing was replaced\)"):
        build_bundle(catalog_dir, out, extractor, progress=False)
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    assert embedded_photos == []  # refused before any work


def test_build_from_embeddings_computed_elsewhere(catalog_dir, extractor, plain_bundle_dir, tmp_path,
                                                  embedded_photos):
    bundle_dir = plain_bundle_dir   # its stored rows are the model's embeddings
    with Bundle.open(bundle_dir) as b:
        ids = [b.search(v, 1)[0].id for v in np.load(bundle_dir / STORE_FILE)]
    vecs = np.load(bundle_dir / STORE_FILE)
    order = np.arange(len(ids))[::-1]  # any order: rows are matched by id
    emb, ids_file = tmp_path / "emb.npy", tmp_path / "ids.txt"
    np.save(tmp_path / "emb.npy", vecs[order])
    (tmp_path / "ids.txt").write_text("\n".join(ids[i] for i in order) + "\nnot-in-catalog\n")
    with pytest.raises(CatalogError, match="17 ids for 16 embeddings"):
        build_bundle(catalog_dir, tmp_path / "out", extractor, source=FromVectors(emb, ids_file),
                     progress=False)
    (tmp_path / "ids.txt").write_text("\n".join(ids[i] for i in order) + "\n")
    report = build_bundle(catalog_dir, tmp_path / "out", extractor, source=FromVectors(emb, ids_file),
                          progress=False, learn=False)
    assert embedded_photos == [] and report.items == 16
    np.testing.assert_allclose(np.load(tmp_path / "out" / STORE_FILE), vecs, atol=1e-6)
    np.save(tmp_path / "wrong.npy", vecs[:, :100])
    with pytest.raises(CatalogError, match=r"expected \[n, 1280\]"):
        build_bundle(catalog_dir, tmp_path / "out2", extractor, progress=False,
                     source=FromVectors(tmp_path / "wrong.npy", ids_file))


@pytest.mark.slow   # a real build
def test_a_row_without_a_given_vector_or_a_readable_photo_is_skipped(catalog_dir, extractor, plain_bundle_dir,
                                                                     tmp_path, embedded_photos):
    cat = tmp_path / "cat"
    shutil.copytree(catalog_dir, cat)
    rows, _ = read_catalog(cat)
    vecs = np.load(plain_bundle_dir / STORE_FILE)
    np.save(tmp_path / "emb.npy", vecs[1:])
    (tmp_path / "ids.txt").write_text("".join(f"{r.id}\n" for r in rows[1:]))   # none for the first row
    rows[2].image.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")   # no thumbnail can be made
    report = build_bundle(cat, tmp_path / "out", extractor, progress=False, learn=False,
                          source=FromVectors(tmp_path / "emb.npy", tmp_path / "ids.txt"))
    assert embedded_photos == [] and report.items == 14 and report.embedded == 0
    reasons = [str(p) for p in report.skipped]
    assert len(reasons) == 2 and f"no embedding for id {rows[0].id!r}" in reasons[0]
    assert "unreadable image" in reasons[1] and rows[2].image.name in reasons[1]
    assert not partial_dir(tmp_path / "out").exists()

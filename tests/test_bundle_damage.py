"""Bundles damaged inside a file (an SD card's bad block, a bad copy): every byte is checked against the
manifest's SHA-256 before any library opens a file, so damage anywhere is refused naming the file, and a
catalog that serves a bundle keeps serving it when the next one is damaged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pi_search.bundle.files import _exchange
from pi_search.bundle.items import Item
from pi_search.bundle.manifest import MANIFEST
from pi_search.bundle.reader import Bundle
from pi_search.bundle.write import BuildOptions, write_bundle
from pi_search.cli import main
from pi_search.errors import BundleError
from pi_search.live.catalog import LiveCatalog
from pi_search.updates.install import install_bundle

FILES = ("index.ann", "items.sqlite", "vectors.npy")
SPOT = 4096   # bytes damaged: one SD card page


@pytest.fixture(scope="module")
def ann_bundle(tmp_path_factory) -> Path:
    """A bundle searched through Annoy (index.ann mapped), of 2000 synthetic items with thumbnails."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 96)).astype(np.float32)
    items = [Item(f"id{i}", f"item {i}", thumbnail=rng.bytes(1500)) for i in range(len(x))]
    out = tmp_path_factory.mktemp("ann") / "bundle"
    write_bundle(out, x, items, model={"name": "synthetic", "sha256": "0" * 64, "dim": 96},
                 options=BuildOptions.parse(search="ann", dims=32, n_trees=4))
    return out


def _damage(path: Path, where: str, fill: str) -> int:
    """Overwrite ``SPOT`` bytes of ``path`` in place (same size, same name) at its start, middle or end with
    zeros, random bytes or 0xff; the spot is moved on until the bytes really change. Returns the offset."""
    data = bytearray(path.read_bytes())
    size = len(data)
    at = {"start": 0, "middle": size // 2, "end": size - SPOT}[where]
    new = {"zeros": bytes(SPOT), "random": os.urandom(SPOT), "ff": b"\xff" * SPOT}[fill]
    step = -SPOT if where == "end" else SPOT
    while data[at:at + SPOT] == new:
        at += step
    assert 0 <= at <= size - SPOT
    data[at:at + SPOT] = new
    with open(path, "r+b") as f:   # in place, as a failing card does it
        f.write(bytes(data))
    return at


@pytest.mark.parametrize("fill", ["zeros", "random", "ff"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("name", FILES)
def test_install_refuses_a_bundle_damaged_anywhere_naming_the_file(tmp_path, ann_bundle, name, where, fill):
    live = tmp_path / "bundle"
    shutil.copytree(ann_bundle, live)
    before = {p.name: p.read_bytes() for p in live.iterdir()}
    src = tmp_path / "copied"
    shutil.copytree(ann_bundle, src)
    _damage(src / name, where, fill)
    with pytest.raises(BundleError) as err:
        install_bundle(src, live)
    msg = str(err.value)
    assert f"{src / name}:" in msg and "\n" not in msg and "pi-search index install" in msg, msg
    assert {p.name: p.read_bytes() for p in live.iterdir()} == before          # the old one stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "copied"]  # nothing left over
    with pytest.raises(BundleError, match=name):                               # nor is it opened
        Bundle.open(src)


def test_a_bundle_without_whole_file_checksums_is_not_opened(tmp_path, ann_bundle):
    old = tmp_path / "old"
    shutil.copytree(ann_bundle, old)
    m = json.loads((old / MANIFEST).read_text())
    for entry in m["files"].values():
        del entry["sha256"]
    (old / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"lists no sha256 .*rebuild it"):
        Bundle.open(old)


def test_a_checked_unchanged_file_is_not_read_again_in_one_process(tmp_path, ann_bundle, monkeypatch):
    from pi_search.bundle import verify

    b = tmp_path / "b"
    shutil.copytree(ann_bundle, b)
    hashed: list[str] = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    Bundle.open(b).close()
    assert sorted(hashed) == sorted(json.loads((b / MANIFEST).read_text())["files"])
    hashed.clear()
    Bundle.open(b).close()                   # a reload of the same bundle
    assert hashed == []
    _damage(b / "vectors.npy", "middle", "random")   # same size and name, written in place
    with pytest.raises(BundleError, match=r"vectors\.npy: damaged"):
        Bundle.open(b)
    assert hashed == ["vectors.npy"]


def test_query_refuses_a_damaged_bundle_naming_the_file(tmp_path, bundle_dir, query_photo):
    b = tmp_path / "bundle"
    shutil.copytree(bundle_dir, b)
    largest = max((p for p in b.iterdir() if p.name != MANIFEST), key=lambda p: p.stat().st_size)
    _damage(largest, "middle", "random")
    r = CliRunner().invoke(main, ["query", "--bundle", str(b), "--json", str(query_photo)])
    assert r.exit_code == 2, r.output
    assert f"{largest.name}: damaged" in r.stderr and r.stdout == "", r.stderr


@pytest.mark.parametrize("guard", [False, True])
def test_a_reload_to_a_damaged_bundle_keeps_the_old_one_serving(tmp_path, bundle_dir, extractor, guard):
    live = tmp_path / "state" / "bundle"
    shutil.copytree(bundle_dir, live)
    cat = LiveCatalog.open(live, extractor=extractor, guard=guard)
    try:
        q = np.random.default_rng(3).standard_normal(cat.bundle.dim).astype(np.float32)   # an embedding
        first = [m.id for m in cat.search(q, 5)]
        assert len(first) == 5
        staged = tmp_path / "state" / "staged"
        shutil.copytree(bundle_dir, staged)
        _damage(staged / "index.ann", "middle", "random")
        assert _exchange(staged, live)          # swapped in whole, as index install and rsync do
        with pytest.raises(BundleError, match=r"index\.ann: damaged"):
            cat.reload(strict=True)
        assert cat.serving and [m.id for m in cat.search(q, 5)] == first
        assert cat.thumbnail(first[0])
        assert "index.ann: damaged" in cat.refused and "\n" not in cat.refused
        cat.refresh()                           # the watcher's way: it keeps the old one too
        assert cat.serving and [m.id for m in cat.search(q, 5)] == first
    finally:
        cat.close()
    assert [p.name for p in live.parent.iterdir() if ".serving-" in p.name] == []   # private copies gone


def test_a_guarded_catalog_without_leases_serves_a_private_copy(tmp_path, bundle_dir, extractor):
    live = tmp_path / "state" / "bundle"
    shutil.copytree(bundle_dir, live)
    cat = LiveCatalog.open(live, extractor=extractor, guard=True)   # no leases in a test process
    try:
        assert cat.bundle.copy_of == live and cat.bundle.directory.parent == live.parent
        q = np.random.default_rng(0).standard_normal(cat.bundle.dim).astype(np.float32)   # an embedding
        want = [m.id for m in cat.search(q, 3)]
        for p in live.iterdir():                 # truncated under it, as cp does: nothing it maps changes
            if p.name != MANIFEST:
                os.truncate(p, 0)
        assert [m.id for m in cat.search(q, 3)] == want
        assert cat.thumbnail(want[0])
    finally:
        cat.close()
    assert [p.name for p in live.parent.iterdir() if ".serving-" in p.name] == []


def test_doctor_names_the_damaged_file(tmp_path, bundle_dir, catalog_dir):
    from pi_search.ops import doctor

    b = tmp_path / "bundle"
    shutil.copytree(bundle_dir, b)
    _damage(b / "index.ann", "middle", "zeros")
    frames = tmp_path / "frames"
    frames.mkdir()
    photo = sorted((catalog_dir / "images").iterdir())[0]
    (frames / photo.name).write_bytes(photo.read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(f'[camera]\nsource = "folder:{frames}"\n[index]\nbundle = "{b}"\n')
    check = {c.name: c for c in doctor.run_checks(config)}["bundle"]
    assert check.status == "FAIL" and "index.ann: damaged" in check.detail, check

"""What a bundle learns from its own catalog at build time, and the one look every way in shares."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_photo

from pi_search import images
from pi_search.bundle.manifest import read_manifest
from pi_search.bundle.reader import Bundle
from pi_search.embed.build import build_bundle
from pi_search.errors import BundleError
from pi_search.learn import catalog as learning
from pi_search.learn import views as synth
from pi_search.learn.whiten import Learned, fit
from pi_search.live.catalog import LiveCatalog
from pi_search.model import look as looking
from pi_search.model.framing import embed_catalog_image, embed_query_image

REPO = Path(__file__).resolve().parent.parent
STAMPS = Path("/usr/share/tuxpaint/stamps")


def _corner_frame(photo: np.ndarray) -> bytes:
    """A 640x480 JPEG: a grey wall with ``photo`` small in the lower right corner (a hard shot)."""
    import cv2

    frame = np.full((480, 640, 3), 118, np.uint8)
    h, w = photo.shape[:2]
    s = 190 / max(h, w)
    small = cv2.resize(photo, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    frame[480 - 20 - small.shape[0]:460, 640 - 20 - small.shape[1]:620] = small
    return images.encode_jpeg(frame, 90)


def test_cut_out_keeps_the_item_and_drops_the_plain_background():
    rgb = np.full((100, 80, 3), 255, np.uint8)
    rgb[20:70, 10:60] = (200, 40, 30)
    rgb[35:45, 25:35] = 255          # white inside the item stays part of it
    rgba = synth.cut_out(rgb)
    assert rgba.dtype == np.uint8 and rgba.shape[2] == 4
    assert abs(rgba.shape[0] - 50) <= 2 and abs(rgba.shape[1] - 50) <= 2   # cut to the item's box
    assert rgba[40 - 20, 30 - 10, 3] == 255 and tuple(rgba[40 - 20, 30 - 10, :3]) == (255, 255, 255)
    assert rgba[5, 5, 3] == 255 and rgba[0, 0, 3] < 255   # soft edge, opaque inside
    whole = synth.cut_out(np.full((60, 60, 3), 90, np.uint8))   # no plain border: kept whole
    assert whole.shape[:2] == (60, 60) and whole[..., 3].min() == 255


def test_views_come_from_the_item_id_and_are_model_inputs():
    rgba = synth.cut_out(np.ascontiguousarray(load_photo("skimage:coffee")))
    rooms = [np.full((240, 320, 3), v, np.uint8) for v in (60, 160)]
    others = [synth.shrink(synth.cut_out(load_photo("skimage:astronaut")))]
    a = synth.views(rgba, others, rooms, synth.item_rng("coffee"), 4)
    b = synth.views(rgba, others, rooms, synth.item_rng("coffee"), 4)
    c = synth.views(rgba, others, rooms, synth.item_rng("tea"), 4)
    assert len(a) == 4 and all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))   # same id: same views
    assert not any(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_sensor_noise_drawn_once_is_normal_differs_per_view_and_follows_the_item_id():
    noise = synth.SensorNoise(64)
    a = [noise(synth.item_rng("coffee"), 5.0, (64, 64, 3)) for _ in range(2)]
    b = noise(synth.item_rng("tea"), 5.0, (64, 64, 3))
    assert a[0].dtype == np.float32 and a[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(a[0], a[1])                      # the same random numbers: the same noise
    assert not np.array_equal(a[0], b)
    rng = synth.item_rng("coffee")
    many = np.stack([noise(rng, 5.0, (64, 64, 3)) for _ in range(200)])
    assert abs(float(many.mean())) < 0.1 and abs(float(many.std()) - 5.0) < 0.1
    assert len({m.tobytes() for m in many}) == 200                  # a window of its own for each view
    big = noise(rng, 2.0, (400, 400, 3))                              # larger than the fields: drawn afresh
    assert big.shape == (400, 400, 3) and big.dtype == np.float32 and abs(float(big.std()) - 2.0) < 0.05
    rgba = synth.cut_out(np.ascontiguousarray(load_photo("skimage:coffee")))
    rooms = [np.full((240, 320, 3), v, np.uint8) for v in (60, 160)]
    once = synth.views(rgba, [], rooms, synth.item_rng("coffee"), 2, noise=synth.SensorNoise())
    fresh = synth.views(rgba, [], rooms, synth.item_rng("coffee"), 2)
    assert all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in once)
    x, y = once[0].astype(np.float32), fresh[0].astype(np.float32)   # the first view: only its noise differs
    assert not np.array_equal(x, y)
    assert abs(float(x.mean() - y.mean())) < 1 and float(np.abs(x - y).mean()) < 12


def test_whitening_pulls_views_to_their_photo():
    rng = np.random.default_rng(3)
    dim, n = 64, 40
    photos = rng.normal(size=(n, dim)).astype(np.float32)
    nuisance = rng.normal(size=(4, dim)).astype(np.float32) * 3.0   # strong directions views vary along
    own = np.repeat(np.arange(n), 6)
    views = photos[own] + rng.normal(size=(len(own), 4)).astype(np.float32) @ nuisance

    def recall(project) -> float:
        s = project(views) @ project(photos).T
        return float((s.argmax(axis=1) == own).mean())

    def plain(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    learned = fit(plain(views), plain(photos)[own], plain(photos))
    assert learned.matrix.shape == (dim, dim) and learned.mean.shape == (dim,)
    assert recall(lambda x: learned.apply(plain(x))) >= recall(plain) + 0.2


@pytest.mark.slow
def test_learned_projection_round_trips_through_a_bundle(bundle_dir, catalog_dir, extractor, tmp_path):
    m = read_manifest(bundle_dir)
    entry = m.learned
    assert entry is not None and entry["type"] == "whitening" and entry["dims"] == learning.DIMS < 1280
    assert m.stored_dim == learning.DIMS and m.model.dim == 1280   # queries come 1280-d, rows stored smaller
    assert entry["items"] == 16 and entry["pairs"] == 16 * entry["views_per_item"]
    for name in (entry["mean"], entry["matrix"]):
        assert m.files[name]["bytes"] == (bundle_dir / name).stat().st_size   # listed like every file
    learned = Learned.load(bundle_dir / entry["mean"], bundle_dir / entry["matrix"], 1280)

    with Bundle.open(bundle_dir, extractor=extractor) as b:
        assert b.learned is not None and np.array_equal(b.learned.matrix, learned.matrix)
        stored = np.load(bundle_dir / "vectors.npy")
        assert stored.shape == (16, learning.DIMS)
        apple = embed_catalog_image(extractor, images.read(catalog_dir / "images" / "apple.jpg"))
        row = b.search(apple, 1)[0]
        assert row.id == "apple" and row.score > 0.999    # the stored row is the projected photo
        np.testing.assert_allclose(stored[row.index], learned.apply(apple), atol=1e-4)
        q = embed_query_image(extractor, images.decode(_corner_frame(load_photo("skimage:coffee"))))
        got = b.search(q, 16)
        want = stored @ learned.apply(q)               # queries are projected the same way
        for match in got:
            assert abs(match.score - float(want[match.index])) < 1e-4

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    with LiveCatalog.open(copy, extractor=extractor) as cat:   # a taught item is projected alike
        shot = embed_query_image(extractor, load_photo("skimage:astronaut"))
        cat.add("Astronaut", None, shot[None, :], item_id="astro")
        top = cat.search(shot, 1)[0]
        assert top.id == "astro" and top.score > 0.999
        near = cat.search(q, 20)
        taught = next((x for x in near if x.id == "astro"), None)
        if taught is not None:
            assert abs(taught.score - float(learned.apply(q) @ learned.apply(shot))) < 1e-4
        cat.compact()   # folded into a new bundle: the projection comes along, the taught row projected once
        folded = read_manifest(copy)
        assert folded.folded_seq > 0 and folded.learned["pairs"] == entry["pairs"]
        assert np.array_equal(np.load(copy / entry["matrix"]), learned.matrix)
        cat.refresh()
        top = cat.search(shot, 1)[0]
        assert top.id == "astro" and top.score > 0.999

    with open(copy / entry["matrix"], "r+b") as f:   # a damaged projection is refused, not served
        f.truncate(1000)
    with pytest.raises(BundleError, match="learned_matrix.npy"):
        Bundle.open(copy, extractor=extractor)


@pytest.mark.slow
@pytest.mark.skipif(not STAMPS.is_dir(), reason="needs the Debian package tuxpaint-stamps-default")
def test_learning_from_the_catalog_raises_recall_on_a_generated_hard_set(tmp_path, extractor):
    from pi_search.tools.benchmark_data import make_benchmark
    from pi_search.tools.evaluate import load_catalog, read_truth

    make_benchmark(tmp_path / "b", seed=11, scenes=2, burst=1, limit=120, hard=True)
    plain, learned = tmp_path / "plain", tmp_path / "learned"
    build_bundle(tmp_path / "b" / "catalog", plain, extractor, progress=False, learn=False)
    build_bundle(tmp_path / "b" / "catalog", learned, extractor, progress=False)
    truth = read_truth(tmp_path / "b" / "truth.csv")
    assert len(truth) == 240
    first = {"plain": 0, "learned": 0}     # the kept framing: every camera frame's first result
    looked = {"plain": 0, "learned": 0}    # the look (still frame, upload, query)
    with Bundle.open(plain, extractor=extractor) as bp, Bundle.open(learned, extractor=extractor) as bl:
        bundles = {"plain": bp, "learned": bl}
        for t in truth:
            seen = looking.look(extractor, images.read(t.path))
            for name, b in bundles.items():
                first[name] += b.search(seen.kept, 1)[0].id == t.item_id
                looked[name] += looking.search(b, seen, 5)[0][0].id == t.item_id
        ids, paths, _ = load_catalog(tmp_path / "b" / "catalog")
        for item_id, path in zip(ids, paths, strict=True):   # catalog photos as queries: still all first
            assert looking.look_and_search(extractor, bl, images.read(path), 1)[0].id == item_id
    # measured on this seed: kept framing 209 -> 215 of 240, the look 217 -> 217
    assert first["learned"] >= first["plain"] + 3, first
    assert looked["learned"] >= looked["plain"] - 2, looked


@pytest.mark.slow
def test_one_look_camera_upload_and_query_agree(tmp_path, bundle_dir, extractor):
    from fakes import kiosk

    from pi_search.camera.files import FolderSource
    from pi_search.config import load_config
    from pi_search.pipeline.worker import Worker
    from pi_search.web import create_app

    jpeg = _corner_frame(load_photo("skimage:coffee"))
    (tmp_path / "frames").mkdir()
    shot = tmp_path / "frames" / "shot.jpg"
    shot.write_bytes(jpeg)
    config = load_config(None, {"gate.refresh_s": 0.0})
    with LiveCatalog.open(bundle_dir, extractor=extractor, readonly=True) as cat:
        svc = Worker(None, extractor, cat, config, source_name="folder")
        with FolderSource(tmp_path / "frames", fps=1000) as src:   # camera: a still frame, then settled
            assert svc.process(src.read()) is not None
            for _ in range(60):
                svc.process(src.read())
                if svc.stats.settled:
                    break
        camera = svc.latest()
        assert camera.settle_ms is not None
        r = create_app(kiosk(svc), config).test_client().post(
            "/api/search?k=5", data={"image": (io.BytesIO(jpeg), "shot.jpg")})
        assert r.status_code == 200, r.get_data(as_text=True)
        upload = r.get_json()["matches"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", "from pi_search.cli import main; main()", "query", "--bundle",
                        str(bundle_dir), "--k", "5", "--json", str(shot)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    query = json.loads(p.stdout)["results"][0]["matches"]
    cam = {m.id: m.score for m in camera.matches}
    up = {m["id"]: m["score"] for m in upload}
    cli = {m["id"]: m["score"] for m in query}
    assert camera.matches[0].id == upload[0]["id"] == query[0]["id"] == "coffee"
    for other in (up, cli):
        for item in set(cam) & set(other):
            assert abs(cam[item] - other[item]) < 0.01, (item, cam, other)


def test_an_ivfpq_bundle_folds_the_learned_projection_into_its_pca(tmp_path):
    pytest.importorskip("faiss")
    from pi_search.bundle.items import Item
    from pi_search.bundle.write import BuildOptions, write_bundle

    rng = np.random.default_rng(5)
    dim, n = 32, 3000
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    views = x[:200, None, :] + 0.3 * rng.normal(size=(200, 3, dim)).astype(np.float32)
    learned = fit(views.reshape(-1, dim), np.repeat(x[:200], 3, axis=0), x[:200])
    model = {"name": "synthetic", "sha256": "0" * 64, "dim": dim}
    out = tmp_path / "big"
    write_bundle(out, x, [Item(f"id{i}", f"item {i}") for i in range(n)], model=model,
                 options=BuildOptions(backend="ivfpq", dims=16), learned=learned, learned_info={"items": 200})
    m = read_manifest(out)
    assert m.backend == "ivfpq" and m.learned["dims"] == dim and m.learned["items"] == 200
    assert m.learned["folded"] == "pca" and m.projection.fold   # one projection: learned, then the PCA
    with Bundle.open(out) as b:
        assert b.learned is None and b.projection.fold is not None
        hits = sum(b.search(x[i], 1)[0].id == f"id{i}" for i in range(0, n, 100))
    assert hits >= 27   # of 30: each item's own vector, projected like the rows, finds it


@pytest.mark.slow
def test_an_ivfpq_build_learns_as_many_axes_as_its_store_keeps(catalog_dir, extractor, tmp_path):
    """``index build --backend ivfpq`` cuts the whitening to the store's dims (not every axis), so the PCA
    it folds into keeps the whole learned space; ``--dims`` sets both."""
    pytest.importorskip("faiss")
    from pi_search.bundle.backends.ivfpq import DEFAULT_DIMS
    from pi_search.bundle.write import BuildOptions

    for dims, want in ((-1, DEFAULT_DIMS), (64, 64)):
        out = tmp_path / f"b{dims}"
        build_bundle(catalog_dir, out, extractor, progress=False, dims=dims,
                     options=BuildOptions(backend="ivfpq"))
        m = read_manifest(out)
        assert m.learned["dims"] == m.projection.dims == want and m.learned["folded"] == "pca"
        assert m.projection.explained_variance > 0.999 and m.projection.fold_residual < 1e-3
        with Bundle.open(out, extractor=extractor) as b:
            for item in ("cat", "coffee"):
                photo = load_photo(str(catalog_dir / "images" / f"{item}.jpg"))
                assert b.search(embed_catalog_image(extractor, photo), 1)[0].id == item


def _relearn_cmd(bundle: Path, *more: str) -> list[str]:
    return [sys.executable, "-c", "from pi_search.cli import main; main()", "index", "relearn", str(bundle),
            *more]


@pytest.mark.slow
def test_relearn_on_the_kiosks_scenes_writes_a_new_verifiable_generation(bundle_dir, catalog_dir, extractor,
                                                                          tmp_path):
    from pi_search.bundle.verify import check_file
    from pi_search.live.relearn import keep_scene, scenes_dir

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    before = read_manifest(copy)
    old_matrix = np.load(copy / before.learned["matrix"])
    for name in ("skimage:brick", "skimage:grass"):   # the empty counter, as the teach page keeps it
        keep_scene(copy, images.encode_jpeg(load_photo(name), 90))
    assert len(list(scenes_dir(copy).glob("*.jpg"))) == 2
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(_relearn_cmd(copy, "--views", "4", "--json"), capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["backgrounds"] == 2 and report["items"] == 16 and report["times"] == 1
    after = read_manifest(copy)
    new_matrix = np.load(copy / after.learned["matrix"])
    assert new_matrix.shape == old_matrix.shape and not np.allclose(new_matrix, old_matrix, atol=1e-3)
    assert after.learned["relearned"]["pairs"] == 16 * 4 and after.learned["items"] == before.learned["items"]
    for name, want in after.files.items():   # every file listed with its sha256, as verify checks it
        check_file(copy / name, want)
    with Bundle.open(copy, extractor=extractor) as b:
        assert np.array_equal(b.learned.matrix, new_matrix)
        for item_id in ("apple", "rocket"):   # a catalog photo still finds its item, in the new space
            photo = embed_catalog_image(extractor, images.read(catalog_dir / "images" / f"{item_id}.jpg"))
            top = b.search(photo, 1)[0]
            assert top.id == item_id and top.score > 0.99


@pytest.mark.slow
def test_a_relearn_killed_midway_leaves_the_old_bundle_served(bundle_dir, extractor, tmp_path):
    import signal
    import time

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    files = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    with LiveCatalog.open(copy, extractor=extractor, readonly=True) as cat:
        q = embed_query_image(extractor, load_photo("skimage:coffee"))
        want = [(m.id, round(m.score, 5)) for m in cat.search(q, 5)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(_relearn_cmd(copy, "--views", "64"), stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            lines = []
            while not lines or ("relearning from views of 16 items" not in lines[-1] and lines[-1]):
                lines.append(proc.stderr.readline())   # until learning has begun: the views are being made
            assert "relearning from views of 16 items" in lines[-1], lines
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == files   # nothing changed
        assert [(m.id, round(m.score, 5)) for m in cat.search(q, 5)] == want           # still served
    with Bundle.open(copy, extractor=extractor) as b:   # and it opens whole, every byte checked
        assert len(b) == 16

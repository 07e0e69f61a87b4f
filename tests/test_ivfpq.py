"""The ivfpq backend (faiss IVF-PQ over PCA, int8 PCA re-rank store) behind the one bundle interface."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_taught_lamp_kept_beside_an_ivfpq_bundle

from pi_search.bundle.backends.annoy import FILE as ANNOY_FILE
from pi_search.bundle.files import fingerprint
from pi_search.bundle.items import Item
from pi_search.bundle.manifest import MANIFEST, STORE_FILE
from pi_search.bundle.reader import Bundle
from pi_search.bundle.write import BuildOptions, write_bundle
from pi_search.errors import BundleError
from pi_search.updates.install import info

pytestmark = pytest.mark.slow   # faiss trains its lists and codes on thousands of vectors

DIM = 1280


def _embeddings_like(n: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors, decaying spectrum over random axes, like the model's: float32 [n, 1280]."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    scale = (np.arange(1, DIM + 1) ** -0.6).astype(np.float32)
    centres = (rng.standard_normal((n // 40, DIM)) * scale) @ axes.T
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * (rng.standard_normal((n, DIM)) * scale) @ axes.T
    x += 0.4 * np.abs(rng.standard_normal(DIM)) * scale[0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _noise(rng, norm: float) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return norm * v / np.linalg.norm(v)


def _write(path, x, model=None, **opts):
    items = [Item(f"id{i}", f"item {i}") for i in range(len(x))]
    model = model or {"name": "synthetic", "sha256": "0" * 64, "dim": x.shape[1]}
    write_bundle(path, x, items, model=model, options=BuildOptions.parse(**opts))
    return path


@pytest.fixture(scope="module")
def data():
    return _embeddings_like(4000)


@pytest.fixture(scope="module")
def ivf_dir(tmp_path_factory, data):
    return _write(tmp_path_factory.mktemp("ivfpq") / "b", data, backend="ivfpq", dims=128)


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(x @ q), kind="stable")[:k]


def test_build_writes_the_layout_and_a_fresh_bundle_finds_the_true_neighbours(ivf_dir, data):
    m = json.loads((ivf_dir / MANIFEST).read_text())
    assert m["index"]["backend"] == "ivfpq" and m["index"]["file"] == "index.faiss"
    assert m["index"]["dim"] == 128 and m["projection"]["dims"] == 128
    assert m["store"]["space"] == "pca" and m["store"]["dtype"] == "int8" and m["store"]["dims"] == 128
    assert m["search"]["mode"] == "ann" and m["search"]["nprobe"] > 0
    assert np.load(ivf_dir / "vectors.npy", mmap_mode="r").shape == (len(data), 128)
    assert not (ivf_dir / ANNOY_FILE).exists()
    rng = np.random.default_rng(5)
    hits, firsts = 0, 0
    with Bundle.open(ivf_dir) as b:
        for i in rng.choice(len(data), 50, replace=False):
            q = data[i] + _noise(rng, 0.3)
            q /= np.linalg.norm(q)
            truth = _exact_top(data, q, 10)
            found = b.search(q, 10)
            assert len(found) == 10
            firsts += found[0].index == truth[0]
            hits += len({f.index for f in found} & set(truth.tolist()))
            scores = [f.score for f in found]
            assert scores == sorted(scores, reverse=True)
            # the score estimates the cosine of the full vectors
            assert abs(found[0].score - float(data[found[0].index] @ q)) < 0.05
    assert firsts >= 45            # the item itself, almost always
    assert hits / 500 >= 0.8       # chance would be 10 / 4000


def test_more_candidates_and_lists_find_more(ivf_dir, data):
    rng = np.random.default_rng(9)
    qs = data[rng.choice(len(data), 40, replace=False)] + np.stack([_noise(rng, 0.5) for _ in range(40)])
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)

    def recall(search):
        with Bundle.open(ivf_dir, search=search) as b:
            found = [set(b.search_indices(q, 10)[0].tolist()) for q in qs]
        truth = [set(_exact_top(data, q, 10).tolist()) for q in qs]
        return np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)])

    low = recall({"candidates": 10, "nprobe": 1})
    high = recall({"candidates": 400, "nprobe": 32})
    assert high > low and high >= 0.7   # chance: 0.0025; the 128-d PCA caps it near 0.8


def test_info_and_manifest_report_the_memory_it_needs(ivf_dir):
    data = info(ivf_dir)
    mem = data["memory"]
    assert "ivfpq" in mem["layout"] and "int8" in mem["layout"]
    in_ram = sum((ivf_dir / f).stat().st_size for f in ("index.faiss", "pca_mean.npy", "pca_components.npy"))
    assert mem["in_ram_bytes"] == in_ram
    assert mem["mapped_bytes"] >= (ivf_dir / "vectors.npy").stat().st_size
    assert "vectors.npy" in mem["mapped_files"] and "index.faiss" not in mem["mapped_files"]
    fit = mem["machine"]
    assert fit["mem_total_bytes"] > 0 and fit["fits"] is True and fit["verdict"].startswith("enough")
    manifest = json.loads((ivf_dir / MANIFEST).read_text())
    assert manifest["memory"]["in_ram_bytes"] == in_ram


def test_machine_fit_says_when_a_bundle_is_too_big():
    from pi_search.bundle.memory import machine_fit

    mem = {"in_ram_bytes": 3_000_000_000, "mapped_bytes": 10_000_000_000}
    small = machine_fit(mem, {"MemTotal": 2_000_000_000, "MemAvailable": 1_500_000_000})
    assert small["fits"] is False and small["verdict"].startswith("too small")
    pi4 = machine_fit({"in_ram_bytes": 500_000_000, "mapped_bytes": 5_000_000_000},
                      {"MemTotal": 4_000_000_000, "MemAvailable": 3_000_000_000})
    assert pi4["fits"] is True and pi4["cached_fraction"] == 0.5 and "50%" in pi4["verdict"]


def test_missing_faiss_file_is_refused_naming_it(tmp_path, data):
    b = _write(tmp_path / "b", data[:3000], backend="ivfpq", dims=64)
    (b / "index.faiss").unlink()
    with pytest.raises(BundleError, match=r"index\.faiss: missing; copy the whole bundle again"):
        Bundle.open(b)


def test_damaged_faiss_file_is_refused_naming_it_and_the_fix(tmp_path, data):
    b = _write(tmp_path / "b", data[:3000], backend="ivfpq", dims=64)
    path = b / "index.faiss"
    raw = bytearray(path.read_bytes())
    raw[:4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"index\.faiss: does not belong"):   # the fingerprint sees it first
        Bundle.open(b)
    m = json.loads((b / MANIFEST).read_text())
    del m["files"]["index.faiss"]
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"index\.faiss: not listed in the manifest"):   # not opened
        Bundle.open(b)
    m["files"]["index.faiss"] = fingerprint(path)        # a manifest that lists the damaged file as it is
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"index\.faiss: faiss cannot read it .*--backend ivfpq"):
        Bundle.open(b)


def test_options_that_do_not_fit_ivfpq_are_refused(tmp_path, data):
    with pytest.raises(BundleError, match="--store float16"):
        _write(tmp_path / "a", data[:500], backend="ivfpq", store_dtype="float16")
    with pytest.raises(BundleError, match="approximately"):
        _write(tmp_path / "b", data[:500], backend="ivfpq", search="exact")
    with pytest.raises(BundleError, match="mode ann"):
        Bundle.open(_write(tmp_path / "c", data[:2000], backend="ivfpq", dims=32),
                       search={"mode": "exact"})


def test_query_cli_finds_real_photos_among_thousands(tmp_path, plain_bundle_dir, extractor, query_photo,
                                                     catalog_dir):
    """Real embeddings of the catalog photos among 4,000 distractors, served through ``pi-search query``."""
    from pi_search.cli import main

    bundle_dir = plain_bundle_dir   # its stored rows are the model's embeddings
    real = np.load(bundle_dir / STORE_FILE).astype(np.float32)
    with Bundle.open(bundle_dir) as b:
        ids = [b.search(v, 1)[0].id for v in real]
    centre = real.mean(axis=0)
    spread = np.linalg.norm(real - centre, axis=1).mean()
    others = centre + spread * _embeddings_like(4000, seed=3)   # as far from the centre as real items
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    x = np.concatenate([others[:2000], real, others[2000:]]).astype(np.float32)
    names = [f"other{i}" for i in range(2000)] + ids + [f"other{i}" for i in range(2000, 4000)]
    items = [Item(n, n.title()) for n in names]
    model = {"name": extractor.name, "sha256": extractor.sha256, "dim": extractor.dim}
    out = tmp_path / "big"
    write_bundle(out, x, items, model=model, options=BuildOptions(backend="ivfpq", dims=64))
    r = CliRunner().invoke(main, ["query", "--bundle", str(out), "--k", "3", "--json", str(query_photo),
                            str(catalog_dir / "images" / "apple.jpg")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert res[0]["matches"][0]["id"] == "coffee"
    assert res[1]["matches"][0]["id"] == "apple"
    r = CliRunner().invoke(main, ["query", "--bundle", str(bundle_dir), "--k", "1", "--json",
                                  str(catalog_dir / "images" / "apple.jpg")], catch_exceptions=False)
    exact = json.loads(r.stdout)["results"][0]["matches"][0]
    assert exact["id"] == "apple"
    assert res[1]["matches"][0]["score"] == pytest.approx(exact["score"], abs=0.05)   # PCA estimate of it
    r = CliRunner().invoke(main, ["index", "info", str(out)])
    assert r.exit_code == 0 and "ivfpq" in r.stdout and "in RAM" in r.stdout


def test_taught_items_are_served_and_compaction_refuses_keeping_them(tmp_path, data):
    b = _write(tmp_path / "b", data[:3000], backend="ivfpq", dims=64)
    rng = np.random.default_rng(4)
    lamp = data[3500:3503] + np.stack([_noise(rng, 0.05) for _ in range(3)])
    lamp /= np.linalg.norm(lamp, axis=1, keepdims=True)
    assert_taught_lamp_kept_beside_an_ivfpq_bundle(b, lamp, data, 3000)


def test_many_lists_learn_group_by_group_and_find_what_one_kmeans_finds(tmp_path, data, monkeypatch):
    """Past ``FLAT_LISTS_MAX`` lists the centroids learn inside groups and items find their list among a few
    groups' lists: nearly every item lands in its nearest list, lists stay even, and a bundle built so (codes
    of the vectors, not of residuals; lists over the PCA whitened to a power) finds the neighbours as well as
    one built with a single k-means."""
    import faiss

    from pi_search.bundle.backends import ivfpq

    rng = np.random.default_rng(2)
    x = rng.standard_normal((20_000, 32)).astype(np.float32) * np.linspace(2.0, 0.2, 32, dtype=np.float32)
    lists = ivfpq.TwoLevelLists(faiss, x[:12_000], 256)
    assert lists.centroids.shape == (256, 32) and len(lists.top) == 16
    got = lists.assign(x[12_000:])
    flat = faiss.IndexFlatL2(32)
    flat.add(lists.centroids)
    nearest = flat.search(np.ascontiguousarray(x[12_000:]), 1)[1][:, 0]
    assert (got == nearest).mean() >= 0.97
    sizes = np.bincount(got, minlength=256)
    assert sizes.min() > 0 and sizes.std() / sizes.mean() < 0.6

    qs = data[rng.choice(len(data), 40, replace=False)] + np.stack([_noise(rng, 0.3) for _ in range(40)])
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    truth = [set(_exact_top(data, q, 10).tolist()) for q in qs]

    def recall(path):
        with Bundle.open(path, search={"nprobe": 8, "candidates": 200}) as b:
            return np.mean([len(set(b.search_indices(q, 10)[0].tolist()) & t) / 10
                            for q, t in zip(qs, truth, strict=True)])

    one = recall(_write(tmp_path / "one", data, backend="ivfpq", dims=128, nlist=64))
    monkeypatch.setattr(ivfpq, "FLAT_LISTS_MAX", 16)
    grouped = _write(tmp_path / "grouped", data, backend="ivfpq", dims=128, nlist=64)
    m = json.loads((grouped / MANIFEST).read_text())
    assert m["index"]["nlist"] == 64 and m["index"]["scale"] == ivfpq.SCALE_FILE
    assert m["index"]["by_residual"] is False and m["index"]["list_whiten_power"] == ivfpq.LIST_WHITEN_POWER
    assert ivfpq.SCALE_FILE in m["files"]                       # fingerprinted like every bundle file
    mem = info(grouped)["memory"]
    assert mem["in_ram_bytes"] > (grouped / "index.faiss").stat().st_size and "fast scan" in mem["layout"]
    two = recall(grouped)
    assert two >= one - 0.05 and two >= 0.7
    # the list space's factors travel with the bundle: missing, the bundle is refused with the fix
    with Bundle.open(grouped) as b:
        assert (grouped / ivfpq.SCALE_FILE) in b._searcher.files()
    (grouped / ivfpq.SCALE_FILE).rename(tmp_path / "scale.npy")
    with pytest.raises(BundleError, match=r"index_scale\.npy.*copy the whole bundle"):
        Bundle.open(grouped)


def test_list_counts_follow_the_catalog_size():
    """4,096 lists at a million items (one k-means); one list per ~80 items past four million (learned group
    by group), with 1/32 of them probed: the settings measured at 1M and 10M (docs/scale.md)."""
    from pi_search.bundle.backends.ivfpq import FLAT_LISTS_MAX, auto_nlist, default_dims, default_nprobe

    assert default_dims(1_000_000) == 512 and default_dims(10_000_000) == 768
    assert auto_nlist(1_000_000) == 4096 <= FLAT_LISTS_MAX
    assert auto_nlist(10_000_000) == 131_072 and default_nprobe(131_072) == 4096
    assert default_nprobe(4096) == 128
    assert auto_nlist(2000) * 39 <= 2000        # every list has the rows faiss wants to learn it


def test_items_with_several_photos_come_back_once_through_ivfpq(tmp_path, data):
    """The ten-million layout holds several vectors per item too: rows map to items, each item once."""
    from pi_search.bundle.photos import row_id

    items, per = [], 4
    for i in range(len(data)):     # 1,000 items of 4 photos each: near copies of one another
        items.append(Item(row_id(f"item{i // per}", i % per), f"item {i // per}"))
    rng = np.random.default_rng(3)
    x = data.copy()
    for i in range(len(x)):
        base = data[(i // per) * per]
        v = base + _noise(rng, 0.25)
        x[i] = v / np.linalg.norm(v)
    model = {"name": "synthetic", "sha256": "0" * 64, "dim": DIM}
    write_bundle(tmp_path / "b", x, items, model=model, options=BuildOptions(backend="ivfpq", dims=128),
                 extra_manifest={"changes": {"views": len(x) - len(x) // per}})
    with Bundle.open(tmp_path / "b") as b:
        assert b.manifest.backend == "ivfpq"
        for item in (0, 123, 999):
            photo = 2
            q = x[item * per + photo] + _noise(rng, 0.05)
            found = b.search(q / np.linalg.norm(q), 10)
            ids = [m.id for m in found]
            assert len(ids) == 10 and len(set(ids)) == 10 and "\x1f" not in "".join(ids)
            assert ids[0] == f"item{item}" and found[0].photo == photo


@pytest.mark.slow
def test_an_ivfpq_bundle_copied_to_the_pi_installs_and_finds_its_items(tmp_path, catalog_dir, extractor):
    """The documented path (docs/scale.md): build with --backend ivfpq, copy the folder, `pi-search index
    install` it. The install's self-check probes the bundle with its own stored rows: an ivfpq store keeps
    only PCA coordinates (no full vector to give back), so it is probed with those."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import load_photo

    from pi_search.embed.build import build_bundle
    from pi_search.model.framing import embed_catalog_image

    built = tmp_path / "built"
    build_bundle(catalog_dir, built, extractor, progress=False, options=BuildOptions(backend="ivfpq"))
    copy = tmp_path / "newbundle"
    shutil.copytree(built, copy)                               # rsync -a built/ pi:/tmp/newbundle/
    live = tmp_path / "live"
    exe = Path(sys.executable).with_name("pi-search")
    p = subprocess.run([str(exe), "index", "install", str(copy), "--to", str(live), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["items"] == 16
    with Bundle.open(live, extractor=extractor) as b:
        assert b.manifest.backend == "ivfpq"
        photo = load_photo(str(catalog_dir / "images" / "coffee.jpg"))
        assert b.search(embed_catalog_image(extractor, photo), 1)[0].id == "coffee"

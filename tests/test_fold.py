"""A learned projection folded into the ivfpq layout's PCA: one projection a query, the learned ranking."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_taught_lamp_kept_beside_an_ivfpq_bundle

from pi_search.bundle import pca_store
from pi_search.bundle.items import Item
from pi_search.bundle.learned import Learned
from pi_search.bundle.manifest import MANIFEST, PCA_FOLD_FILE, Manifest, read_manifest
from pi_search.bundle.projection import fit_pca, fold_learned, normalise, outside
from pi_search.bundle.reader import Bundle
from pi_search.bundle.write import BuildOptions, LearnedRows, WhitenedRows, write_bundle
from pi_search.errors import BundleError
from pi_search.learn.whiten import PairStats

DIM = 1280
MODEL = {"name": "synthetic", "sha256": "0" * 64, "dim": DIM}


def _catalog(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Clustered unit vectors with a decaying spectrum on random axes and a common mean, like the model's
    embeddings: float32 [n, dim]."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = (np.arange(1, dim + 1) ** -0.6).astype(np.float32)
    centres = (rng.standard_normal((max(1, n // 40), dim)) * scale) @ axes.T
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * (rng.standard_normal((n, dim)) * scale) @ axes.T
    x += 0.4 * np.abs(rng.standard_normal(dim)) * scale[0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _shots(x: np.ndarray, rows: np.ndarray, rng, spread: float = 0.5, jitter: float = 0.02) -> np.ndarray:
    """Camera-like shots of rows ``rows`` of ``x``: each plus part of another item's offset from the mean
    and a little jitter, normalised (float32 [len(rows), dim])."""
    other = x[rng.integers(0, len(x), len(rows))] - x.mean(axis=0)
    v = x[rows] + spread * other + jitter * rng.standard_normal(other.shape).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _learned(x: np.ndarray, items: int = 600, views: int = 3, seed: int = 11,
             dims: int | None = None) -> Learned:
    """A whitening from shots of ``items`` items, cut to ``dims`` axes (None: every axis)."""
    rng = np.random.default_rng(seed)
    stats = PairStats(x.shape[1])
    for i in rng.choice(len(x), items, replace=False):
        stats.add(x[i], _shots(x, np.full(views, i), rng))
    return stats.fit(dims=dims)


def _items(n: int) -> list[Item]:
    return [Item(f"id{i}", f"item {i}") for i in range(n)]


# ------------------------------------------------------------------------------------------ the algebra
def test_a_learned_space_of_the_stores_dims_is_kept_whole_and_its_true_neighbours_found(tmp_path):
    """``index build`` cuts the whitening an ivfpq bundle learns to the store's dims: the PCA turns the
    whole learned space, so the bundle finds that space's exact top 10; with every axis learned, the same
    store keeps only part of the space and misses much of it."""
    rng = np.random.default_rng(8)
    x = _catalog(3000, dim=256)
    model = {**MODEL, "dim": 256}
    queries = _shots(x, rng.choice(len(x), 40, replace=False), rng)
    found = {}
    for cut in (48, None):
        learned = _learned(x, items=400, dims=cut)
        out = tmp_path / f"b{cut}"
        write_bundle(out, x, _items(len(x)), model=model,
                     options=BuildOptions.parse(backend="ivfpq", dims=48, nprobe=1 << 10), learned=learned)
        m = read_manifest(out)
        assert m.learned["dims"] == (cut or 256) and m.projection.dims == 48
        if cut:
            assert m.projection.explained_variance > 0.999 and m.projection.fold_residual < 1e-3   # rounding
        truth = np.argsort(-(learned.apply(x) @ learned.apply(queries).T), axis=0)[:10].T
        with Bundle.open(out) as b:
            found[cut] = np.mean([len({int(h.id[2:]) for h in b.search(q, 10)} & set(t.tolist())) / 10
                                  for q, t in zip(queries, truth, strict=True)])
    assert found[48] >= 0.95 and found[48] > found[None] + 0.2, found


def test_the_folded_projection_is_the_pca_of_the_whitened_rows_exactly():
    rng = np.random.default_rng(3)
    x = _catalog(2000, dim=160)
    learned = _learned(x, items=300)
    z = WhitenedRows(x, learned)[:]
    for whiten in (False, True):
        pca = fit_pca(z, 32, whiten=whiten)
        folded = fold_learned(pca, learned, outside(z, pca))
        q = x[rng.choice(len(x), 20, replace=False)]
        two_step = (q - learned.mean) @ learned.matrix.T
        want = (two_step - pca.mean) @ pca.components.T
        got = (q - folded.mean) @ folded.components.T
        assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
        assert folded.components.shape == (32, 160) and folded.mean.shape == (160,)
        # the axes in the learned space come back from the folded components and their lengths
        assert np.allclose(folded.lengths, np.linalg.norm(pca.components, axis=1), rtol=1e-5)
        assert np.allclose(folded.apply(q), pca.apply(two_step), atol=1e-4)
        assert folded.fold.residual > 0 and folded.fold.rest >= 0


def test_a_learned_mean_out_of_reach_is_refused():
    pca = fit_pca(np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32) + 3.0, 4)
    flat = Learned(np.zeros(8, np.float32), np.diag([1, 1, 1, 1, 1, 1, 1, 0]).astype(np.float32))
    with pytest.raises(BundleError, match="cannot be folded"):
        fold_learned(pca, flat)


def test_the_folded_score_is_the_cosine_of_the_reconstructions_in_the_learned_space(tmp_path):
    rng = np.random.default_rng(4)
    x = _catalog(1500, dim=160)
    learned = _learned(x, items=300)
    z = WhitenedRows(x, learned)[:]
    pca = fit_pca(z, 48, whiten=True)
    folded = fold_learned(pca, learned, 0.0)
    entry = pca_store.write(tmp_path, x, folded.mean, folded.components, fold=folded.fold)
    assert entry.space == "pca" and entry.dims == 48
    scorer = pca_store.Scorer(np.load(tmp_path / "vectors.npy"), np.load(tmp_path / "vectors_scale.npy"),
                              np.load(tmp_path / "vectors_offset.npy"), folded.mean, folded.components,
                              folded.fold)
    u = pca.components / np.linalg.norm(pca.components, axis=1, keepdims=True)
    rows = np.arange(0, 1500, 7)
    for q in _shots(x, rng.choice(len(x), 5), rng):
        zq = (q - learned.mean) @ learned.matrix.T
        recon = pca.mean + ((z[rows] - pca.mean) @ u.T) @ u        # z = mu + U^T y, float32
        recon_q = pca.mean + ((zq - pca.mean) @ u.T) @ u
        want = normalise(recon) @ normalise(recon_q[None])[0]
        assert np.abs(scorer.scores(rows, q) - want).max() < 0.01   # int8 rounding of y


def test_the_manifest_keeps_the_fold_and_says_the_learned_projection_is_folded():
    d = {"format_version": 1, "items": 3, "model": MODEL,
         "index": {"backend": "ivfpq", "file": "index.faiss"},
         "store": {"file": "vectors.npy", "dtype": "int8", "space": "pca", "dims": 8},
         "search": {"mode": "ann"},
         "projection": {"dims": 8, "whiten": True, "explained_variance": 0.5,
                        "fold": {"file": PCA_FOLD_FILE, "rest": 0.25, "residual": 1.5}},
         "learned": {"type": "whitening", "items": 600, "dims": DIM, "folded": "pca"}}
    m = Manifest.from_dict(d)
    assert m.projection.fold == PCA_FOLD_FILE and m.projection.fold_rest == 0.25
    assert m.projection.fold_residual == 1.5
    assert PCA_FOLD_FILE in m.opened_files() and "learned_matrix.npy" not in m.opened_files()
    assert m.stored_dim == DIM and m.learned["folded"] == "pca"
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.projection == m.projection
    plain = {**d, "projection": {"dims": 8, "whiten": True, "explained_variance": 0.5}}
    assert "fold" not in Manifest.from_dict(plain).to_dict()["projection"]


# ------------------------------------------------------------------------------------ real bundles
@pytest.fixture(scope="module")
def data():
    return _catalog(3000)


@pytest.fixture(scope="module")
def learned(data):
    return _learned(data)


@pytest.fixture(scope="module")
def folded_dir(tmp_path_factory, data, learned):
    pytest.importorskip("faiss")
    out = tmp_path_factory.mktemp("fold") / "folded"
    write_bundle(out, data, _items(len(data)), model=MODEL,
                 options=BuildOptions.parse(backend="ivfpq", dims=96), learned=learned,
                 learned_info={"type": "whitening", "items": 600, "pairs": 1800})
    return out


@pytest.fixture(scope="module")
def two_step_dir(tmp_path_factory, data, learned):
    """The same catalog the unfolded way: the PCA of the normalised learned rows, the learned projection
    kept beside it and applied to every query first."""
    pytest.importorskip("faiss")
    out = tmp_path_factory.mktemp("fold") / "two-step"
    write_bundle(out, LearnedRows(data, learned)[:], _items(len(data)), model=MODEL,
                 options=BuildOptions.parse(backend="ivfpq", dims=96), learned=learned,
                 learned_info={"type": "whitening", "items": 600, "pairs": 1800}, learned_applied=True)
    return out


def _compare(folded: Bundle, two_step: Bundle, data, learned, qs) -> dict:
    """Top-10 overlap of the two bundles, their score differences on shared items and the folded
    scores' differences from the exact learned cosines, and both recalls against exact learned search."""
    exact = LearnedRows(data, learned)[:] @ learned.apply(qs).T          # [n, q]: the learned cosines
    out = {"overlap": [], "vs_two_step": [], "vs_exact": [], "folded": [], "two-step": []}
    for j, q in enumerate(qs):
        fi, fs = folded.search_indices(q, 10)
        ti, ts = two_step.search_indices(q, 10)
        out["overlap"].append(len(set(fi.tolist()) & set(ti.tolist())) / 10)
        both = dict(zip(ti.tolist(), ts.tolist(), strict=True))
        out["vs_two_step"] += [s - both[i] for i, s in zip(fi.tolist(), fs.tolist(), strict=True)
                               if i in both]
        out["vs_exact"] += (fs - exact[fi, j]).tolist()
        truth = set(np.argsort(-exact[:, j])[:10].tolist())
        out["folded"].append(len(truth & set(fi.tolist())) / 10)
        out["two-step"].append(len(truth & set(ti.tolist())) / 10)
    return {k: float(np.mean(np.abs(v) if k.startswith("vs") else v)) for k, v in out.items()}


@pytest.mark.slow
def test_a_folded_bundle_ranks_and_scores_like_the_two_step_path(folded_dir, two_step_dir, data, learned):
    rng = np.random.default_rng(8)
    with Bundle.open(folded_dir) as f, Bundle.open(two_step_dir) as t:
        # shots along the catalog's own directions: the same ranking and the same scores
        qs = _shots(data, rng.choice(len(data), 60, replace=False), rng, 0.3, 0.0)
        r = _compare(f, t, data, learned, qs)
        assert r["overlap"] >= 0.85 and r["folded"] >= r["two-step"] - 0.05 and r["folded"] >= 0.8, r
        assert r["vs_two_step"] < 0.04 and r["vs_exact"] < 0.04, r
        # with isotropic jitter too, which the whitening blows up mostly outside the kept axes: the ranking
        # holds; the scores read higher (the query's part outside them counts at the catalog's mean)
        r = _compare(f, t, data, learned, _shots(data, rng.choice(len(data), 60, replace=False), rng, 0.3))
        assert r["overlap"] >= 0.85 and r["folded"] >= r["two-step"] - 0.05, r


@pytest.mark.slow
def test_a_folded_bundle_holds_one_projection_and_a_query_pays_one_product(folded_dir, data, monkeypatch):
    m = read_manifest(folded_dir)
    names = {p.name for p in folded_dir.iterdir()}
    assert "learned_mean.npy" not in names and "learned_matrix.npy" not in names
    assert {PCA_FOLD_FILE, "pca_mean.npy", "pca_components.npy"} <= set(m.files)
    assert m.learned == {"type": "whitening", "items": 600, "pairs": 1800, "dims": DIM, "folded": "pca"}
    assert m.projection.fold == PCA_FOLD_FILE and m.stored_dim == DIM
    assert PCA_FOLD_FILE not in m.extra["memory"]["mapped_files"]    # read whole, as the PCA is
    with Bundle.open(folded_dir) as b:
        assert b.learned is None
        q = data[5] * 3.0
        assert np.array_equal(b.to_learned(q), normalise(q))     # the PCA does it all
        products = []
        real_matmul = np.matmul

        class Counted(np.ndarray):
            def __matmul__(self, other):
                products.append(np.shape(other))
                return real_matmul(np.asarray(self), other)

        def never(*_a, **_k):
            raise AssertionError("a folded bundle applied the learned projection")

        monkeypatch.setattr(Learned, "apply", never)
        store = b.store
        real = store._scorer.coordinates
        monkeypatch.setattr(store._scorer, "coordinates", lambda v: real(np.asarray(v).view(Counted)))
        found = b.search(data[5], 3)
    assert found[0].id == "id5"
    assert products == [(DIM, 96)]    # x (1280) times the folded components' transpose, once


@pytest.mark.slow
def test_info_and_doctor_say_the_projection_is_folded(folded_dir):
    from pi_search.cli import main
    from pi_search.ops import doctor

    r = CliRunner().invoke(main, ["index", "info", str(folded_dir)])
    assert r.exit_code == 0, r.output
    assert ("learned     whitening 1280-d from 1800 synthetic views of 600 catalog photos, folded into the "
            "PCA") in r.stdout
    r = CliRunner().invoke(main, ["index", "info", str(folded_dir), "--json"])
    data = json.loads(r.stdout)
    assert data["learned"]["folded"] == "pca" and data["projection"]["fold"]["file"] == PCA_FOLD_FILE
    ctx = doctor._Context(config=SimpleNamespace(index=SimpleNamespace(bundle=str(folded_dir))))
    check = doctor.check_bundle(ctx)
    assert check.status in ("OK", "WARN") and "projection learned from 1800 views (folded into the PCA)" \
        in check.detail


@pytest.mark.slow
def test_damage_to_the_fold_file_is_caught_like_any_other(folded_dir, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(folded_dir, copy)
    path = copy / PCA_FOLD_FILE
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=PCA_FOLD_FILE):
        Bundle.open(copy)
    path.unlink()
    with pytest.raises(BundleError, match=f"{PCA_FOLD_FILE}: missing"):
        Bundle.open(copy)
    m = json.loads((copy / MANIFEST).read_text())
    del m["files"][PCA_FOLD_FILE]
    shutil.copy(folded_dir / PCA_FOLD_FILE, path)
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not listed in the manifest"):
        Bundle.open(copy)


@pytest.mark.slow
def test_taught_items_are_found_on_a_folded_bundle_and_compaction_still_refuses(tmp_path, data, learned):
    out = tmp_path / "b"
    write_bundle(out, data[:2500], _items(2500), model=MODEL,
                 options=BuildOptions.parse(backend="ivfpq", dims=64), learned=learned,
                 learned_info={"type": "whitening", "items": 600})
    rng = np.random.default_rng(6)
    lamp = _shots(data, np.full(3, 2900), rng, spread=0.05)
    assert_taught_lamp_kept_beside_an_ivfpq_bundle(out, lamp, data, 2500, again=1)


@pytest.mark.slow
def test_relearning_a_folded_bundle_is_refused_in_one_line(folded_dir):
    from pi_search.live.relearn import relearn

    before = read_manifest(folded_dir).files
    with pytest.raises(BundleError, match="relearn works on bundles with a full store: rebuild it") as err:
        relearn(folded_dir, None, progress=False)
    assert "\n" not in str(err.value) and read_manifest(folded_dir).files == before

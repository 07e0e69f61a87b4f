"""A backend defined in one module outside the package (tests/flat_backend.py) registers itself, builds
through the normal write path, opens, searches, is checked like any other and shows up in index build."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pi_search.bundle import BuildOptions, Bundle, Item, backend_names, needs, read_manifest, write_bundle
from pi_search.bundle.backends import BACKENDS
from pi_search.errors import BundleError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def flat():
    """The "flat" backend, registered for one test and gone again after it."""
    assert "flat" not in BACKENDS
    module = importlib.import_module("flat_backend")
    yield module
    BACKENDS.pop("flat", None)
    sys.modules.pop("flat_backend", None)


def _vectors(n: int = 800, dim: int = 48, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write(out: Path, x: np.ndarray, **opts) -> Path:
    items = [Item(f"id{i}", f"item {i}") for i in range(len(x))]
    write_bundle(out, x, items, model={"name": "synthetic", "sha256": "0" * 64, "dim": x.shape[1]},
                 options=BuildOptions.parse(**opts))
    return out


def test_a_registered_backend_builds_opens_and_finds_the_exact_neighbours(tmp_path, flat):
    assert backend_names() == ["annoy", "usearch", "ivfpq", "flat"]
    x = _vectors()
    out = _write(tmp_path / "b", x, backend="flat", bits=16, search="ann", dims=None, candidates=30,
                 store_dtype="float32")
    m = read_manifest(out)
    assert m.index == {"backend": "flat", "file": flat.FILE, "metric": "dot of unit vectors", "dim": 48,
                       "bits": 16}
    assert m.files[flat.FILE]["bytes"] == (out / flat.FILE).stat().st_size   # fingerprinted like any file
    assert np.load(out / flat.FILE, mmap_mode="r").dtype == np.float16
    rng = np.random.default_rng(9)
    noise = 0.1 * rng.standard_normal((20, 48)).astype(np.float32)
    queries = x[rng.choice(len(x), 20, replace=False)] + noise
    with Bundle.open(out) as b:
        assert out / flat.FILE in b.mapped_files()
        for q in queries:
            q = q / np.linalg.norm(q)
            idx, scores = b.search_indices(q, 10)
            truth = np.argsort(-(x @ q))[:10]
            assert list(idx) == list(truth)
            np.testing.assert_allclose(scores, (x @ q)[truth], atol=1e-5)
    # the memory figures take the backend's own description: its index file is mapped, not read whole
    mem = needs(out, m.to_dict())
    assert mem["layout"] == "flat over full, re-ranked on the float32 full vectors"
    assert flat.FILE in mem["mapped_files"] and mem["in_ram_bytes"] == 0


def test_its_options_are_its_own_and_come_back_from_the_manifest(tmp_path, flat):
    opts = BuildOptions.parse(backend="flat", bits=16, dims=8)
    assert opts.backend_options == flat.FlatOptions(bits=16) and opts.dims == 8
    with pytest.raises(BundleError, match="the flat backend has no option n_trees; its options: bits"):
        BuildOptions.parse(backend="flat", n_trees=5)
    with pytest.raises(BundleError, match="no option bits; its options: n_trees, search_k"):
        BuildOptions.parse(backend="annoy", bits=16)
    with pytest.raises(BundleError, match="not the annoy backend's"):
        BuildOptions(backend="annoy", backend_options=flat.FlatOptions()).resolved(100, 48)
    out = _write(tmp_path / "b", _vectors(300), backend="flat", bits=16, search="ann", dims=24,
                 candidates=40)
    again = BuildOptions.from_manifest(read_manifest(out))
    assert again == BuildOptions(dims=24, whiten=True, search="ann", candidates=40, store_dtype="float16",
                                 backend="flat", backend_options=flat.FlatOptions(bits=16))


def test_a_damaged_index_file_of_the_new_backend_is_refused_like_any_other(tmp_path, flat):
    out = _write(tmp_path / "b", _vectors(200), backend="flat", search="ann", dims=None)
    raw = bytearray((out / flat.FILE).read_bytes())
    raw[-9] ^= 0xFF
    (out / flat.FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"index\.flat\.npy"):
        Bundle.open(out)


def test_once_unregistered_its_bundles_say_what_to_do(tmp_path, flat):
    out = _write(tmp_path / "b", _vectors(200), backend="flat", search="ann", dims=None)
    BACKENDS.pop("flat")
    with pytest.raises(BundleError, match="unknown index backend 'flat': choose one of annoy, usearch, "
                                          "ivfpq, or upgrade pi-search to read this bundle"):
        Bundle.open(out)
    assert needs(out, read_manifest(out).to_dict())["layout"].startswith("flat over full")


@pytest.mark.slow
def test_index_build_offers_it_and_the_built_bundle_answers_a_query(tmp_path, catalog_dir):
    """The command line's --backend choices and flags come from the registry: a process that imports the
    module first builds a bundle with it from a real catalog and finds an item by its photo."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    cli = [sys.executable, "-c", "import flat_backend; from pi_search.cli import main; main()"]
    helped = subprocess.run([*cli, "index", "build", "--help"], capture_output=True, text=True, env=env,
                            check=True).stdout
    assert "[annoy|usearch|ivfpq|flat]" in helped and "--flat-bits INTEGER RANGE" in helped
    out = tmp_path / "bundle"
    built = subprocess.run([*cli, "index", "build", str(catalog_dir), "--out", str(out), "--backend", "flat",
                            "--flat-bits", "16", "--search", "ann", "--dims", "none", "--no-learn", "--json"],
                           capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["items"] == 16
    assert read_manifest(out).index["bits"] == 16
    asked = subprocess.run([*cli, "query", "--bundle", str(out), "--json", "--k", "3",
                            str(catalog_dir / "images" / "apple.jpg")], capture_output=True, text=True,
                           env=env)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["results"][0]["matches"][0]["id"] == "apple"

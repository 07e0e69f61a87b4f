"""A build killed (SIGKILL) at each step of putting the new bundle in place leaves a complete, servable bundle
at the path; two builds of one bundle, or two demos on one cache, wait for each other instead of failing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CATALOG_PHOTOS, write_catalog

from pi_search.bundle.files import recover
from pi_search.bundle.reader import Bundle

NEW = CATALOG_PHOTOS[:4]
pytestmark = pytest.mark.slow

KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    import pi_search.bundle.files as files
    import pi_search.bundle.write as write
    from pi_search.embed.build import build_bundle
    from pi_search.model.extractor import Extractor

    catalog, out, where = sys.argv[1:4]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_fsync, real_exchange, real_rename = write.fsync_tree, files._exchange, os.rename

    def fsync_tree(path):                 # the new bundle is complete and synced beside the old one
        real_fsync(path)
        if where == "written":
            die()

    def exchange(a, b):
        if where == "two-renames":        # a file system without renameat2
            return False
        done = real_exchange(a, b)
        if where == "exchanged":          # swapped, the old one not yet deleted
            die()
        return done

    def rename(a, b):
        real_rename(a, b)
        if where == "two-renames" and ".old-" in str(b):   # between the two renames
            die()

    real_swap = write.swap_into_place

    def swap(new, out):
        real_swap(new, out)
        if where == "swapped":            # the new bundle in place, nothing cleaned up yet
            die()

    write.fsync_tree, files._exchange, os.rename, write.swap_into_place = fsync_tree, exchange, rename, swap
    build_bundle(catalog, out, Extractor(), progress=False)
    print("finished")
""")


@pytest.fixture(scope="module")
def new_catalog(tmp_path_factory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("new"), NEW)


def _items(path: Path) -> int:
    with Bundle.open(path, deep=True) as b:
        return len(b)


@pytest.mark.parametrize("where, expect", [("written", len(CATALOG_PHOTOS)), ("exchanged", len(NEW)),
                                           ("two-renames", len(NEW))])
def test_a_build_killed_at_each_step_leaves_a_servable_bundle(tmp_path, bundle_dir, new_catalog, where,
                                                              expect):
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(bundle_dir, out)
    p = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(new_catalog), str(out), where],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9 and "finished" not in p.stdout, p.stderr
    if where != "two-renames":
        assert _items(out) == expect          # at the path, right after the kill: old or new, complete
    else:
        assert not out.exists()               # the one gap of two renames ...
    recover(out)                           # ... closed by what any next start or build does first
    assert _items(out) == expect
    # no leftovers, no lock file; the embeddings stay in bundle.partial for a resumed build
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bundle", "bundle.partial"]


def test_two_builds_of_one_bundle_wait_for_each_other(tmp_path, catalog_dir, new_catalog):
    out = tmp_path / "bundle"
    exe = Path(sys.executable).with_name("pi-search")
    procs = [subprocess.Popen([str(exe), "index", "build", str(c), "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in (catalog_dir, new_catalog)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert "Traceback" not in "".join(e for _, e in results)
    assert any("waiting for another build" in e for _, e in results), results
    assert _items(out) in (len(CATALOG_PHOTOS), len(NEW))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bundle"]


def test_two_demos_on_one_cache_share_one_build(tmp_path):
    script = ("import sys; from pi_search.ops.demo import demo_bundle; "
              "from pi_search.model.extractor import Extractor;"
              "print(demo_bundle(Extractor(), sys.argv[1], progress=False))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert {o.strip() for o, _ in results} == {str(tmp_path / "demo-bundle")}
    assert "Traceback" not in "".join(e for _, e in results)
    assert any("waiting for another pi-search demo build" in e for _, e in results), results
    assert _items(tmp_path / "demo-bundle") == 150


def test_a_rerun_after_a_build_killed_once_swapped_does_no_work_again(tmp_path, new_catalog, extractor):
    from pi_search.embed.build import build_bundle

    out = tmp_path / "bundle"
    p = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(new_catalog), str(out), "swapped"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9 and "finished" not in p.stdout, p.stderr
    assert _items(out) == len(NEW)
    built = (out / "manifest.json").read_bytes()
    report = build_bundle(new_catalog, out, extractor, progress=False)
    assert report.embedded == 0 and report.items == len(NEW)
    assert (out / "manifest.json").read_bytes() == built                    # the finished bundle, kept
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bundle"]         # its checkpoint is gone
    again = build_bundle(new_catalog, out, extractor, progress=False)       # and a plain rerun: the same
    assert again.embedded == 0 and (out / "manifest.json").read_bytes() == built
    csv = new_catalog / "catalog.csv"                                        # a changed row is built again
    text = csv.read_text()
    try:
        csv.write_text(text.replace(NEW[0][1], NEW[0][1] + " (new)"))
        changed = build_bundle(new_catalog, out, extractor, progress=False)
        assert changed.embedded == len(NEW) and (out / "manifest.json").read_bytes() != built
        with Bundle.open(out) as b:
            assert b.item(NEW[0][0])["title"] == NEW[0][1] + " (new)"
    finally:
        csv.write_text(text)

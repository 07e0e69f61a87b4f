"""A bundle rebuilt while serving: picked up atomically, queries in flight finish, failures keep the old."""

from __future__ import annotations

import io
import shutil
import threading

import numpy as np
import pytest
from conftest import CATALOG_PHOTOS, camera_view, load_photo, write_catalog
from fakes import kiosk, wait_until

from pi_search import images
from pi_search.config import load_config
from pi_search.embed.build import build_bundle
from pi_search.live.catalog import LiveCatalog
from pi_search.model.framing import embed_query_image
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app

SMALL = CATALOG_PHOTOS[:4]  # astronaut, cat, coffee, rocket
SMALL_IDS = {p[0] for p in SMALL}
ALL_IDS = {p[0] for p in CATALOG_PHOTOS}


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    return write_catalog(tmp_path_factory.mktemp("small-catalog"), SMALL)


@pytest.fixture(scope="module")
def queries(extractor):
    """Embeddings of camera-like shots of an item in both catalogs and of one only in the big one."""
    shots = [camera_view(load_photo(s)) for s in ("skimage:coffee", "skimage:chelsea")]
    shots.append(camera_view(images.read("/usr/share/doc/opencv-doc/examples/data/orange.jpg")))
    return [embed_query_image(extractor, s) for s in shots], shots


class Hammer:
    """Threads that query the catalog without pause and record every result and every error."""

    def __init__(self, catalog, vectors, client=None, shot=None, threads: int = 3):
        self.catalog, self.vectors, self.client, self.shot = catalog, vectors, client, shot
        self.stop = threading.Event()
        self.results: list[set] = []
        self.by_thread: dict[int, list[set]] = {i: [] for i in range(threads)}
        self.errors: list[BaseException] = []
        self.http: list[int] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._query, args=(i,)) for i in range(threads)]
        if client is not None:
            self.threads.append(threading.Thread(target=self._upload))

    def _query(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                ids = {m.id for m in self.catalog.search(self.vectors[(i + n) % len(self.vectors)], 5)}
                with self.lock:
                    self.results.append(ids)
                    self.by_thread[i].append(ids)
            except BaseException as exc:  # recorded: the test fails on any
                self.errors.append(exc)
            n += 1

    def _upload(self) -> None:
        jpeg = images.encode_jpeg(self.shot)
        while not self.stop.is_set():
            r = self.client.post("/api/search", data={"image": (io.BytesIO(jpeg), "q.jpg")},
                                 content_type="multipart/form-data")
            self.http.append(r.status_code)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def saw_all(self, ids: set) -> bool:
        """True once every query thread has had at least one answer within ``ids``."""
        with self.lock:
            return all(any(r <= ids for r in seen) for seen in self.by_thread.values())

    def count(self) -> int:
        with self.lock:
            return len(self.results)


@pytest.fixture
def live(tmp_path, bundle_dir, extractor):
    """A copy of the session bundle opened as the daemon opens it, a Service and a test client."""
    def _make(refresh_s: float = 0.2):
        d = tmp_path / "live" / "bundle"
        shutil.copytree(bundle_dir, d)
        cat = LiveCatalog.open(d, extractor=extractor, refresh_s=refresh_s).watch()
        config = load_config(None, {})
        svc = Worker(lambda: None, extractor, cat, config)
        made.append(cat)
        return d, cat, svc, create_app(kiosk(svc), config).test_client()

    made = []
    yield _make
    for c in made:
        c.close()


@pytest.mark.slow   # builds a real bundle: over 1.5 s
@pytest.mark.parametrize("how", ["manifest", "api"])
def test_rebuilt_bundle_is_picked_up_while_queries_run(live, small_catalog, extractor, queries, how):
    vectors, shots = queries
    d, cat, svc, client = live(refresh_s=0.2 if how == "manifest" else 1e9)
    assert len(cat) == len(CATALOG_PHOTOS)
    with Hammer(cat, vectors, client, shots[0]) as h:
        assert wait_until(lambda: h.count() > 50)
        before = h.count()
        build_bundle(small_catalog, d, extractor, progress=False)   # written beside, renamed into place
        if how == "api":
            r = client.post("/api/reload")
            assert r.status_code == 200 and r.get_json()["items"] == len(SMALL)
        assert wait_until(lambda: len(cat) == len(SMALL))
        swapped = h.count()
        assert wait_until(lambda: h.count() > swapped + 50)
        # Every query thread gets answers from the new bundle (a starved thread may lag on a busy machine).
        assert wait_until(lambda: h.saw_all(SMALL_IDS))
    assert h.errors == []
    assert set(h.http) == {200}
    assert all(ids <= ALL_IDS for ids in h.results)
    assert any(ids - SMALL_IDS for ids in h.results[:before])  # the old bundle served first
    for seen in h.by_thread.values():  # atomic: once a thread got the new bundle, it never sees the old
        # (top 5 of the old bundle never fits in the 4 new items)
        first_new = next(n for n, ids in enumerate(seen) if ids <= SMALL_IDS)
        assert all(ids <= SMALL_IDS for ids in seen[first_new:])
        assert seen[-1] <= SMALL_IDS
    assert cat.search(vectors[0], 1)[0].id == "coffee"


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_a_failed_build_leaves_the_old_bundle_serving(live, small_catalog, extractor, queries, monkeypatch):
    import pi_search.bundle.write as index

    vectors, _ = queries
    d, cat, svc, client = live()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index, "write_items", full_disk)
    with Hammer(cat, vectors) as h:
        assert wait_until(lambda: h.count() > 20)
        with pytest.raises(OSError, match="No space left"):
            build_bundle(small_catalog, d, extractor, progress=False)
        r = client.post("/api/reload")
        assert r.status_code == 200 and r.get_json()["items"] == len(CATALOG_PHOTOS)
        n = h.count()
        assert wait_until(lambda: h.count() > n + 20)
    assert h.errors == [] and len(cat) == len(CATALOG_PHOTOS)
    assert any(ids - SMALL_IDS for ids in h.results[-10:])
    leftovers = [p.name for p in d.parent.iterdir() if p.name not in ("bundle", "bundle.changes.sqlite")]
    assert [n for n in leftovers if "tmp" in n] == []


def test_a_half_copied_bundle_is_refused_and_the_old_one_serves(live, queries, caplog):
    vectors, _ = queries
    d, cat, svc, client = live()
    with Hammer(cat, vectors) as h:
        assert wait_until(lambda: h.count() > 20)
        (d / "manifest.json.new").write_text('{"format_version": 1, "items": 3, "mod')  # cut short
        (d / "manifest.json.new").replace(d / "manifest.json")  # the watcher sees a new manifest
        r = client.post("/api/reload")
        assert r.status_code == 409
        assert "kept the bundle in use" in r.get_json()["error"] and "manifest.json" in r.get_json()["error"]
        n = h.count()
        assert wait_until(lambda: h.count() > n + 50)
    assert h.errors == [] and len(cat) == len(CATALOG_PHOTOS)
    assert cat.search(vectors[2], 1)[0].id == "orange"


def test_reload_from_another_site_or_without_token_is_refused(live, tmp_path):
    d, cat, svc, client = live()
    r = client.post("/api/reload", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    config = load_config(None, {"server.host": "0.0.0.0", "server.token": "5a0f9c3e7b2d8e14a6c9"})
    open_client = create_app(kiosk(svc), config).test_client()
    assert open_client.post("/api/reload").status_code == 401
    r = open_client.post("/api/reload", headers={"Authorization": "Bearer " + "5a0f9c3e7b2d8e14a6c9"})
    assert r.status_code == 200 and r.get_json()["items"] == len(CATALOG_PHOTOS)


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_reload_swaps_in_the_rebuilt_bundle(tmp_path, bundle_dir, small_catalog, extractor, queries):
    vectors, _ = queries
    d = tmp_path / "bundle"
    shutil.copytree(bundle_dir, d)
    cat = LiveCatalog.open(d, extractor=extractor)   # no watcher: only reload_bundle swaps
    old = cat.bundle
    svc = kiosk(Worker(lambda: None, extractor, cat, load_config(None, {})))
    assert svc.catalog.search(vectors[2], 1)[0].id == "orange"
    build_bundle(small_catalog, d, extractor, progress=False)
    assert cat.bundle is old and svc.catalog.search(vectors[2], 1)[0].id == "orange"  # no swap by a search
    info = svc.reload_bundle()
    assert info["items"] == len(SMALL) and cat.bundle is not old and len(cat) == len(SMALL)
    assert svc.catalog.search(vectors[0], 1)[0].id == "coffee"
    cat.close()


def _bundle_without(tmp_path, bundle_dir, drop: set) -> tuple:
    """A bundle of ``bundle_dir``'s items but ``drop`` (the same embeddings), written beside the live one."""
    from pi_search.bundle.items import Item
    from pi_search.bundle.reader import Bundle
    from pi_search.bundle.write import write_bundle

    with Bundle.open(bundle_dir) as b:
        rows = b.items.rows(list(range(len(b))))
        keep = [i for i in range(len(b)) if rows[i][1] not in drop]
        vectors = np.asarray(b.store.rows[keep], np.float32)
        items = [Item(rows[i][1], rows[i][2], rows[i][3]) for i in keep]
        m, learned = b.manifest.model, b.learned   # stored rows are in the learned space: kept there
    out = tmp_path / "state" / "staged"
    write_bundle(out, vectors, items, model={"name": m.name, "sha256": m.sha256, "dim": m.dim},
                 learned=learned, learned_applied=learned is not None)
    return out, {it.id for it in items}


@pytest.mark.parametrize("look", ["frames", "settled"])
def test_a_published_result_never_mixes_two_bundles(tmp_path, bundle_dir, extractor, monkeypatch, look):
    from fakes import ListSource

    from pi_search.bundle.files import _exchange
    from pi_search.model import settle

    live = tmp_path / "state" / "bundle"
    shutil.copytree(bundle_dir, live)
    cat = LiveCatalog.open(live, extractor=extractor, readonly=True)
    svc = Worker(None, extractor, cat, load_config(None, {"gate.refresh_s": 0.0}), source_name="test")
    svc.settle_enabled = look == "settled"
    monkeypatch.setattr(settle, "SETTLE_SLICE_S", 0.0)   # one window per still frame: a look spans frames
    src = ListSource([camera_view(load_photo("skimage:coffee"))], loop=True, noise=1.0)
    src.start()
    try:
        first = svc.process(src.read())
        assert first.matches[0].id == "coffee" and first.matches[0].generation == cat.generation
        if look == "settled":
            for _ in range(3):   # a still scene's barcodes are read first, then one window a frame
                assert svc.process(src.read()) is None
                if svc._settle_job and svc._settle_job["done"]:
                    break
            assert svc._settle_job["done"]   # a window searched on the old bundle
        staged, new_ids = _bundle_without(tmp_path, bundle_dir, {"coffee"})
        assert _exchange(staged, live)      # swapped in whole, as index install and rsync do
        cat.reload()
        assert len(cat) == len(new_ids)
        published = []
        if look == "frames":
            for _ in range(4):
                svc.gate.reset()
                published.append(svc.process(src.read()))
        else:
            for _ in range(60):
                assert svc.process(src.read()) is None
                if svc.latest() is not first:
                    break
            published.append(svc.latest())
            assert published[-1].settle_ms is not None
        for r in published:
            ids = [m.id for m in r.matches]
            assert ids and set(ids) <= new_ids, ids           # only the served bundle's items
            assert {m.generation for m in r.matches} == {cat.generation}
    finally:
        src.stop()
        cat.close()

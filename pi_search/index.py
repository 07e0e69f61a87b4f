"""The bundle: writes, validates, memory-maps and queries an Annoy index with its item metadata."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import BundleError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ANNOY_FILE = "index.ann"
USEARCH_FILE = "index.usearch"
ITEMS_FILE = "items.sqlite"
STORE_FILE = "vectors.npy"
STORE_SCALE_FILE = "vectors_scale.npy"
PCA_MEAN_FILE = "pca_mean.npy"
PCA_COMPONENTS_FILE = "pca_components.npy"

# Defaults chosen from bench/bench_scale.py (see README, "Scale").
EXACT_MAX_ITEMS = 5_000      # below this, exact search over the stored vectors is as fast as Annoy
DEFAULT_DIMS = 256           # PCA dimensions of the Annoy index for larger catalogs
DEFAULT_WHITEN = True        # whitened PCA finds better candidates (README, "Scale")
DEFAULT_TREES = 50
DEFAULT_CANDIDATES = 100     # Annoy candidates re-ranked on the full vectors
DEFAULT_SEARCH_K = 10_000    # Annoy nodes inspected per query
STORE_DTYPES = ("float32", "float16", "int8")
BACKENDS = ("annoy", "usearch")
_EXACT_CHUNK = 8192


@dataclass(frozen=True)
class Match:
    """One search result. ``score`` is the cosine similarity of the full embeddings, in [-1, 1]."""

    id: str
    title: str
    price: str | None
    score: float
    index: int = field(default=-1, compare=False)

    def as_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "price": self.price, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Item:
    """Catalog metadata of one indexed item; ``thumbnail`` is JPEG bytes or None."""

    id: str
    title: str
    price: str | None = None
    extra: dict = field(default_factory=dict)
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class Projection:
    """PCA fitted on catalog embeddings: ``y = normalise((x - mean) @ components.T)``.

    Tensor contract: x float32 [..., dim] -> y float32 [..., dims], L2-normalised; whitening (division by
    the square root of each component's variance) is folded into ``components`` when ``whiten``.
    """

    mean: np.ndarray         # float32 [dim]
    components: np.ndarray   # float32 [dims, dim]
    whiten: bool
    explained: float         # fraction of the variance kept

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T
        n = np.linalg.norm(y, axis=-1, keepdims=True)
        return (y / np.where(n > 0, n, 1.0)).astype(np.float32)


def fit_pca(vectors: np.ndarray, dims: int, *, whiten: bool = False, chunk: int = 65_536) -> Projection:
    """Fit PCA on float32 [n, dim] vectors (a memory map is read in chunks) keeping ``dims`` components."""
    n, dim = vectors.shape
    if not 0 < dims < dim:
        raise BundleError(f"--dims {dims}: must be between 1 and {dim - 1} (the embedding has {dim} dims)")
    total = np.zeros(dim, np.float64)
    for i in range(0, n, chunk):
        total += vectors[i:i + chunk].astype(np.float64).sum(axis=0)
    mean = total / max(n, 1)
    cov = np.zeros((dim, dim), np.float64)
    for i in range(0, n, chunk):
        c = vectors[i:i + chunk].astype(np.float64) - mean
        cov += c.T @ c
    cov /= max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:dims]
    evals, comps = np.clip(evals[order], 0.0, None), evecs[:, order].T
    explained = float(evals.sum() / max(np.clip(np.linalg.eigvalsh(cov), 0, None).sum(), 1e-12))
    if whiten:
        comps = comps / np.sqrt(np.maximum(evals, 1e-4 * max(evals[0], 1e-12)))[:, None]
    return Projection(mean.astype(np.float32), comps.astype(np.float32), whiten, explained)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


SAMPLE_BYTES = 64 * 1024   # a file's fingerprint hashes its size, first and last 64 KiB


def fingerprint(path: Path) -> dict:
    """``{"bytes", "sample_sha256"}`` of a bundle file: cheap (two reads), and different for files that do not
    belong to the manifest that lists them (a half-copied or mixed bundle)."""
    import hashlib

    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return {"bytes": size, "sample_sha256": h.hexdigest()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _write_store(tmp: Path, vectors: np.ndarray, dtype: str, chunk: int = 65_536) -> None:
    """Full-dimension vectors for exact search and re-ranking, opened later with ``np.load(mmap_mode="r")``.

    float32/float16 rows are the L2-normalised vectors; int8 rows are ``round(v * 127 / max|v|)`` with the
    per-row factor ``max|v| / 127`` in ``vectors_scale.npy`` (float32 [n]).
    """
    n, dim = vectors.shape
    out = np.lib.format.open_memmap(tmp / STORE_FILE, mode="w+", dtype=dtype, shape=(n, dim))
    scale = np.ones(n, np.float32) if dtype == "int8" else None
    for i in range(0, n, chunk):
        v = _normalise(vectors[i:i + chunk])
        if dtype == "int8":
            m = np.abs(v).max(axis=1)
            m = np.where(m > 0, m, 1.0)
            out[i:i + chunk] = np.round(v * (127.0 / m[:, None])).astype(np.int8)
            scale[i:i + chunk] = m / 127.0
        else:
            out[i:i + chunk] = v.astype(dtype)
    out.flush()
    del out
    if scale is not None:
        np.save(tmp / STORE_SCALE_FILE, scale)


def _write_items(path: Path, items: Iterable[Item]) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE items (idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                    "title TEXT NOT NULL, price TEXT, extra TEXT NOT NULL, thumb BLOB)")
        con.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
            ((i, it.id, it.title, it.price, json.dumps(it.extra, ensure_ascii=False), it.thumbnail)
             for i, it in enumerate(items)))
        con.commit()
    finally:
        con.close()


def _build_annoy(path: Path, vectors: np.ndarray, n_trees: int, chunk: int = 65_536) -> None:
    from annoy import AnnoyIndex

    dim = vectors.shape[1]
    ann = AnnoyIndex(dim, "angular")
    ann.set_seed(1)
    for i in range(0, vectors.shape[0], chunk):
        block = np.ascontiguousarray(vectors[i:i + chunk], dtype=np.float32)
        for j, v in enumerate(block):
            ann.add_item(i + j, v)
    ann.build(n_trees, n_jobs=-1)
    ann.save(str(path))
    ann.unload()


def _build_usearch(path: Path, vectors: np.ndarray, dtype: str = "f16") -> None:
    try:
        from usearch.index import Index
    except ImportError as exc:
        raise BundleError("--backend usearch needs the usearch package: "
                          "pip install 'pi-search[usearch]' (or use --backend annoy)") from exc

    idx = Index(ndim=vectors.shape[1], metric="cos", dtype=dtype)
    chunk = 65_536
    for i in range(0, vectors.shape[0], chunk):
        block = np.ascontiguousarray(vectors[i:i + chunk], dtype=np.float32)
        idx.add(np.arange(i, i + len(block), dtype=np.uint64), block, threads=0)
    idx.save(str(path))


@dataclass
class BuildOptions:
    """How the searchable part of a bundle is made (see README, "Scale", for how the defaults were chosen)."""

    dims: int | None = -1              # -1: automatic (none below EXACT_MAX_ITEMS, DEFAULT_DIMS above)
    whiten: bool = DEFAULT_WHITEN
    n_trees: int = DEFAULT_TREES
    search: str = "auto"              # "auto", "exact" or "ann"
    candidates: int = DEFAULT_CANDIDATES
    search_k: int = DEFAULT_SEARCH_K
    store_dtype: str = "auto"         # "auto" (float32 for exact search, float16 for re-ranking)
    backend: str = "annoy"

    def resolved(self, n: int, dim: int) -> BuildOptions:
        search = self.search
        if search == "auto":
            search = "exact" if n < EXACT_MAX_ITEMS else "ann"
        if search not in ("exact", "ann"):
            raise BundleError(f"search mode {search!r}: choose auto, exact or ann")
        dims = self.dims
        if dims == -1:
            dims = DEFAULT_DIMS if search == "ann" and dim > DEFAULT_DIMS else None
        if dims is not None and dims >= dim:
            dims = None
        if dims is not None and n < 2:
            dims = None
        store = self.store_dtype
        if store == "auto":
            store = "float32" if search == "exact" else "float16"
        if store not in STORE_DTYPES:
            raise BundleError(f"store dtype {store!r}: choose one of {', '.join(STORE_DTYPES)}")
        if self.backend not in BACKENDS:
            raise BundleError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        return BuildOptions(dims, self.whiten, self.n_trees, search, self.candidates, self.search_k, store,
                            self.backend)


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace something that is not a bundle (a non-empty directory without a manifest, a file)."""
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BundleError(f"{out_dir} exists and is not a bundle; choose another --out (nothing was "
                          "replaced)")


def write_bundle(out_dir: str | Path, vectors: np.ndarray, items: Sequence[Item], *, model: dict,
                 options: BuildOptions | None = None, extra_manifest: dict | None = None,
                 locked: bool = False) -> dict:
    """Write a bundle for ``items`` (row i of ``vectors`` is item i) atomically into ``out_dir``.

    ``vectors``: float32 [n, dim] embeddings (normalised again). ``model``: ``name``, ``sha256``, ``dim``.
    Everything is written into a temporary directory beside ``out_dir``, synced, and renamed into place; an
    existing bundle at ``out_dir`` is swapped out only once the new one is complete (``swap_into_place``).
    Holds ``bundle_lock`` unless the caller does (``locked``). Returns the manifest.
    """
    out_dir = Path(out_dir)
    n = len(items)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise BundleError(f"{n} items but embeddings of shape {tuple(vectors.shape)}; they must match "
                          "row for row")
    if n == 0:
        raise BundleError(f"no items to index for {out_dir}: every catalog row was skipped")
    dim = int(vectors.shape[1])
    if int(model["dim"]) != dim:
        raise BundleError(f"embeddings have {dim} dims but the model {model['name']} gives {model['dim']}")
    check_out_dir(out_dir)
    opts = (options or BuildOptions()).resolved(n, dim)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = contextlib.nullcontext() if locked else bundle_lock(out_dir)
    with lock:
        recover(out_dir, locked=True)
        return _write_bundle(out_dir, vectors, items, n, dim, model, opts, extra_manifest)


def _write_bundle(out_dir: Path, vectors, items, n: int, dim: int, model: dict, opts: BuildOptions,
                  extra_manifest: dict | None) -> dict:
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        projection = None
        if opts.dims:
            projection = fit_pca(vectors, opts.dims, whiten=opts.whiten)
            np.save(tmp / PCA_MEAN_FILE, projection.mean)
            np.save(tmp / PCA_COMPONENTS_FILE, projection.components)
        _write_store(tmp, vectors, opts.store_dtype)
        index_dim = projection.dims if projection else dim

        def indexed():
            store = np.load(tmp / STORE_FILE, mmap_mode="r")
            if projection is None:
                return store if opts.store_dtype != "int8" else _normalise(vectors)
            return _ProjectedView(vectors, projection)

        if opts.backend == "annoy":
            _build_annoy(tmp / ANNOY_FILE, indexed(), opts.n_trees)
            index_entry = {"backend": "annoy", "file": ANNOY_FILE, "metric": "angular", "dim": index_dim,
                           "n_trees": opts.n_trees}
        else:
            _build_usearch(tmp / USEARCH_FILE, indexed())
            index_entry = {"backend": "usearch", "file": USEARCH_FILE, "metric": "cos", "dim": index_dim,
                           "dtype": "f16"}
        _write_items(tmp / ITEMS_FILE, items)
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "items": n,
            "model": {"name": model["name"], "sha256": model["sha256"], "dim": dim},
            "metric": "cosine",
            "index": index_entry,
            "n_trees": opts.n_trees if opts.backend == "annoy" else None,
            "projection": None if projection is None else {
                "type": "pca", "dims": projection.dims, "whiten": projection.whiten,
                "explained_variance": round(projection.explained, 4),
                "mean": PCA_MEAN_FILE, "components": PCA_COMPONENTS_FILE},
            "store": {"file": STORE_FILE, "dtype": opts.store_dtype,
                      "scale": STORE_SCALE_FILE if opts.store_dtype == "int8" else None},
            "search": {"mode": opts.search, "candidates": opts.candidates, "search_k": opts.search_k},
            "items_file": ITEMS_FILE,
            "build_seconds": None,
        }
        manifest.update(extra_manifest or {})
        manifest["files"] = {p.name: fingerprint(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest["build_seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(tmp)
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle %s: %d items, %s search, index %s %d-d, built in %.1f s", out_dir, n, opts.search,
             index_entry["backend"], index_dim, manifest["build_seconds"])
    return manifest


class _ProjectedView:
    """A lazily projected view of [n, dim] vectors: slicing yields float32 [rows, dims]."""

    def __init__(self, vectors: np.ndarray, projection: Projection):
        self._v, self._p = vectors, projection
        self.shape = (vectors.shape[0], projection.dims)

    def __getitem__(self, sl):
        return self._p.apply(_normalise(self._v[sl]))


LEFTOVER_PATTERNS = (".{name}.tmp-*", ".{name}.old-*", ".{name}.compact-*", "..{name}.compact-*.tmp-*",
                     ".{name}.fold-*.npy", ".{name}.install-*")


def lock_path(out_dir: Path) -> Path:
    """The lock file that builds, installs and compactions of ``out_dir`` hold: ``.NAME.lock`` beside it."""
    return out_dir.parent / f".{out_dir.name}.lock"


@contextlib.contextmanager
def bundle_lock(out_dir: str | Path, *, wait: bool = True, what: str = "build") -> Iterator[None]:
    """Hold the lock of the bundle path ``out_dir`` (one build, install or compaction at a time).

    ``wait``: block until the other one ends (saying so once); otherwise CatalogError at once. The lock file
    (``.NAME.lock`` beside the bundle) is removed again on release, so it only exists while held.
    """
    from .errors import CatalogError

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(out_dir)
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _flock(fd, blocking=False):
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "build"
                if not wait:
                    raise CatalogError(f"{out_dir}: another {holder} is running; try again later")
                if not said:
                    log.warning("%s: waiting for another %s to finish", out_dir, holder)
                    said = True
                _flock(fd, blocking=True)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:   # not a file its last holder removed
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _flock(fd: int, *, blocking: bool) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if not there."""
    import ctypes
    import ctypes.util
    import errno

    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def swap_into_place(new: Path, out_dir: Path) -> None:
    """Put the complete bundle directory ``new`` at ``out_dir`` in one atomic step, then delete the old one.

    Where the file system can exchange two names (Linux renameat2), a reader or a kill at any instant finds
    either the old or the new bundle at ``out_dir``. Elsewhere it takes two renames, and a crash between them
    is finished by ``recover`` (the complete new bundle is put in place). Call it holding ``bundle_lock``.
    """
    new, out_dir = Path(new), Path(out_dir)
    if not out_dir.exists():
        os.rename(new, out_dir)
        _fsync_dir(out_dir.parent)
        return
    if _exchange(new, out_dir):
        _fsync_dir(out_dir.parent)
        shutil.rmtree(new, ignore_errors=True)   # ``new`` now names the old bundle
        return
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, old)
    os.rename(new, out_dir)
    _fsync_dir(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def _leftovers(out_dir: Path) -> list[Path]:
    parent, name = out_dir.parent, out_dir.name
    return sorted({p for pat in LEFTOVER_PATTERNS for p in parent.glob(pat.format(name=name))},
                  key=lambda p: p.stat().st_mtime if p.exists() else 0.0)


def recover(out_dir: str | Path, *, locked: bool = False) -> None:
    """Clean up after a build, install or compaction that was killed; safe and cheap to call at any time.

    If ``out_dir`` is missing but a complete bundle was left beside it, that one is put in place (the newest).
    Leftover temporary and old directories are deleted. Does nothing while another process holds the lock.
    ``locked``: the caller holds ``bundle_lock`` already.
    """
    from .errors import CatalogError

    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir() or (out_dir.exists() and not _leftovers(out_dir)
                                       and not lock_path(out_dir).exists()):
        return
    if not locked:
        try:
            with bundle_lock(out_dir, wait=False, what="clean-up"):
                recover(out_dir, locked=True)
        except CatalogError:
            log.info("%s: another process is writing it; leaving its files alone", out_dir)
        except OSError as exc:
            log.warning("%s: cannot check for an interrupted build (%s)", out_dir, exc)
        return
    left = _leftovers(out_dir)
    if not out_dir.exists():
        complete = [p for p in left if p.is_dir() and (p / MANIFEST).is_file()]
        if complete:
            log.warning("%s: missing after an interrupted build; putting %s in place", out_dir,
                        complete[-1].name)
            os.rename(complete[-1], out_dir)
            _fsync_dir(out_dir.parent)
    for p in left:
        if not p.exists():
            continue
        log.warning("removing %s, left by an interrupted build", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def read_manifest(directory: str | Path) -> dict:
    """The bundle's manifest; BundleError if it is missing, unreadable or of a newer format."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory; build one: pi-search index build "
                          f"CATALOG --out {directory}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; {directory} is not a bundle (pi-search index build CATALOG "
                          f"--out {directory})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); rebuild the bundle: pi-search index build CATALOG "
                          f"--out {directory}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format_version"), int):
        raise BundleError(f"{path}: no format_version; rebuild the bundle: pi-search index build CATALOG "
                          f"--out {directory}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise BundleError(f"{directory}: bundle format {manifest['format_version']} is newer than this "
                          f"pi-search reads ({FORMAT_VERSION}); upgrade pi-search or rebuild it: "
                          f"pi-search index build CATALOG --out {directory}")
    for key in ("items", "model", "index", "store", "search"):
        if key not in manifest:
            raise BundleError(f"{path}: no {key!r} entry; rebuild the bundle: pi-search index build CATALOG "
                              f"--out {directory}")
    return manifest


def check_model(manifest: dict, extractor, directory: Path) -> None:
    """Refuse a bundle whose embeddings come from another model or dimension than ``extractor``'s."""
    m = manifest["model"]
    rebuild = (f"rebuild it with this model: pi-search index build CATALOG --out {directory} "
               f"--model {extractor.path}")
    if int(m["dim"]) != int(extractor.dim):
        raise BundleError(f"{directory}: bundle embeddings are {m['dim']}-d but the model {extractor.name} "
                          f"gives {extractor.dim}-d; {rebuild}")
    if m["sha256"] != extractor.sha256:
        raise BundleError(f"{directory}: bundle was built with model {m['name']} (sha256 {m['sha256'][:12]}) "
                          f"but the model in use is {extractor.name} (sha256 {extractor.sha256[:12]}); "
                          f"{rebuild}")


def _advise_random(array: np.ndarray) -> None:
    """Tell the kernel a memory-mapped array is read at random (keeps the resident set to the rows used)."""
    import contextlib
    import mmap

    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_RANDOM"):
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_RANDOM)


class Bundle:
    """A built bundle opened for queries: the index file and the vector store are memory-mapped, not read."""

    def __init__(self, directory: Path, manifest: dict):
        self.directory = directory
        self.manifest = manifest
        self._lock = threading.Lock()
        self._ann = None
        self._usearch = None
        self._projection: Projection | None = None
        self._store = None
        self._scale = None
        self._db: sqlite3.Connection | None = None
        self._deep = False

    @classmethod
    def open(cls, directory: str | Path, *, extractor=None, search: dict | None = None,
             deep: bool = False) -> Bundle:
        """Map a bundle; with ``extractor`` the manifest must match its model (sha256 and dim).

        Every file is checked against the manifest (sizes, fingerprints, item count) before anything is
        served; ``deep`` also runs SQLite's quick_check over the items (the daemon does). ``search`` overrides
        the manifest's query settings (``mode``, ``candidates``, ``search_k``).
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if extractor is not None:
            check_model(manifest, extractor, directory)
        if search:
            unknown = set(search) - {"mode", "candidates", "search_k"}
            if unknown or search.get("mode", "exact") not in ("exact", "ann"):
                raise BundleError(f"search settings {sorted(search)}: use mode (exact or ann), candidates, "
                                  "search_k")
            manifest = {**manifest, "search": {**manifest["search"], **search}}
        self = cls(directory, manifest)
        self._deep = deep
        try:
            self._load()
        except BundleError:
            self.close()
            raise
        except (OSError, ValueError, sqlite3.Error, KeyError, TypeError) as exc:
            self.close()
            raise BundleError(f"{directory}: damaged bundle ({exc}); rebuild it: pi-search index build "
                              f"CATALOG --out {directory}") from exc
        return self

    def _file(self, name: str) -> Path:
        path = self.directory / Path(name).name
        if not path.is_file():
            raise BundleError(f"{path}: missing; rebuild the bundle: pi-search index build CATALOG "
                              f"--out {self.directory}")
        return path

    def _load(self) -> None:
        m = self.manifest
        self._check_files()
        dim = int(m["model"]["dim"])
        proj = m.get("projection")
        if proj:
            mean = np.load(self._file(proj["mean"]))
            comps = np.load(self._file(proj["components"]))
            if mean.shape != (dim,) or comps.shape != (int(proj["dims"]), dim):
                raise BundleError(f"{self.directory}: projection shapes differ from the manifest; rebuild it")
            self._projection = Projection(mean.astype(np.float32), comps.astype(np.float32),
                                          bool(proj.get("whiten")), float(proj.get("explained_variance", 0)))
        store = m["store"]
        self._store = np.load(self._file(store["file"]), mmap_mode="r")
        if m["search"]["mode"] == "ann":
            _advise_random(self._store)  # re-ranking reads scattered rows: no read-ahead around them
        if self._store.shape != (int(m["items"]), dim):
            raise BundleError(f"{self.directory}: vector store is {self._store.shape}, manifest says "
                              f"{m['items']} x {dim}; rebuild the bundle")
        if store.get("scale"):
            self._scale = np.load(self._file(store["scale"]), mmap_mode="r")
        index = m["index"]
        if m["search"]["mode"] == "ann":
            if index["backend"] == "annoy":
                from annoy import AnnoyIndex

                self._ann = AnnoyIndex(int(index["dim"]), "angular")
                path = self._file(index["file"])
                try:
                    self._ann.load(str(path), prefault=False)
                except OSError as exc:
                    raise BundleError(f"{path}: Annoy cannot map it ({exc}); rebuild the bundle") from exc
                if self._ann.get_n_items() != int(m["items"]):
                    raise BundleError(f"{path}: {self._ann.get_n_items()} items, manifest says {m['items']}; "
                                      "rebuild the bundle")
            elif index["backend"] == "usearch":
                try:
                    from usearch.index import Index
                except ImportError as exc:
                    raise BundleError(f"{self.directory}: bundle uses the usearch backend; install it "
                                      "(pip install 'pi-search[usearch]') or rebuild with --backend annoy"
                                      ) from exc
                self._usearch = Index.restore(str(self._file(index["file"])), view=True)
            else:
                raise BundleError(f"{self.directory}: unknown index backend {index['backend']!r}; upgrade "
                                  "pi-search or rebuild the bundle")
        db_path = self._file(m.get("items_file", ITEMS_FILE))
        self._db = sqlite3.connect(f"file:{db_path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        if self._deep:
            bad = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            if bad:
                first = " ".join(bad[0].split())[:200]
                raise BundleError(f"{db_path}: damaged ({first}); rebuild the bundle or copy it again")
        rows = self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        if rows != int(m["items"]):
            raise BundleError(f"{db_path}: {rows} items, manifest says {m['items']}; the bundle is "
                              "incomplete or mixed: copy the whole bundle again (pi-search index install)")

    def _check_files(self) -> None:
        """Every file the manifest lists has the size and fingerprint it was written with."""
        for name, want in (self.manifest.get("files") or {}).items():
            path = self.directory / Path(name).name
            if not path.is_file():
                raise BundleError(f"{path}: missing; copy the whole bundle again (pi-search index install) "
                                  f"or rebuild it: pi-search index build CATALOG --out {self.directory}")
            have = fingerprint(path)
            if have["bytes"] != want.get("bytes"):
                raise BundleError(f"{path}: {have['bytes']} bytes, manifest says {want.get('bytes')}; "
                                  "the bundle is incomplete (a copy in progress?) or mixed: copy the whole "
                                  "bundle again (pi-search index install) or rebuild it")
            if want.get("sample_sha256") and have["sample_sha256"] != want["sample_sha256"]:
                raise BundleError(f"{path}: does not belong to this bundle's manifest (another "
                                  "build's file); copy the whole bundle again (pi-search index install) or "
                                  "rebuild it")

    def mapped_files(self) -> list[Path]:
        """The files this bundle keeps mapped or open while it serves (their in-place overwrite is fatal)."""
        m = self.manifest
        names = [m["store"]["file"], m.get("items_file", ITEMS_FILE)]
        if m["store"].get("scale"):
            names.append(m["store"]["scale"])
        if m["search"]["mode"] == "ann":
            names.append(m["index"]["file"])
        return [self.directory / Path(n).name for n in names]

    def __len__(self) -> int:
        return int(self.manifest["items"])

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _scores(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Cosine similarity of ``q`` (float32 [dim]) with stored rows ``rows`` (sorted int64 [m])."""
        vecs = self._store[rows].astype(np.float32)
        s = vecs @ q
        if self._scale is not None:
            s *= self._scale[rows]
        return s

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        if self._store.dtype == np.float32 and self._scale is None:
            s = np.asarray(self._store) @ q
        else:
            s = np.empty(n, np.float32)
            for i in range(0, n, _EXACT_CHUNK):
                block = self._store[i:i + _EXACT_CHUNK].astype(np.float32) @ q
                if self._scale is not None:
                    block *= self._scale[i:i + _EXACT_CHUNK]
                s[i:i + _EXACT_CHUNK] = block
        k = min(k, n)
        top = np.argpartition(-s, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-s[top], kind="stable")]
        return top, s[top]

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """Approximate neighbours of ``q`` (float32 [dim], normalised) from the index: int64 [<= n]."""
        qi = self._projection.apply(q) if self._projection is not None else q
        if self._ann is not None:
            search_k = int(self.manifest["search"]["search_k"])
            return np.asarray(self._ann.get_nns_by_vector(qi, n, search_k=search_k), dtype=np.int64)
        found = self._usearch.search(qi, n)
        return np.asarray(found.keys, dtype=np.int64)

    def search_indices(self, vector: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices (int64 [k]) and cosine scores (float32 [k]) for one query vector."""
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise BundleError(f"query vector has {q.shape[0]} dims, bundle {self.directory} has {self.dim}")
        q = _normalise(q)
        k = max(1, min(int(k), len(self)))
        if self.manifest["search"]["mode"] == "exact":
            return self._exact(q, k)
        cand = np.unique(self.candidates(q, max(k, int(self.manifest["search"]["candidates"]))))
        if cand.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        s = self._scores(cand, q)
        order = np.argsort(-s, kind="stable")[:k]
        return cand[order], s[order]

    def search(self, vector: np.ndarray, k: int = 5) -> list[Match]:
        """Top-k matches for an embedding (float32 [dim], L2-normalised), best first."""
        idx, scores = self.search_indices(vector, k)
        if idx.size == 0:
            return []
        marks = ",".join("?" * len(idx))
        rows = self._query(f"SELECT idx, id, title, price FROM items WHERE idx IN ({marks})",
                           [int(i) for i in idx], many=True)
        meta = {r[0]: r for r in rows}
        out = []
        for i, s in zip(idx.tolist(), scores.tolist(), strict=True):
            r = meta.get(i)
            if r is None:
                raise BundleError(f"{self.directory}: item {i} missing from {ITEMS_FILE}; rebuild the bundle")
            out.append(Match(r[1], r[2], r[3], float(min(1.0, max(-1.0, s))), i))
        return out

    def item(self, item_id: str) -> dict | None:
        """Metadata of one item by catalog id (id, title, price, extra), or None."""
        r = self._query("SELECT id, title, price, extra FROM items WHERE id = ?", (str(item_id),))
        if r is None:
            return None
        return {"id": r[0], "title": r[1], "price": r[2], "extra": json.loads(r[3] or "{}")}

    def thumbnail(self, item_id: str) -> bytes | None:
        """JPEG bytes of an item's thumbnail looked up by catalog id; None if unknown."""
        r = self._query("SELECT thumb FROM items WHERE id = ?", (str(item_id),))
        return None if r is None or r[0] is None else bytes(r[0])

    def _query(self, sql: str, args, *, many: bool = False):
        """One read of ``items.sqlite``; a damaged row or a closed bundle is a BundleError (not a crash)."""
        with self._lock:
            if self._db is None:
                raise BundleError(f"{self.directory}: the bundle was closed (it is being replaced)")
            try:
                cur = self._db.execute(sql, args)
                return cur.fetchall() if many else cur.fetchone()
            except sqlite3.DatabaseError as exc:
                raise BundleError(f"{self.directory / ITEMS_FILE}: cannot read an item ({exc}); rebuild the "
                                  "bundle or copy it again") from exc

    def close(self) -> None:
        if self._ann is not None:
            self._ann.unload()
            self._ann = None
        self._usearch = None
        self._store = None
        self._scale = None
        if self._db is not None:
            self._db.close()
            self._db = None


def install_bundle(source: str | Path, out_dir: str | Path, *, model_sha256: str | None = None) -> dict:
    """Put the bundle at ``source`` (built elsewhere, copied here) at ``out_dir`` in one atomic step.

    The source is checked whole first (every file against its manifest, SQLite's quick_check, the model when
    ``model_sha256`` is given); it is copied beside ``out_dir``, checked again, synced, and swapped in
    (``swap_into_place``), so a daemon serving ``out_dir`` keeps answering from the old bundle until it maps
    the new one. Run as root, the copy gets the owner of the bundle it replaces. Returns a report.
    """
    source, out_dir = Path(source), Path(out_dir)
    t0 = time.perf_counter()
    if not source.is_dir():
        raise BundleError(f"{source}: no such folder; give the folder of the bundle you copied over")
    if source.resolve() == out_dir.resolve():
        raise BundleError(f"{source} is already the bundle at {out_dir}; give the folder of the new bundle")
    with Bundle.open(source, deep=True) as bundle:
        manifest = bundle.manifest
    if model_sha256 and manifest["model"]["sha256"] != model_sha256:
        raise BundleError(f"{source}: built with model {manifest['model']['name']} (sha256 "
                          f"{manifest['model']['sha256'][:12]}), but this appliance uses another model "
                          f"(sha256 {model_sha256[:12]}); rebuild it with the appliance's model")
    check_out_dir(out_dir)
    with bundle_lock(out_dir, what="install"):
        recover(out_dir, locked=True)
        tmp = out_dir.parent / f".{out_dir.name}.install-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source, tmp)
            if os.geteuid() == 0 and out_dir.exists():
                st = out_dir.stat()
                for p in (tmp, *tmp.rglob("*")):
                    os.chown(p, st.st_uid, st.st_gid)
            _fsync_tree(tmp)
            Bundle.open(tmp).close()   # the copy is what the source was
            swap_into_place(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("installed %s at %s: %d items", source, out_dir, manifest["items"])
    return {"bundle": str(out_dir), "source": str(source), "items": int(manifest["items"]),
            "created": manifest.get("created"), "seconds": round(time.perf_counter() - t0, 3)}


def info(directory: str | Path) -> dict:
    """What ``pi-search index info`` shows: the manifest plus the size of every file."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return {"directory": str(directory), **manifest, "files": files, "total_bytes": sum(files.values())}


def query_images(extractor, bundle: Bundle, paths: Sequence[str | Path], k: int = 5) -> list[dict]:
    """``{"query", "matches"}`` per image file, best first; an unreadable image gets an ``"error"`` entry."""
    from . import images
    from .errors import ImageError
    from .views import embed_query_image

    results = []
    for path in paths:
        try:
            vec = embed_query_image(extractor, images.read(path))
        except ImageError as exc:
            results.append({"query": str(path), "error": str(exc), "matches": []})
            continue
        results.append({"query": str(path), "matches": [m.as_dict() for m in bundle.search(vec, k)]})
    return results

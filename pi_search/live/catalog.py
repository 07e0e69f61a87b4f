"""The live catalog: the bundle's matches merged with the change store's taught items, edits and removals."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..barcodes.codes import keys as code_keys
from ..barcodes.codes import split_codes
from ..bundle import (
    MANIFEST,
    VIEW_SEP,
    Bundle,
    Match,
    Projection,
    check_id,
    item_of,
    normalise,
    read_manifest,
    recover,
    slots,
)
from ..errors import BundleError, CatalogError, ItemConflict, NoSuchItem
from . import leases, snapshot
from .changes import MAX_SHOTS, ChangeStore, Snapshot, TaughtItem, store_path
from .compact import compact

log = logging.getLogger(__name__)

EXACT_TAUGHT_MAX = 2048    # above this many taught shots, a PCA pre-selection precedes the exact scores
COARSE_DIMS = 64           # leading PCA components the pre-selection compares (a quarter of the bytes read)
COARSE_MIN = 128           # shots kept by the pre-selection (at least; 16 per requested match otherwise)
REFRESH_S = 1.0            # how often another process's changes are looked for
RETRY_BAD_S = 10.0         # how often a bundle that failed to open is tried again
SETTLE_S = 2.0             # files changed in place must stay unchanged this long before they are opened


def _lease_break_s() -> float:
    """How long the kernel lets a writer wait for a lease to be given back (``fs.lease-break-time``)."""
    try:
        return float(Path("/proc/sys/fs/lease-break-time").read_text())
    except (OSError, ValueError):
        return 45.0


def dir_key(directory: Path) -> tuple | None:
    """Identity of the bundle at ``directory``: the folder itself and every file in it (name, inode, size,
    times). It changes when a bundle is swapped in, and while files are copied into the folder."""
    try:
        st = os.stat(directory)
        files = []
        with os.scandir(directory) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    f = e.stat(follow_symlinks=False)
                    files.append((e.name, f.st_ino, f.st_size, f.st_mtime_ns, f.st_ctime_ns))
    except OSError:
        return None
    return (st.st_dev, st.st_ino), tuple(sorted(files))


@dataclass(frozen=True)
class _State:
    """One consistent view: a bundle and the store's changes it does not hold yet."""

    bundle: Bundle
    key: tuple | None
    items: dict               # id -> TaughtItem, changes after the bundle's folded_seq
    masked: frozenset         # bundle item ids hidden from search (removed or taught afresh)
    vectors: np.ndarray       # float32 [m, dim] taught shots, L2-normalised
    owners: np.ndarray        # object [m]: item id of each shot
    coarse: np.ndarray | None  # float32 [m, COARSE_DIMS]: shots projected by the bundle's PCA (large m)
    projection: Projection | None
    size: int
    generation: int = 0       # counts the bundles served: every Match found in this state carries it
    buffer: np.ndarray | None = None         # float32 [capacity, dim]: ``vectors`` is its first m rows
    coarse_buffer: np.ndarray | None = None  # float32 [capacity, COARSE_DIMS]: the same for ``coarse``


def _open_store(path: Path, bundle: Bundle) -> ChangeStore:
    """The change store for ``bundle``, without the changes the bundle already holds."""
    cs = ChangeStore(path, dim=bundle.dim, model_sha256=bundle.manifest.model.sha256 or None)
    try:
        cs.forget(bundle.manifest.folded_seq)
    except BaseException:
        cs.close()
        raise
    return cs


class LiveCatalog:
    """A Bundle plus a ChangeStore, searched as one catalog with the Bundle's interface.

    ``search(vector, k)`` takes float32 [dim], L2-normalised, and returns ``Match`` objects best first, each
    item once (its best shot). Changes made through this object are searchable when the call returns;
    changes made by another process, and a bundle swapped by a compaction, are picked up within
    ``refresh_s`` seconds.

    A catalog may serve no bundle for a while (``problem`` says why): the daemon starts on a bundle that is
    missing, half-copied or broken and waits for a good one. With ``guard`` (the daemon) no file another
    process may overwrite in place (``cp``, ``scp``) is ever mapped unguarded: the bundle's files are mapped
    under read leases, and when another process opens one for writing (it waits meanwhile) they are copied
    into a private folder beside the bundle, checked, and served from there; where leases cannot be had
    (files of another user, no CAP_LEASE) every bundle is served from such a copy. Either way the old bundle
    keeps answering until the new one's files have settled, pass every check and are swapped in; nothing
    crashes. A bundle too large to copy is let go instead (searches answer no matches until the new one).
    """

    def __init__(self, bundle: Bundle | None, store: ChangeStore, *, directory: str | Path | None = None,
                 extractor=None, refresh_s: float = REFRESH_S, compact_after: int = 0,
                 compact_every_s: float = 0.0, guard: bool = False, problem: str | None = None,
                 store_path: Path | None = None):
        self.store = store
        self._store_path = store_path   # the store to open with the first good bundle (none served yet)
        self.extractor = extractor
        self.refresh_s = refresh_s
        self.compact_after = compact_after
        self.compact_every_s = compact_every_s
        self.protect = guard                  # never map files another process may truncate unguarded
        self.guard = guard and leases.enabled()   # ... by holding read leases on them (else private copies)
        self._compactor: threading.Thread | None = None
        self._last_compact = time.monotonic()
        self.last_compaction: dict | None = None
        self._dir = Path(directory if directory is not None else bundle.directory)
        self._reload_lock = threading.RLock()
        self._version = store.data_version()
        self._projections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Bundle -> Projection
        self._generations: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Bundle -> int
        self._last_generation = 0
        self._bad_key: tuple | None = None   # a bundle that failed to open: retried every RETRY_BAD_S only
        self._bad_since = 0.0
        self._seen_key: tuple | None = None  # files changing in place: opened once unchanged for SETTLE_S
        self._seen_since = 0.0
        self._cv = threading.Condition()     # searches in flight vs. letting a bundle go
        self._readers = 0
        self._closing = False
        self._leases: leases.Leases | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.problem: str | None = problem
        self.refused: str | None = None   # why the bundle now at the directory is not served (the old one is)
        self.trust = None                 # ``trust.Trust``: serve only bundles signed by its keys
        self.fault: tuple[float, str] | None = None   # the last read that failed while serving
        self._state: _State | None = None
        if bundle is not None:
            self._state = self._build(bundle, dir_key(self._dir), store.snapshot())

    @classmethod
    def open(cls, directory: str | Path, *, extractor=None, store: str | Path | None = None,
             refresh_s: float = REFRESH_S, readonly: bool = False, compact_after: int = 0,
             compact_every_s: float = 0.0, wait: bool = False, guard: bool = False,
             trust=None) -> LiveCatalog:
        """Open the bundle at ``directory`` and its change store (``NAME.changes.sqlite`` beside it).

        Finishes or undoes a build or compaction interrupted by a crash first, and forgets changes the bundle
        holds. ``readonly``: for queries only; no store file is created when there is none.
        ``compact_after`` pending changes (0: never) or ``compact_every_s`` seconds with pending changes (0:
        never) start a compaction in a background thread. ``wait`` (the daemon; needs ``extractor``): a
        bundle that cannot be opened gives a catalog that serves nothing yet and says why (``problem``)
        instead of BundleError. ``guard`` (the daemon; needs ``extractor``): never map files another process
        may overwrite in place unguarded (read leases, ``leases.enable`` first, or private copies).
        """
        directory = Path(directory)
        recover(directory)
        path = Path(store or store_path(directory))
        if guard:
            return cls._open_guarded(directory, path, extractor, wait, refresh_s=refresh_s,
                                     compact_after=compact_after, compact_every_s=compact_every_s,
                                     trust=trust)
        key = dir_key(directory)
        try:
            bundle = Bundle.open(directory, extractor=extractor)
            problem = None
        except BundleError as exc:
            if not wait or extractor is None:
                raise
            bundle, problem = None, str(exc)
        if readonly and not path.is_file():
            path = Path(":memory:")
        if bundle is not None:
            try:
                cs = _open_store(path, bundle)
            except BaseException:
                bundle.close()
                raise
            return cls(bundle, cs, directory=directory, extractor=extractor, refresh_s=refresh_s,
                       compact_after=compact_after, compact_every_s=compact_every_s)
        log.warning("no usable bundle yet: %s; serving nothing until one is in place", problem)
        cs = ChangeStore(":memory:", dim=int(extractor.dim), model_sha256=extractor.sha256)
        cat = cls(None, cs, problem=problem, directory=directory, extractor=extractor, refresh_s=refresh_s,
                  compact_after=compact_after, compact_every_s=compact_every_s, store_path=path)
        cat._bad_key, cat._bad_since = key, time.monotonic()
        return cat

    @classmethod
    def _open_guarded(cls, directory: Path, path: Path, extractor, wait: bool, trust=None, **args
                      ) -> LiveCatalog:
        """The daemon's catalog: the bundle is opened the way a reload opens one (``_open_served``)."""
        if extractor is None:
            raise ValueError("a guarded catalog needs the extractor (its model decides which bundle fits)")
        snapshot.clear(directory)
        # the store is opened with the first good bundle (its model decides whose items fit)
        cs = ChangeStore(":memory:", dim=int(extractor.dim), model_sha256=extractor.sha256)
        cat = cls(None, cs, directory=directory, extractor=extractor, guard=True, store_path=path,
                  problem="starting", **args)
        cat.trust = trust
        try:
            cat.reload(strict=not wait)
        except BaseException:
            cat.close()
            raise
        return cat

    # ------------------------------------------------------------ serving and letting go
    @contextlib.contextmanager
    def _reading(self):
        """The state to read from; a bundle is never let go while a read of it runs."""
        with self._cv:
            self._cv.wait_for(lambda: not self._closing)
            self._readers += 1
        try:
            yield self._state
        finally:
            with self._cv:
                self._readers -= 1
                if self._readers == 0:
                    self._cv.notify_all()

    def _publish(self, state: _State | None, problem: str | None = None,
                 lease: leases.Leases | None = None) -> None:
        """Serve ``state`` (None: nothing, because of ``problem``) guarded by ``lease``; the bundle it
        replaces is closed once no read of it is running, and its leases are given back."""
        if state is not None and self._state is not None and state.bundle is self._state.bundle:
            self._state, self.problem = state, None   # the same bundle with newer changes: nothing to let go
            return
        with self._cv:
            self._closing = True
            self._cv.wait_for(lambda: self._readers == 0)
            old, self._state = self._state, state
            old_lease = self._leases
            if state is None or old is None or state.bundle is not old.bundle:
                self._leases = lease
            self.problem = problem
            self._closing = False
            self._cv.notify_all()
        if old is not None and (state is None or old.bundle is not state.bundle):
            old.bundle.close()
            if old_lease is not None:
                old_lease.release()
            if old.bundle.copy_of is not None:
                snapshot.drop(old.bundle.directory)

    def _open_served(self) -> tuple[Bundle, leases.Leases | None]:
        """``_open_mapped`` after the signing rules of ``trust`` (when set) passed for the bundle; its files
        are then checked against the manifest the signature covers."""
        slot = slots.active(self._dir)   # read before the bundle: a switch meanwhile is seen next time
        if self.trust is None:
            bundle, lease = self._open_mapped()
            bundle.served_slot = slot
            return bundle, lease
        signed, manifest = self.trust.admit(self._dir, self.signed)
        bundle, lease = self._open_mapped(manifest)
        if bundle.manifest.to_dict() != manifest.to_dict():   # the one read is the one signed
            bundle.close()
            if lease is not None:
                lease.release()
            if bundle.copy_of is not None:
                snapshot.drop(bundle.directory)
            raise BundleError(f"{self._dir / MANIFEST}: file changed while it was checked (a copy in "
                              "progress?); waiting for the copy to finish")
        bundle.signed, bundle.served_slot = signed, slot
        return bundle, lease

    @property
    def signed(self):
        """The signature (``signing.Signed``) of the bundle served, when ``trust`` asked for one."""
        st = self._state
        return None if st is None else getattr(st.bundle, "signed", None)

    def _open_mapped(self, manifest=None) -> tuple[Bundle, leases.Leases | None]:
        """Check and map the bundle at the directory the way ``protect`` asks; BundleError says why not.

        Without ``protect``: its files, as they are. With it: its files under read leases (``guard``); where
        leases cannot be had, a private copy of them (checked while copied); where that does not fit on the
        disk either, its files as they are, with a warning.
        """
        if not self.protect:
            return Bundle.open(self._dir, extractor=self.extractor), None
        manifest = manifest or read_manifest(self._dir)
        lease = None
        if self.guard:
            names = sorted({Path(n).name for n in manifest.files} | set(manifest.opened_files()) | {MANIFEST})
            try:   # every file: a private copy, made when one is about to change, needs them all unchanged
                lease = leases.Leases([self._dir / n for n in names], self._on_lease_break)
            except leases.LeaseBusy as exc:
                raise BundleError(f"{exc.strerror}: a copy into the bundle is in progress") from None
            except FileNotFoundError as exc:
                raise BundleError(f"{exc.filename}: missing; copy the whole bundle again (pi-search index "
                                  f"install) or rebuild it: pi-search index build CATALOG --out {self._dir}"
                                  ) from None
            except OSError as exc:
                log.warning("%s: cannot take read leases on the bundle's files (%s)", self._dir, exc)
                lease = None
            if lease is not None and lease.unguarded:
                log.info("%s: the files %s cannot be leased (owned by another user?)", self._dir,
                         ", ".join(p.name for p in lease.unguarded))
                lease.release()
                lease = None
        if lease is not None:
            try:
                bundle = Bundle.open(self._dir, extractor=self.extractor, deep=True)
            except BaseException:
                lease.release()
                raise
            if not lease.held() or bundle.manifest.files != manifest.files:   # written to while checked
                bundle.close()
                lease.release()
                raise BundleError(f"{self._dir}: its files are being written (a copy in progress?); "
                                  "waiting for the copy to finish")
            lease.bundle = bundle
            return bundle, lease
        if not snapshot.fits(self._dir, manifest):
            log.warning("%s: its files cannot be guarded against in-place copies and a private copy (%d MB) "
                        "does not fit beside it; replace the bundle only with pi-search index install",
                        self._dir, snapshot.size_of(manifest) >> 20)
            return Bundle.open(self._dir, extractor=self.extractor, deep=True), None
        return self._open_copy(self._dir, manifest), None

    def _open_copy(self, directory: Path, manifest, seconds: float | None = None) -> Bundle:
        """A private copy of the bundle at ``directory`` (checked while copied), opened."""
        try:
            copy = snapshot.take(directory, manifest, seconds=seconds)
        except OSError as exc:
            raise snapshot.copy_error(exc, self._dir) from None
        try:
            bundle = Bundle.open(copy, extractor=self.extractor)
        except BaseException:
            snapshot.drop(copy)
            raise
        bundle.copy_of = self._dir
        log.info("%s: serving a private copy of its files (%s)", self._dir, copy.name)
        return bundle

    def _on_lease_break(self, lease: leases.Leases) -> None:
        """Another process opened a file of the served bundle for writing, and waits until this returns:
        serve a private copy of the files as they still are, or let the bundle go if that cannot be had in
        time."""
        budget = _lease_break_s() / 2
        t0 = time.monotonic()
        # a reload that is opening this lease's bundle publishes it first (a lease it has not published yet
        # is let go, and that reload then refuses the bundle: ``Leases.held``)
        locked = self._reload_lock.acquire(timeout=budget / 2)
        try:
            st = self._state
            if st is None or getattr(lease, "bundle", None) is not st.bundle:
                return
            copied = None
            if locked and snapshot.fits(st.bundle.directory, st.bundle.manifest):
                try:
                    copied = self._open_copy(st.bundle.directory, st.bundle.manifest,
                                             seconds=budget - (time.monotonic() - t0))
                    for name in ("signed", "served_slot"):   # the same bundle, as it was checked
                        if hasattr(st.bundle, name):
                            setattr(copied, name, getattr(st.bundle, name))
                    self._publish(self._build(copied, st.key, self.store.snapshot()))
                except (BundleError, OSError, TimeoutError) as exc:
                    log.warning("%s: cannot copy the bundle aside (%s)", self._dir, exc)
                    if copied is not None:
                        copied.close()
                        snapshot.drop(copied.directory)
                    copied = None
            if copied is not None:
                log.warning("%s: a file of the bundle is being overwritten in place; serving a private copy "
                            "of it (made in %.2f s) until the new bundle is complete and checked", self._dir,
                            time.monotonic() - t0)
            else:
                log.warning("%s: a file of the bundle is being overwritten in place; serving nothing until "
                            "the new bundle is complete", self._dir)
                self._publish(None, f"the bundle at {self._dir} is being replaced (its files are being "
                                    "overwritten); waiting for the copy to finish")
            self._seen_key, self._seen_since = dir_key(self._dir), time.monotonic()
        finally:
            if locked:
                self._reload_lock.release()

    @property
    def serving(self) -> bool:
        return self._state is not None

    def watch(self) -> LiveCatalog:
        """Look for changes by other processes and bundles put in place every ``refresh_s`` seconds in a
        background thread (the daemon), even while nothing is searched."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="pi-search-catalog", daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(max(self.refresh_s, 0.05)):
            self.refresh()

    # ------------------------------------------------------------ state
    def _projection(self, bundle: Bundle) -> Projection | None:
        """The bundle's PCA cut to its ``COARSE_DIMS`` leading components (for the pre-selection)."""
        if bundle not in self._projections:
            p = bundle.projection
            if p is not None:   # rows back to unit length: plain PCA axes even if the bundle's are whitened
                c = p.components[:COARSE_DIMS]
                c = c / np.linalg.norm(c, axis=1, keepdims=True)
                p = Projection(p.mean, np.ascontiguousarray(c, dtype=np.float32), False, 0.0)
            self._projections[bundle] = p
        return self._projections[bundle]

    def _generation(self, bundle: Bundle) -> int:
        """The generation of ``bundle``: a number given to each bundle when it is first served."""
        with self._cv:
            if bundle not in self._generations:
                self._last_generation += 1
                self._generations[bundle] = self._last_generation
            return self._generations[bundle]

    @property
    def generation(self) -> int:
        """The served bundle's generation (0 while none is served)."""
        st = self._state
        return 0 if st is None else st.generation

    def _build(self, bundle: Bundle, key, snap: Snapshot) -> _State:
        done = bundle.manifest.folded_seq
        items = {}
        for i, it in snap.items.items():
            if it.seq <= done:
                continue
            if 0 < it.own <= done:
                it = TaughtItem(it.id, it.title, it.price, it.extra, it.created, it.updated, it.deleted, True,
                                it.seq, it.shots, 0)
            items[i] = it
        keep = (snap.vector_seqs > done) & np.array(
            [o in items and not items[o].deleted for o in snap.owners], dtype=bool).reshape(-1)
        m = int(keep.sum())
        # room to grow: an add writes its shots after row m, which no published state reads
        seen = bundle.to_learned(snap.vectors[keep])   # taught shots in the stored rows' space
        vecs = np.empty((m + max(256, m // 4), seen.shape[1]), np.float32)
        vecs[:m] = seen
        owners = snap.owners[keep]
        masked = frozenset(i for i, it in items.items() if it.masks_bundle)
        proj = self._projection(bundle) if m > EXACT_TAUGHT_MAX else None
        coarse = None
        if proj is not None:
            coarse = np.empty((len(vecs), proj.dims), np.float32)
            coarse[:m] = proj.apply(vecs[:m])
        views = bundle.manifest.views
        size = len(bundle) - views
        size -= sum(1 for it in items.values() if it.base and it.deleted)
        size += sum(1 for it in items.values() if not it.base and not it.deleted)
        return _State(bundle, key, items, masked, vecs[:m], owners, None if coarse is None else coarse[:m],
                      proj, size, self._generation(bundle), vecs, coarse)

    def _appended(self, st: _State, it: TaughtItem, vectors: np.ndarray) -> _State | None:
        """``st`` plus one new taught item and its shots (float32 [n, dim], L2-normalised), without reading
        the store again; None when a full reload is needed (no room left, or the pre-selection starts)."""
        m, n = len(st.vectors), len(vectors)
        if st.buffer is None or m + n > len(st.buffer):
            return None
        if (st.coarse is None) != (m + n <= EXACT_TAUGHT_MAX):
            return None
        vectors = st.bundle.to_learned(vectors)
        st.buffer[m:m + n] = vectors
        if st.coarse is not None:
            st.coarse_buffer[m:m + n] = st.projection.apply(vectors)
        owners = np.empty(m + n, dtype=object)
        owners[:m] = st.owners
        owners[m:] = it.id
        items = {**st.items, it.id: it}
        return _State(st.bundle, st.key, items, st.masked, st.buffer[:m + n], owners,
                      None if st.coarse is None else st.coarse_buffer[:m + n], st.projection, st.size + 1,
                      st.generation, st.buffer, st.coarse_buffer)

    def reload(self, *, strict: bool = False) -> None:
        """Read the store again and, if another bundle is at the directory now, check it and map it.

        A bundle that fails its checks is not mapped: the one in use keeps serving (``strict``: BundleError
        says why, for /api/reload and SIGHUP).
        """
        with self._reload_lock:
            self._version = self.store.data_version()
            snap = self.store.snapshot()   # first the store, then the bundle: see compact.compact
            key = dir_key(self._dir)
            st = self._state
            if st is not None and (key is None or key == st.key):
                self._publish(self._build(st.bundle, st.key, snap))
                return
            try:
                if key is None:
                    raise BundleError(f"{self._dir}: no such bundle directory; build one: pi-search index "
                                      f"build CATALOG --out {self._dir}")
                bundle, lease = self._open_served()
                try:
                    if self._store_path is not None:
                        self._first_store(bundle)
                        snap = self.store.snapshot()
                except BaseException:
                    bundle.close()
                    if lease is not None:
                        lease.release()
                    if bundle.copy_of is not None:
                        snapshot.drop(bundle.directory)
                    raise
            except BundleError as exc:
                if key != self._bad_key:
                    log.warning("%s: %s", "keeping the bundle in use" if st is not None else
                                "no usable bundle yet, serving nothing until one is in place", exc)
                self._bad_key, self._bad_since = key, time.monotonic()
                if st is not None:
                    self.refused = str(exc)
                    self._publish(self._build(st.bundle, st.key, snap))
                else:
                    self.problem = str(exc)
                if strict:
                    raise
                return
            self._bad_key, self.refused = None, None
            log.info("bundle %s opened: %d items", self._dir, len(bundle))
            self._publish(self._build(bundle, key, snap), None, lease)

    def _first_store(self, bundle: Bundle) -> None:
        """Open the change store beside the directory now that a bundle says which model its items need."""
        try:
            cs = _open_store(self._store_path, bundle)
        except CatalogError as exc:
            raise BundleError(str(exc)) from exc
        old, self.store, self._store_path = self.store, cs, None
        self._version = cs.data_version()
        old.close()

    def _settled(self, key: tuple, now: float) -> bool:
        """True when the bundle at ``key`` may be opened: a folder swapped in whole at once, or files that
        stayed unchanged for ``SETTLE_S`` (a copy into the folder has finished)."""
        st = self._state
        if st is not None and st.key is not None and key[0] != st.key[0]:
            return True
        if key != self._seen_key:
            self._seen_key, self._seen_since = key, now
            return False
        return now - self._seen_since >= SETTLE_S

    def refresh(self) -> None:
        """Reload if another process changed the store or put another bundle in place; start a compaction
        when one is due (``compact_every_s``). The watcher calls it every ``refresh_s`` seconds (``watch``);
        a search never does."""
        now = time.monotonic()
        st = self._state
        if (self.compact_every_s > 0 and now - self._last_compact >= self.compact_every_s
                and st is not None and st.items):
            self.compact_in_background()
        try:
            key = dir_key(self._dir)
            moved = (key is not None and key != (st.key if st is not None else None)
                     and (key != self._bad_key or now - self._bad_since >= RETRY_BAD_S)
                     and self._settled(key, now))
            if moved or self.store.data_version() != self._version:
                self.reload()
        except Exception as exc:  # a failed refresh keeps serving the last good state
            log.warning("refreshing the catalog failed: %s", exc)

    # ------------------------------------------------------------ the Bundle interface
    @property
    def bundle(self) -> Bundle | None:
        st = self._state
        return None if st is None else st.bundle

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def manifest(self):
        """The served bundle's ``Manifest`` (None while none is served)."""
        st = self._state
        return None if st is None else st.bundle.manifest

    @property
    def dim(self) -> int:
        return self.store.dim

    def __len__(self) -> int:
        st = self._state
        return 0 if st is None else st.size

    def _serving(self) -> _State:
        """The served state, or BundleError saying why there is none (changes need a bundle)."""
        st = self._state
        if st is None:
            raise BundleError(f"no catalog is served right now: {self.problem}")
        return st

    def __enter__(self) -> LiveCatalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, vector: np.ndarray, k: int = 5) -> list[Match]:
        """Top-k items for an embedding (float32 [dim], L2-normalised), best first, each item once, all found
        in one bundle (their ``generation``).

        Reads the published state only: no reload, no compaction (``refresh`` does those)."""
        q = normalise(np.asarray(vector, dtype=np.float32).reshape(-1))
        k = max(1, int(k))
        best: dict[str, Match] = {}
        with self._reading() as st:
            if st is None:
                return []
            q = st.bundle.to_learned(q)   # once, for the bundle and the taught shots alike
            self._search_bundle(st, q, k, best)
            self._search_taught(st, q, k, best)
        return sorted(best.values(), key=lambda m: -m.score)[:k]

    def search_mean(self, vectors: np.ndarray, k: int = 5) -> list[Match]:
        """Top-k items scored by the mean of their cosines with each of ``vectors`` (float32 [m, dim],
        L2-normalised embeddings), with one search: the mean of the vectors in the stored rows' space (through
        the learned projection), its scores times the mean's length."""
        v = normalise(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        k = max(1, int(k))
        best: dict[str, Match] = {}
        with self._reading() as st:
            if st is None:
                return []
            q = st.bundle.to_learned(v).mean(axis=0)
            n = float(np.linalg.norm(q))
            if n <= 1e-6:
                q, n = st.bundle.to_learned(v[0]), 1.0
            else:
                q = q / n
            self._search_bundle(st, q, k, best)
            self._search_taught(st, q, k, best)
        return [dataclasses.replace(m, score=m.score * n)
                for m in sorted(best.values(), key=lambda m: -m.score)[:k]]

    def _faulted(self, exc: BundleError) -> None:
        """A read of the served bundle failed: remembered for /healthz, and raised for this request only."""
        self.fault = (time.time(), str(exc))
        log.error("%s", exc)
        raise exc

    def _search_bundle(self, st: _State, q: np.ndarray, k: int, best: dict) -> None:
        bundle, n = st.bundle, len(st.bundle)
        views = bundle.manifest.views
        want = min(n, k + min(len(st.masked), 4 * k) + (2 * k if views else 0))
        while True:
            found = bundle.search(q, want, learned=True)
            kept = 0
            for m in found:
                iid = item_of(m.id)
                if iid in st.masked:
                    continue
                over = st.items.get(iid)
                title, price = (over.title, over.price) if over is not None else (m.title, m.price)
                old = best.get(iid)
                if old is None:
                    kept += 1
                if old is None or m.score > old.score:
                    best[iid] = Match(iid, title, price, m.score, m.index, st.generation, photo=m.photo)
            if kept >= k or len(found) < want or want >= n:
                return
            want = min(n, want * 4)

    def _search_taught(self, st: _State, q: np.ndarray, k: int, best: dict) -> None:
        m = len(st.vectors)
        if m == 0:
            return
        if st.coarse is not None:
            c = min(m, max(COARSE_MIN, MAX_SHOTS * k))
            s0 = st.coarse @ st.projection.apply(q)
            rows = np.argpartition(s0, m - c)[m - c:] if c < m else np.arange(m)
        else:
            rows = None
        vecs = st.vectors if rows is None else st.vectors[rows]
        s = vecs @ q
        t = min(len(s), k * MAX_SHOTS)   # holds k distinct items: an item has at most MAX_SHOTS shots
        top = np.argpartition(s, len(s) - t)[len(s) - t:] if t < len(s) else np.arange(len(s))
        top = top[np.argsort(-s[top], kind="stable")]
        seen: set = set()
        for j, score in zip(top.tolist(), s[top].tolist(), strict=True):
            iid = st.owners[j if rows is None else rows[j]]
            if iid in seen:
                continue           # best first: this item's best shot was already taken
            seen.add(iid)
            score = min(1.0, max(-1.0, score))
            old = best.get(iid)
            if old is None or score > old.score:
                it = st.items[iid]
                best[iid] = Match(iid, it.title, it.price, score, -1, st.generation)
            if len(seen) == k:     # any further taught item ranks below these k
                break

    def code_items(self, keys: list[str]) -> dict[str, Match]:
        """``key -> Match`` (score 1, via "barcode") of the barcode keys (``barcodes.codes.keys``) that name
        a served item: a taught item's ``barcode`` first, then the bundle's codes table."""
        out: dict[str, Match] = {}
        with self._reading() as st:
            if st is None:
                return out
            want = set(keys)
            for it in st.items.values():
                if it.deleted:
                    continue
                for code in split_codes((it.extra or {}).get("barcode")):
                    for key in code_keys(code):
                        if key in want and key not in out:
                            out[key] = Match(it.id, it.title, it.price, 1.0, via="barcode")
            try:
                found = st.bundle.code_items([k for k in keys if k not in out])
            except BundleError as exc:
                self._faulted(exc)
            for key, iid in found.items():
                if iid in st.masked:
                    continue
                over = st.items.get(iid)
                if over is not None:   # edited since the build: its barcode may have changed
                    continue
                row = st.bundle.item(iid)
                if row is not None:
                    out[key] = Match(iid, row["title"], row["price"], 1.0, via="barcode")
        return out

    def thumbnail(self, item_id: str, photo: int = 0) -> bytes | None:
        """JPEG bytes of an item's thumbnail (a taught one first), looked up by id; None if unknown.
        ``photo``: which of a bundle item's photos (0: its first; an unknown one gives the first)."""
        item_id = str(item_id)
        with self._reading() as st:
            if st is None:
                return None
            it = st.items.get(item_id)
            if it is not None and it.deleted:
                return None
            if it is not None:
                data = self.store.thumbnail(item_id)
                if data is not None:
                    return data
            try:
                if photo:
                    data = st.bundle.thumbnail(item_id, photo)
                    if data is not None:
                        return data
                return st.bundle.thumbnail(item_id)
            except BundleError as exc:
                self._faulted(exc)

    def item(self, item_id: str) -> dict | None:
        """Metadata of one item (id, title, price, extra, taught, shots) or None if unknown or removed."""
        with self._reading() as st:
            if st is None:
                return None
            it = st.items.get(str(item_id))
            if it is not None:
                if it.deleted:
                    return None
                return {"id": it.id, "title": it.title, "price": it.price, "extra": it.extra, "taught": True,
                        "in_bundle": it.base, "shots": it.shots}
            try:
                b = st.bundle.item(str(item_id))
            except BundleError as exc:
                self._faulted(exc)
        if b is None:
            return None
        return {**b, "taught": False, "in_bundle": True, "shots": 0}

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(2.0)
        self._publish(None, "closed")
        self.store.close()

    # ------------------------------------------------------------ the empty scene
    @property
    def background(self) -> np.ndarray | None:
        """The empty scene's embedding (float32 [dim]) taken out of camera shots, or None."""
        return self.store.background()

    def set_background(self, vector: np.ndarray | None) -> None:
        """Remember the empty scene (``embed_background``) for later camera shots; None forgets it."""
        self.store.set_background(vector)

    # ------------------------------------------------------------ compaction
    def compact(self) -> dict:
        """Fold the changes into a new bundle (built beside the live one, then swapped in) and map it.

        Searches keep running on the current state meanwhile. Returns the compaction report.
        """
        self._last_compact = time.monotonic()
        report = compact(self._dir, self.store)
        self.reload()
        self.last_compaction = {**report, "finished": time.time()}
        return report

    def compact_in_background(self) -> bool:
        """Start ``compact`` in a thread unless one runs; True if started."""
        with self._reload_lock:
            if self._compactor is not None and self._compactor.is_alive():
                return False
            self._last_compact = time.monotonic()
            self._compactor = threading.Thread(target=self._compact_quietly, name="pi-search-compact",
                                               daemon=True)
            self._compactor.start()
            return True

    @property
    def compacting(self) -> bool:
        return self._compactor is not None and self._compactor.is_alive()

    def _compact_quietly(self) -> None:
        try:
            self.compact()
        except Exception as exc:  # the live catalog keeps serving; the changes stay in the store
            log.warning("background compaction failed: %s", exc)
            self.last_compaction = {"error": str(exc), "finished": time.time()}

    def _after_change(self) -> None:
        st = self._state
        if self.compact_after and st is not None and len(st.items) >= self.compact_after:
            self.compact_in_background()

    # ------------------------------------------------------------ changes
    def changes(self) -> list[TaughtItem]:
        """Items taught, edited or removed since the bundle was built, most recent first."""
        st = self._state
        if st is None:
            return []
        return sorted(st.items.values(), key=lambda it: (it.updated, it.seq), reverse=True)

    def folded(self, limit: int = 50) -> list[dict]:
        """Taught items a compaction already folded into the bundle, most recently taught first (at most
        ``limit``): ``{"id", "title", "price", "extra", "taught_at"}``. Items changed since are left out
        (``changes`` lists them)."""
        with self._reading() as st:
            if st is None:
                return []
            try:
                rows = st.bundle.items.taught_rows()
            except BundleError as exc:
                log.warning("%s: cannot list taught items (%s)", st.bundle.directory, exc)
                rows = []
        out = []
        for rid, title, price, extra in rows:
            extra = json.loads(extra or "{}")
            if VIEW_SEP in rid or rid in st.items or "taught_at" not in extra:
                continue
            out.append({"id": rid, "title": title, "price": price, "extra": extra,
                        "taught_at": float(extra["taught_at"])})
        return sorted(out, key=lambda d: d["taught_at"], reverse=True)[:limit]

    def add(self, title: str, price: str | None, vectors: np.ndarray, *, item_id: str | None = None,
            thumb: bytes | None = None, extra: dict | None = None) -> str:
        """Teach an item from shot embeddings (float32 [n, dim]); searchable on return. Returns its id."""
        item_id = check_id(item_id) if item_id else f"item-{uuid.uuid4().hex[:8]}"
        with self._reload_lock:
            st = self._serving()
            in_bundle = st.bundle.item(item_id) is not None
            if in_bundle and item_id not in st.masked and item_id not in st.items:
                raise ItemConflict(f"item {item_id!r} is already in the catalog; add shots to it with "
                                   f"pi-search item edit {item_id} --image PHOTO, or choose another id")
            others = self.store.data_version() != self._version or dir_key(self._dir) != st.key
            self.store.add(item_id, title, price, vectors, thumb=thumb, extra=extra, base=in_bundle)
            fast = None
            if not (others or in_bundle or item_id in st.items):
                # a plain new item: append it to the published state instead of reading every shot again
                row = self.store.get_row(item_id)
                if row is not None:
                    fast = self._appended(st, row, normalise(np.asarray(vectors, np.float32).reshape(
                        -1, st.bundle.dim)))
            if fast is not None:
                self._state = fast
            else:
                self.reload()
        self._after_change()
        return item_id

    def _base(self, item_id: str) -> dict | None:
        st = self._serving()
        if item_id in st.items:
            return None
        return st.bundle.item(item_id)

    def edit(self, item_id: str, *, title: str | None = None, price: str | None = None,
             vectors: np.ndarray | None = None, thumb: bytes | None = None, extra: dict | None = None,
             clear_price: bool = False) -> None:
        """Change an item's title/price/extra and/or add shots (float32 [n, dim]); searchable on return."""
        item_id = check_id(item_id)
        with self._reload_lock:
            base = self._base(item_id)
            if base is None and item_id not in self._state.items:
                raise NoSuchItem(f"no item {item_id!r} in the catalog; list them: pi-search item list")
            self.store.edit(item_id, title=title, price=price, vectors=vectors, thumb=thumb, extra=extra,
                            base_item=base, clear_price=clear_price)
            self.reload()
        self._after_change()

    def remove(self, item_id: str) -> None:
        """Remove an item (taught or from the bundle); it stops matching on return."""
        item_id = check_id(item_id)
        with self._reload_lock:
            base = self._base(item_id)
            if base is None and item_id not in self._state.items:
                raise NoSuchItem(f"no item {item_id!r} in the catalog; list them: pi-search item list")
            self.store.remove(item_id, base_item=base)
            self.reload()
        self._after_change()

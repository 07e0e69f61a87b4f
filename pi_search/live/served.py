"""The served bundle: opened, guarded (leases or a private copy), watched, reloaded, published as a view."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from ..bundle import MANIFEST, Bundle, read_manifest, slots
from ..errors import BundleError, CatalogError
from . import leases, snapshot
from . import view as views
from .changes import ChangeStore

log = logging.getLogger(__name__)

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


def open_store(path: Path, bundle: Bundle) -> ChangeStore:
    """The change store for ``bundle``, without the changes the bundle already holds."""
    cs = ChangeStore(path, dim=bundle.dim, model_sha256=bundle.manifest.model.sha256 or None)
    try:
        cs.forget(bundle.manifest.folded_seq)
    except BaseException:
        cs.close()
        raise
    return cs


def _let_go(bundle: Bundle, lease: leases.Leases | None) -> None:
    """Close a bundle that is not served (any more), give its leases back and drop its private copy."""
    bundle.close()
    if lease is not None:
        lease.release()
    if bundle.copy_of is not None:
        snapshot.drop(bundle.directory)


class Served:
    """The bundle at a directory and the change store beside it, published as one ``view.View`` at a time.

    Readers take the published view with ``reading()``; ``publish`` swaps in another and closes the bundle it
    replaces once no read of it runs (``_cv`` and ``_readers``), so a read never sees a closed bundle and
    never mixes two. ``lock`` (re-entrant) orders everything that reads the store and builds a view: reloads,
    changes, a lease being broken. ``protect`` (the daemon): never map files another process may overwrite
    in place unguarded: read leases where the kernel grants them (``guard``), else a private copy.
    """

    def __init__(self, directory: Path, store: ChangeStore, *, extractor=None, guard: bool = False,
                 trust=None, problem: str | None = None, store_path: Path | None = None):
        self.directory = Path(directory)
        self.store = store
        self._store_path = store_path   # the store to open with the first good bundle (none served yet)
        self.extractor = extractor
        self.protect = guard                  # never map files another process may truncate unguarded
        self.guard = guard and leases.enabled()   # ... by holding read leases on them (else private copies)
        self.trust = trust                # ``trust.Trust``: serve only bundles signed by its keys
        self.problem: str | None = problem
        self.refused: str | None = None   # why the bundle now at the directory is not served (the old one is)
        self.lock = threading.RLock()
        self.version = store.data_version()   # the store's data_version the published view was built from
        self._projections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Bundle -> Projection
        self._generations: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Bundle -> int
        self._last_generation = 0
        self._bad_key: tuple | None = None   # a bundle that failed to open: retried every RETRY_BAD_S only
        self._bad_since = 0.0
        self._seen_key: tuple | None = None  # files changing in place: opened once unchanged for SETTLE_S
        self._seen_since = 0.0
        self._cv = threading.Condition()     # reads in flight vs. letting a bundle go
        self._readers = 0
        self._closing = False
        self._leases: leases.Leases | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.view: views.View | None = None   # the published view (None: no bundle served, see ``problem``)

    def serve_opened(self, bundle: Bundle) -> None:
        """Publish ``bundle``, opened by the caller, with the store's changes (before any reader runs)."""
        self.view = self.build(bundle, dir_key(self.directory))

    # ------------------------------------------------------------ reading and publishing
    @contextlib.contextmanager
    def reading(self):
        """The view to read from; its bundle is never let go while a read of it runs."""
        with self._cv:
            self._cv.wait_for(lambda: not self._closing)
            self._readers += 1
        try:
            yield self.view
        finally:
            with self._cv:
                self._readers -= 1
                if self._readers == 0:
                    self._cv.notify_all()

    def publish(self, view: views.View | None, problem: str | None = None,
                lease: leases.Leases | None = None) -> None:
        """Serve ``view`` (None: nothing, because of ``problem``) guarded by ``lease``; the bundle it
        replaces is closed once no read of it is running, and its leases are given back."""
        if view is not None and self.view is not None and view.bundle is self.view.bundle:
            self.view, self.problem = view, None   # the same bundle with newer changes: nothing to let go
            return
        with self._cv:
            self._closing = True
            self._cv.wait_for(lambda: self._readers == 0)
            old, self.view = self.view, view
            old_lease = self._leases
            if view is None or old is None or view.bundle is not old.bundle:
                self._leases = lease
            self.problem = problem
            self._closing = False
            self._cv.notify_all()
        if old is not None and (view is None or old.bundle is not view.bundle):
            _let_go(old.bundle, old_lease)

    def build(self, bundle: Bundle, key, snap=None) -> views.View:
        """The view of ``bundle`` (found at ``key``) with the store's changes (``snap``: read now if None)."""
        return views.build(bundle, key, self.store.snapshot() if snap is None else snap,
                           self.generation_of(bundle), self._projection)

    def _projection(self, bundle: Bundle):
        if bundle not in self._projections:
            self._projections[bundle] = views.coarse_projection(bundle)
        return self._projections[bundle]

    def generation_of(self, bundle: Bundle) -> int:
        """The generation of ``bundle``: a number given to each bundle when it is first served."""
        with self._cv:
            if bundle not in self._generations:
                self._last_generation += 1
                self._generations[bundle] = self._last_generation
            return self._generations[bundle]

    def others_changed(self, view: views.View) -> bool:
        """True when another process changed the store, or another bundle is at the directory, since
        ``view`` was built."""
        return self.store.data_version() != self.version or dir_key(self.directory) != view.key

    @property
    def signed(self):
        """The signature (``signing.Signed``) of the bundle served, when ``trust`` asked for one."""
        v = self.view
        return None if v is None else getattr(v.bundle, "signed", None)

    def serving_view(self) -> views.View:
        """The published view, or BundleError saying why there is none (changes need a bundle)."""
        v = self.view
        if v is None:
            raise BundleError(f"no catalog is served right now: {self.problem}")
        return v

    # ------------------------------------------------------------ opening a bundle
    def _open_served(self) -> tuple[Bundle, leases.Leases | None]:
        """``_open_mapped`` after the signing rules of ``trust`` (when set) passed for the bundle; its files
        are then checked against the manifest the signature covers."""
        slot = slots.active(self.directory)   # read before the bundle: a switch meanwhile is seen next time
        if self.trust is None:
            bundle, lease = self._open_mapped()
            bundle.served_slot = slot
            return bundle, lease
        signed, manifest = self.trust.admit(self.directory, self.signed)
        bundle, lease = self._open_mapped(manifest)
        if bundle.manifest.to_dict() != manifest.to_dict():   # the one read is the one signed
            _let_go(bundle, lease)
            raise BundleError(f"{self.directory / MANIFEST}: file changed while it was checked (a copy in "
                              "progress?); waiting for the copy to finish")
        bundle.signed, bundle.served_slot = signed, slot
        return bundle, lease

    def _open_mapped(self, manifest=None) -> tuple[Bundle, leases.Leases | None]:
        """Check and map the bundle at the directory the way ``protect`` asks; BundleError says why not.

        Without ``protect``: its files, as they are. With it: its files under read leases (``guard``); where
        leases cannot be had, a private copy of them (checked while copied); where that does not fit on the
        disk either, its files as they are, with a warning.
        """
        if not self.protect:
            return Bundle.open(self.directory, extractor=self.extractor), None
        manifest = manifest or read_manifest(self.directory)
        lease = None
        if self.guard:
            names = sorted({Path(n).name for n in manifest.files} | set(manifest.opened_files()) | {MANIFEST})
            try:   # every file: a private copy, made when one is about to change, needs them all unchanged
                lease = leases.Leases([self.directory / n for n in names], self._on_lease_break)
            except leases.LeaseBusy as exc:
                raise BundleError(f"{exc.strerror}: a copy into the bundle is in progress") from None
            except FileNotFoundError as exc:
                raise BundleError(f"{exc.filename}: missing; copy the whole bundle again (pi-search index "
                                  f"install) or rebuild it: pi-search index build CATALOG --out "
                                  f"{self.directory}") from None
            except OSError as exc:
                log.warning("%s: cannot take read leases on the bundle's files (%s)", self.directory, exc)
                lease = None
            if lease is not None and lease.unguarded:
                log.info("%s: the files %s cannot be leased (owned by another user?)", self.directory,
                         ", ".join(p.name for p in lease.unguarded))
                lease.release()
                lease = None
        if lease is not None:
            try:
                bundle = Bundle.open(self.directory, extractor=self.extractor, deep=True)
            except BaseException:
                lease.release()
                raise
            if not lease.held() or bundle.manifest.files != manifest.files:   # written to while checked
                bundle.close()
                lease.release()
                raise BundleError(f"{self.directory}: its files are being written (a copy in progress?); "
                                  "waiting for the copy to finish")
            lease.bundle = bundle
            return bundle, lease
        if not snapshot.fits(self.directory, manifest):
            log.warning("%s: its files cannot be guarded against in-place copies and a private copy (%d MB) "
                        "does not fit beside it; replace the bundle only with pi-search index install",
                        self.directory, snapshot.size_of(manifest) >> 20)
            return Bundle.open(self.directory, extractor=self.extractor, deep=True), None
        return self._open_copy(self.directory, manifest), None

    def _open_copy(self, directory: Path, manifest, seconds: float | None = None) -> Bundle:
        """A private copy of the bundle at ``directory`` (checked while copied), opened."""
        try:
            copy = snapshot.take(directory, manifest, seconds=seconds)
        except OSError as exc:
            raise snapshot.copy_error(exc, self.directory) from None
        try:
            bundle = Bundle.open(copy, extractor=self.extractor)
        except BaseException:
            snapshot.drop(copy)
            raise
        bundle.copy_of = self.directory
        log.info("%s: serving a private copy of its files (%s)", self.directory, copy.name)
        return bundle

    def _on_lease_break(self, lease: leases.Leases) -> None:
        """Another process opened a file of the served bundle for writing, and waits until this returns:
        serve a private copy of the files as they still are, or let the bundle go if that cannot be had in
        time."""
        budget = _lease_break_s() / 2
        t0 = time.monotonic()
        # a reload that is opening this lease's bundle publishes it first (a lease it has not published yet
        # is let go, and that reload then refuses the bundle: ``Leases.held``)
        locked = self.lock.acquire(timeout=budget / 2)
        try:
            st = self.view
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
                    self.publish(self.build(copied, st.key))
                except (BundleError, OSError, TimeoutError) as exc:
                    log.warning("%s: cannot copy the bundle aside (%s)", self.directory, exc)
                    if copied is not None:
                        copied.close()
                        snapshot.drop(copied.directory)
                    copied = None
            if copied is not None:
                log.warning("%s: a file of the bundle is being overwritten in place; serving a private copy "
                            "of it (made in %.2f s) until the new bundle is complete and checked",
                            self.directory, time.monotonic() - t0)
            else:
                log.warning("%s: a file of the bundle is being overwritten in place; serving nothing until "
                            "the new bundle is complete", self.directory)
                self.publish(None, f"the bundle at {self.directory} is being replaced (its files are being "
                                   "overwritten); waiting for the copy to finish")
            self._seen_key, self._seen_since = dir_key(self.directory), time.monotonic()
        finally:
            if locked:
                self.lock.release()

    # ------------------------------------------------------------ reloading
    def failed_to_open(self, key: tuple | None) -> None:
        """The bundle at ``key`` could not be opened: tried again only every ``RETRY_BAD_S``."""
        self._bad_key, self._bad_since = key, time.monotonic()

    def reload(self, *, strict: bool = False) -> None:
        """Read the store again and, if another bundle is at the directory now, check it and map it.

        A bundle that fails its checks is not mapped: the one in use keeps serving (``strict``: BundleError
        says why, for /api/reload and SIGHUP).
        """
        with self.lock:
            self.version = self.store.data_version()
            snap = self.store.snapshot()   # first the store, then the bundle: see compact.compact
            key = dir_key(self.directory)
            st = self.view
            if st is not None and (key is None or key == st.key):
                self.publish(self.build(st.bundle, st.key, snap))
                return
            try:
                if key is None:
                    raise BundleError(f"{self.directory}: no such bundle directory; build one: pi-search "
                                      f"index build CATALOG --out {self.directory}")
                bundle, lease = self._open_served()
                try:
                    if self._store_path is not None:
                        self._first_store(bundle)
                        snap = self.store.snapshot()
                except BaseException:
                    _let_go(bundle, lease)
                    raise
            except BundleError as exc:
                if key != self._bad_key:
                    log.warning("%s: %s", "keeping the bundle in use" if st is not None else
                                "no usable bundle yet, serving nothing until one is in place", exc)
                self.failed_to_open(key)
                if st is not None:
                    self.refused = str(exc)
                    self.publish(self.build(st.bundle, st.key, snap))
                else:
                    self.problem = str(exc)
                if strict:
                    raise
                return
            self._bad_key, self.refused = None, None
            log.info("bundle %s opened: %d items", self.directory, len(bundle))
            self.publish(self.build(bundle, key, snap), None, lease)

    def _first_store(self, bundle: Bundle) -> None:
        """Open the change store beside the directory now that a bundle says which model its items need."""
        try:
            cs = open_store(self._store_path, bundle)
        except CatalogError as exc:
            raise BundleError(str(exc)) from exc
        old, self.store, self._store_path = self.store, cs, None
        self.version = cs.data_version()
        old.close()

    def _settled(self, key: tuple, now: float) -> bool:
        """True when the bundle at ``key`` may be opened: a folder swapped in whole at once, or files that
        stayed unchanged for ``SETTLE_S`` (a copy into the folder has finished)."""
        st = self.view
        if st is not None and st.key is not None and key[0] != st.key[0]:
            return True
        if key != self._seen_key:
            self._seen_key, self._seen_since = key, now
            return False
        return now - self._seen_since >= SETTLE_S

    def refresh(self) -> None:
        """Reload if another process changed the store or put another bundle in place (and its files have
        settled); a bundle that failed to open is tried again after ``RETRY_BAD_S``."""
        now = time.monotonic()
        st = self.view
        key = dir_key(self.directory)
        moved = (key is not None and key != (st.key if st is not None else None)
                 and (key != self._bad_key or now - self._bad_since >= RETRY_BAD_S)
                 and self._settled(key, now))
        if moved or self.store.data_version() != self.version:
            self.reload()

    # ------------------------------------------------------------ watching and closing
    def watch(self, tick: Callable[[], None], every_s: float) -> None:
        """Call ``tick`` every ``every_s`` seconds in a background thread until ``close``."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, args=(tick, every_s),
                                             name="pi-search-catalog", daemon=True)
            self._watcher.start()

    def _watch(self, tick: Callable[[], None], every_s: float) -> None:
        while not self._stop.wait(max(every_s, 0.05)):
            tick()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(2.0)
        self.publish(None, "closed")
        self.store.close()

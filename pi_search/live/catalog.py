"""The live catalog: the served bundle, its change store and their compaction, searched as one catalog."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from pathlib import Path

import numpy as np

from ..bundle import Bundle, Match, check_id, normalise, recover
from ..errors import BundleError, ItemConflict, NoSuchItem
from . import snapshot
from . import view as views
from .changes import ChangeStore, TaughtItem, store_path
from .compact import compact
from .compaction import Compaction
from .served import Served, dir_key, open_store
from .teaching import Teaching

log = logging.getLogger(__name__)

REFRESH_S = 1.0            # how often another process's changes are looked for

__all__ = ["LiveCatalog", "dir_key"]


class LiveCatalog:
    """A Bundle plus a ChangeStore, searched as one catalog with the Bundle's interface.

    ``search(vector, k)`` takes float32 [dim], L2-normalised, and returns ``Match`` objects best first, each
    item once (its best shot). Changes made through this object are searchable when the call returns;
    changes made by another process, and a bundle swapped by a compaction, are picked up within
    ``refresh_s`` seconds.

    The parts: ``served`` (``served.Served``: the bundle mapped, guarded, reloaded and published as one
    ``view.View`` at a time), ``compaction`` (``compaction.Compaction``: when changes are folded) and
    ``teaching`` (``teaching.Teaching``: shots in, items out, for the page and the CLI alike).

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
                 store_path: Path | None = None, trust=None):
        self.refresh_s = refresh_s
        self.served = Served(Path(directory if directory is not None else bundle.directory), store,
                             extractor=extractor, guard=guard, trust=trust, problem=problem,
                             store_path=store_path)
        self.compaction = Compaction(self._fold, after=compact_after, every_s=compact_every_s)
        self.fault: tuple[float, str] | None = None   # the last read that failed while serving
        self.teaching = Teaching(self)   # the one teaching service over this catalog
        if bundle is not None:
            self.served.serve_opened(bundle)

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
        args = {"extractor": extractor, "refresh_s": refresh_s, "compact_after": compact_after,
                "compact_every_s": compact_every_s}
        if guard:
            return cls._open_guarded(directory, path, wait, trust=trust, **args)
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
                cs = open_store(path, bundle)
            except BaseException:
                bundle.close()
                raise
            return cls(bundle, cs, directory=directory, **args)
        log.warning("no usable bundle yet: %s; serving nothing until one is in place", problem)
        cs = ChangeStore(":memory:", dim=int(extractor.dim), model_sha256=extractor.sha256)
        cat = cls(None, cs, problem=problem, directory=directory, store_path=path, **args)
        cat.served.failed_to_open(key)
        return cat

    @classmethod
    def _open_guarded(cls, directory: Path, path: Path, wait: bool, *, extractor, trust=None, **args
                      ) -> LiveCatalog:
        """The daemon's catalog: the bundle is opened the way a reload opens one (``Served.reload``)."""
        if extractor is None:
            raise ValueError("a guarded catalog needs the extractor (its model decides which bundle fits)")
        snapshot.clear(directory)
        # the store is opened with the first good bundle (its model decides whose items fit)
        cs = ChangeStore(":memory:", dim=int(extractor.dim), model_sha256=extractor.sha256)
        cat = cls(None, cs, directory=directory, extractor=extractor, guard=True, store_path=path,
                  problem="starting", trust=trust, **args)
        try:
            cat.reload(strict=not wait)
        except BaseException:
            cat.close()
            raise
        return cat

    # ------------------------------------------------------------ the served bundle
    @property
    def store(self) -> ChangeStore:
        return self.served.store

    @property
    def extractor(self):
        return self.served.extractor

    @property
    def view(self) -> views.View | None:
        """The published view (the bundle and the changes it does not hold yet); None while none is served."""
        return self.served.view

    @property
    def problem(self) -> str | None:
        """Why no bundle is served (None while one is)."""
        return self.served.problem

    @property
    def refused(self) -> str | None:
        """Why the bundle now at the directory is not served (the old one is)."""
        return self.served.refused

    @property
    def trust(self):
        """``trust.Trust``: serve only bundles signed by its keys (None: any bundle)."""
        return self.served.trust

    @property
    def signed(self):
        """The signature (``signing.Signed``) of the bundle served, when ``trust`` asked for one."""
        return self.served.signed

    @property
    def serving(self) -> bool:
        return self.served.view is not None

    @property
    def generation(self) -> int:
        """The served bundle's generation (0 while none is served)."""
        v = self.served.view
        return 0 if v is None else v.generation

    @property
    def bundle(self) -> Bundle | None:
        v = self.served.view
        return None if v is None else v.bundle

    @property
    def directory(self) -> Path:
        return self.served.directory

    @property
    def manifest(self):
        """The served bundle's ``Manifest`` (None while none is served)."""
        v = self.served.view
        return None if v is None else v.bundle.manifest

    @property
    def dim(self) -> int:
        return self.store.dim

    def __len__(self) -> int:
        v = self.served.view
        return 0 if v is None else v.size

    def watch(self) -> LiveCatalog:
        """Look for changes by other processes and bundles put in place every ``refresh_s`` seconds in a
        background thread (the daemon), even while nothing is searched."""
        self.served.watch(self.refresh, self.refresh_s)
        return self

    def reload(self, *, strict: bool = False) -> None:
        """Read the store again and, if another bundle is at the directory now, check it and map it
        (``Served.reload``; ``strict``: BundleError when the new bundle is refused)."""
        self.served.reload(strict=strict)

    def refresh(self) -> None:
        """Reload if another process changed the store or put another bundle in place; start a compaction
        when one is due (``compact_every_s``). The watcher calls it every ``refresh_s`` seconds (``watch``);
        a search never does."""
        v = self.served.view
        self.compaction.tick(0 if v is None else len(v.items))
        try:
            self.served.refresh()
        except Exception as exc:  # a failed refresh keeps serving the last good state
            log.warning("refreshing the catalog failed: %s", exc)

    def close(self) -> None:
        self.served.close()

    def __enter__(self) -> LiveCatalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ reading
    def search(self, vector: np.ndarray, k: int = 5) -> list[Match]:
        """Top-k items for an embedding (float32 [dim], L2-normalised), best first, each item once, all found
        in one bundle (their ``generation``).

        Reads the published view only: no reload, no compaction (``refresh`` does those)."""
        q = normalise(np.asarray(vector, dtype=np.float32).reshape(-1))
        k = max(1, int(k))
        best: dict[str, Match] = {}
        with self.served.reading() as v:
            if v is None:
                return []
            views.search(v, v.bundle.to_learned(q), k, best)   # projected once, for bundle and taught shots
        return sorted(best.values(), key=lambda m: -m.score)[:k]

    def search_mean(self, vectors: np.ndarray, k: int = 5) -> list[Match]:
        """Top-k items scored by the mean of their cosines with each of ``vectors`` (float32 [m, dim],
        L2-normalised embeddings), with one search: the mean of the vectors in the stored rows' space (through
        the learned projection), its scores times the mean's length."""
        vs = normalise(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        k = max(1, int(k))
        best: dict[str, Match] = {}
        with self.served.reading() as v:
            if v is None:
                return []
            q = v.bundle.to_learned(vs).mean(axis=0)
            n = float(np.linalg.norm(q))
            if n <= 1e-6:
                q, n = v.bundle.to_learned(vs[0]), 1.0
            else:
                q = q / n
            views.search(v, q, k, best)
        return [dataclasses.replace(m, score=m.score * n)
                for m in sorted(best.values(), key=lambda m: -m.score)[:k]]

    def _faulted(self, exc: BundleError) -> None:
        """A read of the served bundle failed: remembered for /healthz, and raised for this request only."""
        self.fault = (time.time(), str(exc))
        log.error("%s", exc)
        raise exc

    def code_items(self, keys: list[str]) -> dict[str, Match]:
        """``key -> Match`` (score 1, via "barcode") of the barcode keys (``barcodes.codes.keys``) that name
        a served item: a taught item's ``barcode`` first, then the bundle's codes table."""
        with self.served.reading() as v:
            if v is None:
                return {}
            try:
                return views.code_items(v, keys)
            except BundleError as exc:
                self._faulted(exc)

    def thumbnail(self, item_id: str, photo: int = 0) -> bytes | None:
        """JPEG bytes of an item's thumbnail (a taught one first), looked up by id; None if unknown.
        ``photo``: which of a bundle item's photos (0: its first; an unknown one gives the first)."""
        item_id = str(item_id)
        with self.served.reading() as v:
            if v is None:
                return None
            it = v.items.get(item_id)
            if it is not None and it.deleted:
                return None
            if it is not None:
                data = self.store.thumbnail(item_id)
                if data is not None:
                    return data
            try:
                if photo:
                    data = v.bundle.thumbnail(item_id, photo)
                    if data is not None:
                        return data
                return v.bundle.thumbnail(item_id)
            except BundleError as exc:
                self._faulted(exc)

    def item(self, item_id: str) -> dict | None:
        """Metadata of one item (id, title, price, extra, taught, in_bundle, shots) or None if unknown or
        removed."""
        with self.served.reading() as v:
            if v is None:
                return None
            try:
                return views.item(v, str(item_id))
            except BundleError as exc:
                self._faulted(exc)

    def changes(self) -> list[TaughtItem]:
        """Items taught, edited or removed since the bundle was built, most recent first."""
        return views.changes(self.served.view)

    def folded(self, limit: int = 50) -> list[dict]:
        """Taught items a compaction already folded into the bundle, most recently taught first (at most
        ``limit``): ``{"id", "title", "price", "extra", "taught_at"}``. Items changed since are left out
        (``changes`` lists them)."""
        with self.served.reading() as v:
            return [] if v is None else views.folded(v, limit)

    # ------------------------------------------------------------ the empty scene
    @property
    def background(self) -> np.ndarray | None:
        """The empty scene's embedding (float32 [dim]) taken out of camera shots, or None."""
        return self.store.background()

    def set_background(self, vector: np.ndarray | None) -> None:
        """Remember the empty scene (``embed_background``) for later camera shots; None forgets it."""
        self.store.set_background(vector)

    # ------------------------------------------------------------ compaction
    def _fold(self) -> dict:
        report = compact(self.directory, self.store)
        self.reload()
        return report

    def compact(self) -> dict:
        """Fold the changes into a new bundle (built beside the live one, then swapped in) and map it.

        Searches keep running on the current view meanwhile. Returns the compaction report.
        """
        return self.compaction.run()

    def compact_in_background(self) -> bool:
        """Start ``compact`` in a thread unless one runs; True if started."""
        return self.compaction.start()

    @property
    def compacting(self) -> bool:
        return self.compaction.running

    @property
    def last_compaction(self) -> dict | None:
        """The last compaction's report (or ``{"error"}``) with the time it ``finished``; None before one."""
        return self.compaction.last

    def _after_change(self) -> None:
        v = self.served.view
        if v is not None:
            self.compaction.after_change(len(v.items))

    # ------------------------------------------------------------ changes
    def add(self, title: str, price: str | None, vectors: np.ndarray, *, item_id: str | None = None,
            thumb: bytes | None = None, extra: dict | None = None) -> str:
        """Teach an item from shot embeddings (float32 [n, dim]); searchable on return. Returns its id."""
        item_id = check_id(item_id) if item_id else f"item-{uuid.uuid4().hex[:8]}"
        served = self.served
        with served.lock:
            v = served.serving_view()
            in_bundle = v.bundle.item(item_id) is not None
            if in_bundle and item_id not in v.masked and item_id not in v.items:
                raise ItemConflict(f"item {item_id!r} is already in the catalog; add shots to it with "
                                   f"pi-search item edit {item_id} --image PHOTO, or choose another id")
            others = served.others_changed(v)
            self.store.add(item_id, title, price, vectors, thumb=thumb, extra=extra, base=in_bundle)
            fast = None
            if not (others or in_bundle or item_id in v.items):
                # a plain new item: append it to the published view instead of reading every shot again
                row = self.store.get_row(item_id)
                if row is not None:
                    fast = views.appended(v, row, normalise(np.asarray(vectors, np.float32).reshape(
                        -1, v.bundle.dim)))
            if fast is not None:
                served.publish(fast)   # the same bundle: nothing to let go, no reader waits
            else:
                served.reload()
        self._after_change()
        return item_id

    def _base(self, item_id: str) -> dict | None:
        v = self.served.serving_view()
        if item_id in v.items:
            return None
        return v.bundle.item(item_id)

    def edit(self, item_id: str, *, title: str | None = None, price: str | None = None,
             vectors: np.ndarray | None = None, thumb: bytes | None = None, extra: dict | None = None,
             clear_price: bool = False) -> None:
        """Change an item's title/price/extra and/or add shots (float32 [n, dim]); searchable on return."""
        item_id = check_id(item_id)
        with self.served.lock:
            base = self._base(item_id)
            if base is None and item_id not in self.served.view.items:
                raise NoSuchItem(f"no item {item_id!r} in the catalog; list them: pi-search item list")
            self.store.edit(item_id, title=title, price=price, vectors=vectors, thumb=thumb, extra=extra,
                            base_item=base, clear_price=clear_price)
            self.served.reload()
        self._after_change()

    def remove(self, item_id: str) -> None:
        """Remove an item (taught or from the bundle); it stops matching on return."""
        item_id = check_id(item_id)
        with self.served.lock:
            base = self._base(item_id)
            if base is None and item_id not in self.served.view.items:
                raise NoSuchItem(f"no item {item_id!r} in the catalog; list them: pi-search item list")
            self.store.remove(item_id, base_item=base)
            self.served.reload()
        self._after_change()

"""Learning a bundle's projection again where it serves: views of its items' thumbnails, also on the
kiosk's own empty scenes, folded onto the projection it has and written as a new bundle generation."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .. import images
from ..bundle import BuildOptions, Bundle, Item, bundle_lock, normalise, recover, write_bundle
from ..errors import BundleError, ImageError
from ..learn import catalog as learning
from ..learn import views as synth
from ..learn.whiten import SHRINK, Learned, PairStats
from ..progress import Progress

log = logging.getLogger(__name__)

SCENES_SUFFIX = ".scenes"   # NAME.scenes/ beside a bundle: the empty scenes staff captured (JPEG)
SCENES_KEPT = 32            # the most recent captured scenes kept there
SCENE_SIDE = 480            # a background's long side, as the packaged room photos are read
# the step's shrinkage: it corrects a space whitened already; 1.0 lost less recall than 0.2 on the public
# benchmarks after a relearn on two plain counters (bench/relearn_cost.py, docs/quality.md)
STEP_SHRINK = 1.0


def scenes_dir(bundle_dir: str | Path) -> Path:
    """Where the empty scenes captured for ``bundle_dir`` are kept (beside it: a new bundle generation
    replaces the bundle directory whole, not this)."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.parent / f"{bundle_dir.name}{SCENES_SUFFIX}"


def keep_scene(bundle_dir: str | Path, jpeg: bytes) -> Path:
    """Save one captured empty scene (JPEG bytes) for a later relearn; the oldest past ``SCENES_KEPT`` go."""
    folder = scenes_dir(bundle_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scene-{time.time_ns()}.jpg"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(jpeg)
    tmp.replace(path)
    for old in sorted(folder.glob("scene-*.jpg"))[:-SCENES_KEPT]:
        old.unlink(missing_ok=True)
    return path


def read_backgrounds(folder: str | Path) -> list[np.ndarray]:
    """Every readable photo in ``folder`` as RGB uint8 [H, W, 3], long side at most ``SCENE_SIDE`` (the
    unreadable ones are left out with a warning)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"--backgrounds {folder}: not a folder; give a folder of photos of the empty "
                          "counter")
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
            continue
        try:
            rgb = images.read(p)
        except (ImageError, OSError) as exc:
            log.warning("%s: left out of the backgrounds (%s)", p, exc)
            continue
        out.append(_fit(rgb, SCENE_SIDE))
    return out


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


class _Rows:
    """The stored rows (float32 [n, d]) seen through ``turn`` (float32 [d', d]), a slice at a time, each
    L2-normalised: the rows of the new bundle generation."""

    def __init__(self, store, n: int, turn: np.ndarray, mean: np.ndarray | None = None):
        self._store, self._turn, self._mean = store, turn, mean
        self.shape = (int(n), int(turn.shape[0]))
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl):
        idx = np.arange(self.shape[0])[sl]
        x = self._store.full(np.asarray(idx, np.int64).reshape(-1))
        if self._mean is not None:
            x = x - self._mean
        return normalise(x @ self._turn.T)


class _Items:
    """The bundle's items in row order, metadata and thumbnails as they are."""

    def __init__(self, items, n: int):
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        for start in range(0, self._n, 512):
            rows = self._items.rows(list(range(start, min(self._n, start + 512))))
            for i in range(start, min(self._n, start + 512)):
                _, item_id, title, price = rows[i]
                meta = self._items.item(item_id) or {}
                yield Item(item_id, title, price, meta.get("extra") or {}, self._items.thumbnail(item_id))


def relearn(bundle_dir: str | Path, extractor, *, backgrounds: list[np.ndarray] | None = None,
            n_views: int = learning.VIEWS, progress: bool = True, shrink: float | None = None) -> dict:
    """Learn ``bundle_dir``'s projection again from synthetic views of its items' thumbnails (256 px, what
    the views need), on the packaged room photos and ``backgrounds`` (RGB uint8: the kiosk's empty scenes),
    and write the result as a new bundle generation (``write_bundle``: built beside it, swapped in whole).

    The new step is a whitening of what the views still differ from their item by, in the space the rows are
    stored in, folded onto the bundle's projection (``matrix' = W matrix``, same mean, same dims): every
    stored row, taught ones folded in by a compaction too, is turned exactly (``normalise(W row)``), with no
    photo read again. A bundle without a projection (``--no-learn``) learns one as ``index build`` does.
    Holds the bundle's lock; until the swap the old bundle serves, and a failure leaves it as it was.
    ``shrink``: the step's shrinkage (default ``STEP_SHRINK``; from scratch ``whiten.SHRINK``).
    Returns a report (items, views, seconds, manifest's ``learned`` entry)."""

    bundle_dir = Path(bundle_dir)
    t0 = time.perf_counter()
    with bundle_lock(bundle_dir, what="pi-search index relearn"):
        recover(bundle_dir, locked=True)
        with Bundle.open(bundle_dir, extractor=extractor) as bundle:
            m = bundle.manifest
            if m.store.space == "pca":
                raise BundleError(f"{bundle_dir}: its store holds PCA vectors (ivfpq); relearn works on "
                                  "bundles with a full store: rebuild it with pi-search index build")
            old = bundle.learned
            n = len(bundle)
            dim = m.stored_dim
            store = bundle.store
            found = bundle.items
            ids = [r[1] for _, r in sorted(found.rows(list(range(n))).items())]
            rooms = synth.room_backgrounds() + list(backgrounds or [])
            sample = learning.sample_rows(n)
            bar = Progress(len(sample), 0, progress, "relearning from views of", "relearned from")

            def thumbs():
                for i in sample.tolist():
                    jpeg = found.thumbnail(ids[i])
                    if not jpeg:
                        continue
                    try:
                        rgb = images.decode(jpeg, name=f"the thumbnail of {ids[i]}")
                    except ImageError as exc:
                        log.warning("%s: left out of the relearning (%s)", ids[i], exc)
                        continue
                    rows_seen.append(i)
                    yield ids[i], rgb

            rows_seen: list[int] = []
            stats = PairStats(dim)
            try:
                for k, views in enumerate(learning.item_views(extractor, thumbs(), n_views,
                                                              backgrounds=rooms)):
                    photo = store.full(np.array([rows_seen[k]], np.int64))[0]
                    stats.add(photo / max(float(np.linalg.norm(photo)), 1e-12),
                              old.apply(views) if old is not None else views)
                    bar.update()
            finally:
                bar.close()
            if len(rows_seen) < learning.MIN_ITEMS:
                raise BundleError(f"{bundle_dir}: fewer than {learning.MIN_ITEMS} items with a thumbnail to "
                                  "learn from; rebuild it with thumbnails (pi-search index build)")
            if old is not None:   # a whitening in the stored rows' space, folded onto the projection
                shrink = STEP_SHRINK if shrink is None else shrink
                step = stats.fit(shrink=shrink)
                new = Learned(old.mean, np.ascontiguousarray(step.matrix @ old.matrix))
                rows = _Rows(store, n, step.matrix)
            else:
                shrink = SHRINK if shrink is None else shrink
                new = stats.fit(shrink=shrink, dims=learning.DIMS)
                rows = _Rows(store, n, new.matrix, new.mean)
            info = {k: v for k, v in (m.learned or {"type": "whitening"}).items()
                    if k not in ("mean", "matrix", "dims")}
            info["relearned"] = {"items": stats.items, "views_per_item": int(n_views), "pairs": stats.pairs,
                                 "backgrounds": len(backgrounds or []), "shrinkage": float(shrink),
                                 "seconds": round(time.perf_counter() - t0, 2),
                                 "times": int((m.learned or {}).get("relearned", {}).get("times", 0)) + 1}
            model = {"name": m.model.name, "sha256": m.model.sha256, "dim": m.model.dim}
            extra = {"catalog": m.catalog, **({"changes": m.changes} if m.changes else {})}
            options = BuildOptions.from_manifest(m)   # searched like the bundle it replaces
            manifest = write_bundle(bundle_dir, rows, _Items(found, n), model=model, options=options,
                                    extra_manifest=extra, locked=True, learned=new, learned_info=info,
                                    learned_applied=True)
    report = {"bundle": str(bundle_dir), "items": manifest.items, **info["relearned"],
              "seconds": round(time.perf_counter() - t0, 2)}
    log.info("relearned %s from %d items' views (%d backgrounds of its own) in %.1f s", bundle_dir,
             report["items"], report["backgrounds"], report["seconds"])
    return json.loads(json.dumps(report))

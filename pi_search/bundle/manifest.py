"""The bundle's manifest as a typed object: what every file of a bundle is and how it is searched."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import BundleError
from .backends import BACKENDS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS_FILE = "items.sqlite"
STORE_FILE = "vectors.npy"
STORE_SCALE_FILE = "vectors_scale.npy"
PCA_MEAN_FILE = "pca_mean.npy"
PCA_COMPONENTS_FILE = "pca_components.npy"
PCA_FOLD_FILE = "pca_fold.npy"                # a learned projection folded into the PCA (projection.Fold)
LEARNED_MEAN_FILE = "learned_mean.npy"        # the projection learned from the catalog (pi_search.learn)
LEARNED_MATRIX_FILE = "learned_matrix.npy"
SEARCH_KEYS = ("mode", "candidates", "search_k", "nprobe")


def _rebuild(directory: Path) -> str:
    return f"rebuild the bundle: pi-search index build CATALOG --out {directory}"


@dataclass(frozen=True)
class ModelRef:
    """The model whose embeddings a bundle holds."""

    name: str
    sha256: str
    dim: int


@dataclass(frozen=True)
class StoreEntry:
    """The full-dimension vector store: ``file`` of ``dtype`` rows (int8 rows with per-row ``scale``)."""

    file: str = STORE_FILE
    dtype: str = "float32"
    scale: str | None = None
    space: str | None = None      # "pca": rows are int8 PCA coordinates (``index.pca_store``), else full
    dims: int | None = None       # ... of that many dims
    offset: str | None = None     # ... with each row's exact ``mean . x`` in this file


@dataclass(frozen=True)
class ProjectionEntry:
    """The PCA the index was built on (the store keeps full vectors). ``fold``: the file of what the PCA
    keeps of the learned projection folded into it (``projection.Fold``), with ``fold_rest`` and
    ``fold_residual``; None when the
    bundle's PCA was fitted on the stored rows themselves."""

    dims: int
    whiten: bool
    explained_variance: float
    mean: str = PCA_MEAN_FILE
    components: str = PCA_COMPONENTS_FILE
    fold: str | None = None
    fold_rest: float = 0.0
    fold_residual: float = 0.0


@dataclass(frozen=True)
class SearchSettings:
    """How queries run: ``exact`` over the store, or ``ann`` (backend candidates re-ranked on the store)."""

    mode: str = "exact"
    candidates: int = 100
    search_k: int = 10_000
    nprobe: int = 0               # ivfpq: inverted lists scanned per query (0: not that backend)


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of a bundle, read once and checked.

    ``index`` is the backend's own entry (``backend``, ``file``, ``dim`` and what that backend needs to open
    the file again); ``changes`` holds ``folded_seq`` (the last taught change a compaction folded in) and
    ``views`` (rows holding further shots of an item); ``files`` the size, sample and SHA-256 of every file;
    ``extra`` any other entry, kept as written.
    """

    format_version: int
    items: int
    model: ModelRef
    index: dict
    store: StoreEntry
    search: SearchSettings
    projection: ProjectionEntry | None = None
    items_file: str = ITEMS_FILE
    created: str | None = None
    build_seconds: float | None = None
    catalog: dict | None = None
    changes: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return str(self.index.get("backend", "annoy"))

    @property
    def learned(self) -> dict | None:
        """The ``learned`` entry: the projection learned from the catalog's own photos at build time
        (``type``, ``dims``, ``mean`` and ``matrix`` files, how it was learned), or None. Stored vectors are
        in its space; a query is projected the same way before it is searched. With ``"folded": "pca"`` the
        projection is part of the PCA (ivfpq: ``projection.fold_learned``) and has no files of its own."""
        entry = self.extra.get("learned")
        return dict(entry) if isinstance(entry, dict) else None

    @property
    def stored_dim(self) -> int:
        """Dims of the stored rows: the learned projection's output when the bundle has one (and it is not
        folded into the PCA), else the model's (``model.dim`` is what a query embedding has before it is
        projected)."""
        entry = self.learned
        if not entry or entry.get("folded"):   # folded into the PCA: rows and queries start as embeddings
            return int(self.model.dim)
        return int(entry.get("dims") or self.model.dim)

    @property
    def folded_seq(self) -> int:
        return int(self.changes.get("folded_seq", 0))

    @property
    def views(self) -> int:
        return int(self.changes.get("views", 0))

    def opened_files(self) -> list[str]:
        """Names of the files a reader of this bundle opens (each must be listed in ``files``)."""
        names = [self.items_file, self.store.file, self.store.scale, self.store.offset]
        if self.search.mode == "ann":   # the index's files, named by the keys its backend says
            backend = BACKENDS.get(self.backend)
            names += [self.index.get(key) for key in (backend.file_keys if backend else ("file",))]
        if self.projection is not None:
            names += [self.projection.mean, self.projection.components, self.projection.fold]
        return [Path(n).name for n in dict.fromkeys(names) if n]

    def with_search(self, overrides: dict) -> Manifest:
        """The manifest with query settings overridden (``mode``, ``candidates``, ``search_k``)."""
        unknown = set(overrides) - set(SEARCH_KEYS)
        if unknown or overrides.get("mode", "exact") not in ("exact", "ann"):
            raise BundleError(f"search settings {sorted(overrides)}: use mode (exact or ann), candidates, "
                              "search_k, nprobe")
        return replace(self, search=replace(self.search, **overrides))

    def to_dict(self) -> dict:
        """The JSON form written to ``manifest.json`` and shown by ``index info --json``."""
        out = {
            "format_version": self.format_version,
            "created": self.created,
            "items": self.items,
            "model": {"name": self.model.name, "sha256": self.model.sha256, "dim": self.model.dim},
            "metric": "cosine",
            "index": dict(self.index),
            "n_trees": self.index.get("n_trees"),
            "projection": None if self.projection is None else {
                "type": "pca", "dims": self.projection.dims, "whiten": self.projection.whiten,
                "explained_variance": self.projection.explained_variance, "mean": self.projection.mean,
                "components": self.projection.components,
                **({"fold": {"file": self.projection.fold, "rest": self.projection.fold_rest,
                             "residual": self.projection.fold_residual}}
                   if self.projection.fold else {})},
            "store": {"file": self.store.file, "dtype": self.store.dtype, "scale": self.store.scale,
                      **({"space": self.store.space, "dims": self.store.dims, "offset": self.store.offset}
                         if self.store.space else {})},
            "search": {"mode": self.search.mode, "candidates": self.search.candidates,
                       "search_k": self.search.search_k,
                       **({"nprobe": self.search.nprobe} if self.search.nprobe else {})},
            "items_file": self.items_file,
            "build_seconds": self.build_seconds,
        }
        if self.catalog is not None:
            out["catalog"] = self.catalog
        if self.changes:
            out["changes"] = dict(self.changes)
        out.update(self.extra)
        if self.files:
            out["files"] = dict(self.files)
        return out

    @classmethod
    def from_dict(cls, d: dict, directory: Path | str = ".") -> Manifest:
        """Check and type a manifest dict; BundleError naming the entry and the fix."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not isinstance(d, dict) or not isinstance(d.get("format_version"), int):
            raise BundleError(f"{path}: no format_version; {_rebuild(directory)}")
        if d["format_version"] > FORMAT_VERSION:
            raise BundleError(f"{directory}: bundle format {d['format_version']} is newer than this "
                              f"pi-search reads ({FORMAT_VERSION}); upgrade pi-search or "
                              f"{_rebuild(directory)}")
        for key in ("items", "model", "index", "store", "search"):
            if key not in d:
                raise BundleError(f"{path}: no {key!r} entry; {_rebuild(directory)}")
        try:
            m, st, se, pr = d["model"], d["store"], d["search"], d.get("projection")
            index = dict(d["index"])
            if d.get("n_trees") is not None and "n_trees" not in index:
                index["n_trees"] = int(d["n_trees"])
            known = {"format_version", "created", "items", "model", "metric", "index", "n_trees",
                     "projection", "store", "search", "items_file", "build_seconds", "catalog", "changes",
                     "files"}
            return cls(
                format_version=int(d["format_version"]), items=int(d["items"]),
                model=ModelRef(str(m["name"]), str(m.get("sha256") or ""), int(m["dim"])),
                index=index,
                store=StoreEntry(str(st.get("file", STORE_FILE)), str(st.get("dtype", "float32")),
                                 st.get("scale") or None, st.get("space") or None,
                                 int(st["dims"]) if st.get("dims") else None, st.get("offset") or None),
                search=SearchSettings(str(se.get("mode", "exact")), int(se.get("candidates", 100)),
                                      int(se.get("search_k", 10_000)), int(se.get("nprobe") or 0)),
                projection=None if not pr else ProjectionEntry(
                    int(pr["dims"]), bool(pr.get("whiten")), float(pr.get("explained_variance", 0.0)),
                    str(pr.get("mean", PCA_MEAN_FILE)), str(pr.get("components", PCA_COMPONENTS_FILE)),
                    str(pr["fold"]["file"]) if pr.get("fold") else None,
                    float(pr["fold"]["rest"]) if pr.get("fold") else 0.0,
                    float(pr["fold"].get("residual", 0.0)) if pr.get("fold") else 0.0),
                items_file=str(d.get("items_file") or ITEMS_FILE), created=d.get("created"),
                build_seconds=d.get("build_seconds"), catalog=d.get("catalog"),
                changes=dict(d.get("changes") or {}), files=dict(d.get("files") or {}),
                extra={k: v for k, v in d.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{path}: malformed entry ({type(exc).__name__}: {exc}); "
                              f"{_rebuild(directory)}") from None


def catalog_not_bundle(directory: Path) -> tuple[str, Path] | None:
    """When ``directory`` is a catalog given where a bundle belongs: ``(what it holds, a folder to build its
    bundle in instead)``, e.g. ``("catalog.csv and images/", Path("shop-bundle"))``; else None."""
    if not directory.is_dir():
        return None
    held = [name for name, there in (("catalog.csv", (directory / "catalog.csv").is_file()),
                                     ("images/", (directory / "images").is_dir())) if there]
    if not held and any(p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp") for p in directory.iterdir()):
        held = ["photos"]
    if not held:
        return None
    named = directory if directory.name else directory.resolve()
    return " and ".join(held), named.with_name(f"{named.name}-bundle")


def read_manifest(directory: str | Path) -> Manifest:
    """The bundle's manifest; BundleError if it is missing, unreadable or of a newer format."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory; build one: pi-search index build "
                          f"CATALOG --out {directory}")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        catalog = catalog_not_bundle(directory)
        if catalog:
            held, out = catalog
            raise BundleError(f"{directory} is a catalog (it holds {held}), not a bundle: build its bundle "
                              f"with pi-search index build {directory} --out {out}, then use {out}") from None
        raise BundleError(f"{path}: missing; {directory} is not a bundle (pi-search index build CATALOG "
                          f"--out {directory})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); {_rebuild(directory)}") from None
    return Manifest.from_dict(raw, directory)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def check_model(manifest: Manifest, extractor, directory: Path) -> None:
    """Refuse a bundle whose embeddings come from another model or dimension than ``extractor``'s."""
    m = manifest.model
    rebuild = (f"rebuild it with this model: pi-search index build CATALOG --out {directory} "
               f"--model {extractor.path}")
    if m.dim != int(extractor.dim):
        raise BundleError(f"{directory}: bundle embeddings are {m.dim}-d but the model {extractor.name} "
                          f"gives {extractor.dim}-d; {rebuild}")
    if m.sha256 != extractor.sha256:
        raise BundleError(f"{directory}: bundle was built with model {m.name} (sha256 {m.sha256[:12]}) "
                          f"but the model in use is {extractor.name} (sha256 {extractor.sha256[:12]}); "
                          f"{rebuild}")

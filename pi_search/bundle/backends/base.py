"""What every backend is: a ``Backend`` subclass that names itself, owns its options and registers itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ...errors import BundleError

BACKENDS: dict[str, Backend] = {}   # name -> backend, filled as ``Backend`` subclasses are defined


class Searcher(Protocol):
    """An opened index file: the rows nearest a query, found approximately."""

    def candidates(self, q: np.ndarray, n: int) -> np.ndarray:
        """``q``: float32 [dims] (projected when the bundle has a projection), L2-normalised. Returns int64
        row ids [<= n], nearest first."""

    def files(self) -> list[Path]:
        """The files it maps (guarded and checked while the bundle serves)."""

    def close(self) -> None: ...


def option(default: Any, *, flag: str | None = None, help: str = "", low: int | None = None,  # noqa: A002
           high: int | None = None) -> Any:
    """A field of a backend's options: ``flag`` is its ``index build`` option (None: none; 0 there means
    the default), ``help`` its help text, ``low``/``high`` the integer range the command line accepts (None
    for both: any integer)."""
    return dataclasses.field(default=default, metadata={"flag": flag, "help": help, "low": low, "high": high})


@dataclass(frozen=True)
class NoOptions:
    """The options of a backend that has none of its own."""


class Backend:
    """A kind of index file. Subclasses set ``name`` (the manifest's ``index.backend`` and the value of
    ``index build --backend``) and are registered under it when the class is defined.

    ``Options``: a frozen dataclass of the backend's own build options (fields made with ``option``; every
    field has a default). ``store_space``: "full" when the store keeps the full vectors (exact search and
    re-ranking on them), "pca" when it keeps int8 PCA coordinates only. ``file_keys``: the index entry's
    keys that name the index's files (checked before it opens); ``in_ram``: those of them read whole into
    memory when the bundle opens (the rest is memory-mapped). ``rank``:
    its place where backends are listed to users (the default, annoy, is 0).
    """

    name: ClassVar[str] = ""
    rank: ClassVar[int] = 100
    Options: ClassVar[type] = NoOptions
    store_space: ClassVar[str] = "full"
    file_keys: ClassVar[tuple[str, ...]] = ("file",)
    in_ram: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            BACKENDS[cls.name] = cls()

    # -- options ---------------------------------------------------------------------------------------

    def options(self, given: Any = None, **fields) -> Any:
        """This backend's options: ``given`` (an ``Options`` object, None for the defaults) with ``fields``
        replaced; BundleError when ``given`` belongs to another backend or a field is not one of its own."""
        if given is None:
            given = self.Options()
        if not isinstance(given, self.Options):
            raise BundleError(f"options {type(given).__name__} are not the {self.name} backend's; give "
                              f"{self.Options.__name__} (or none) with backend={self.name!r}")
        unknown = set(fields) - set(self.option_names())
        if unknown:
            raise BundleError(f"the {self.name} backend has no option {', '.join(sorted(unknown))}; its "
                              f"options: {', '.join(self.option_names()) or 'none'}")
        return dataclasses.replace(given, **fields) if fields else given

    def option_names(self) -> list[str]:
        """The field names of this backend's ``Options``."""
        return [f.name for f in dataclasses.fields(self.Options)]

    def resolve(self, opts, n: int, dim: int):
        """``opts`` (``BuildOptions`` with this backend's options) with every automatic choice made for
        ``n`` rows of ``dim`` dims; BundleError when this backend cannot build them so."""
        return opts.resolved_generic(n, dim)

    def options_of(self, entry: dict, search) -> Any:
        """The options a bundle with index entry ``entry`` and ``SearchSettings`` ``search`` was built
        with (to build its successor alike)."""
        return self.Options()

    def search_settings(self, options) -> dict:
        """The manifest's query settings these options set (``search_k``, ``nprobe``)."""
        return {}

    def pca_rows(self, vectors):
        """The rows of ``vectors`` the bundle's PCA learns from (all of them unless the backend says)."""
        return vectors

    # -- writing and opening ---------------------------------------------------------------------------

    def build(self, directory: Path, vectors, options) -> dict:
        """Write the index of ``vectors`` (float32 [n, dims] rows, L2-normalised, sliceable in chunks: a
        memory map or a projected view) into ``directory`` with this backend's ``options``; return the
        manifest's ``index`` entry (at least ``backend``, ``file``, ``dim``, plus whatever ``open`` needs)."""
        raise NotImplementedError

    def open(self, directory: Path, entry: dict, items: int, search) -> Searcher:
        """Map the index file ``entry`` names (``search``: the manifest's ``SearchSettings``, e.g.
        ``search_k``, ``nprobe``); BundleError naming the file and the fix when it cannot."""
        raise NotImplementedError

    # -- memory ----------------------------------------------------------------------------------------

    def describe(self, entry: dict, pca: str, store_dtype: str) -> str:
        """The approximate layout in a few words, for ``index info`` (``pca``: e.g. "PCA-256w" or "full")."""
        return f"{entry.get('backend') or self.name} over {pca}, re-ranked on the {store_dtype} full vectors"

    def in_ram_files(self, entry: dict) -> set[str]:
        """Names of the index's files read whole into memory when the bundle opens."""
        return {Path(entry[key]).name for key in self.in_ram if entry.get(key)}


def names() -> list[str]:
    """The registered backends' names in their ``rank`` order: ``index build --backend``'s choices."""
    return sorted(BACKENDS, key=lambda n: (BACKENDS[n].rank, n))


@dataclass(frozen=True)
class Flag:
    """A backend option's ``index build`` flag: ``field`` of its ``Options``, ``low``/``high`` its range."""

    field: str
    flag: str
    help: str
    low: int | None
    high: int | None


def flags() -> list[Flag]:
    """The command-line flags of the registered backends' options, each flag once, in ``rank`` order."""
    out: dict[str, Flag] = {}
    for name in names():
        for f in dataclasses.fields(BACKENDS[name].Options):
            meta = f.metadata
            if meta.get("flag") and meta["flag"] not in out:
                out[meta["flag"]] = Flag(f.name, meta["flag"], meta["help"], meta["low"], meta["high"])
    return list(out.values())


def get_backend(name: str) -> Backend:
    """The backend called ``name``; BundleError listing the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BundleError(f"unknown index backend {name!r}: choose one of {', '.join(names())}, or upgrade "
                          "pi-search to read this bundle") from None

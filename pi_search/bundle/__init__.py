"""The bundle format and nothing else: typed manifest, files and the one swap, opening, searching, writing.

This is the front door: the rest of the package imports the names below from ``pi_search.bundle``
(``signing``, ``slots``, ``photos`` and ``verify`` as modules). No backend library (annoy, usearch, faiss)
is imported here: each backend imports its own on first use.
"""

from __future__ import annotations

from . import photos, signing, slots, verify
from .backends import Backend, get_backend
from .backends import flags as backend_flags
from .backends import names as backend_names
from .files import bundle_lock, fingerprint, fsync_dir, recover, swap_into_place, write_atomic
from .ids import ROW_SEP, check_id, id_problem, item_of
from .items import Item, ItemsFile
from .learned import Learned
from .manifest import MANIFEST, Manifest, ModelRef, check_model, read_manifest, write_manifest
from .memory import DAEMON_BYTES, machine_fit, meminfo, needs
from .photos import MAX_PHOTOS, RowNames, counts
from .projection import Projection, normalise
from .reader import Bundle, Match
from .signing import SIGNATURE, keygen, load_public, load_trusted, sign, verify_lines
from .slots import rollback
from .store import VectorStore
from .trust import Trust, served_status
from .write import DEFAULT_WHITEN, BuildOptions, check_out_dir, write_bundle

__all__ = [
    "DAEMON_BYTES", "DEFAULT_WHITEN", "MANIFEST", "MAX_PHOTOS", "SIGNATURE", "ROW_SEP", "Backend", "Bundle",
    "BuildOptions", "Item", "ItemsFile", "Learned", "Manifest", "Match", "ModelRef", "Projection", "RowNames",
    "Trust", "VectorStore", "backend_flags", "backend_names", "bundle_lock", "check_id", "check_model",
    "check_out_dir", "counts", "fingerprint", "fsync_dir", "get_backend", "id_problem", "item_of", "keygen",
    "load_public", "load_trusted", "machine_fit", "meminfo", "needs", "normalise", "photos", "read_manifest",
    "recover", "rollback", "served_status", "sign", "signing", "slots", "swap_into_place", "verify",
    "verify_lines", "write_atomic", "write_bundle", "write_manifest",
]

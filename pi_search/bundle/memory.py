"""What a bundle needs in memory (read into RAM vs memory-mapped) and whether this machine has it."""

from __future__ import annotations

import logging
from pathlib import Path

from .backends import BACKENDS, Backend
from .manifest import PCA_COMPONENTS_FILE, PCA_FOLD_FILE, PCA_MEAN_FILE

log = logging.getLogger(__name__)

# Files read whole into the process besides the index's own (the rest is memory-mapped, paged in on demand).
_READ_INTO_RAM = {PCA_MEAN_FILE, PCA_COMPONENTS_FILE, PCA_FOLD_FILE}
# Memory the daemon needs besides the bundle: interpreter, model, camera frames, web server (measured on the
# daemon: about 200 MB resident, docs/performance.md).
DAEMON_BYTES = 250_000_000


def _layout(manifest: dict, backend: Backend) -> str:
    ix, proj, store = manifest["index"], manifest.get("projection"), manifest["store"]
    pca = f"PCA-{proj['dims']}{'w' if proj.get('whiten') else ''}" if proj else "full"
    if manifest["search"]["mode"] == "exact":
        return f"exact search over the {store['dtype']} vectors"
    return backend.describe(ix, pca, store["dtype"])


def needs(directory: str | Path, manifest: dict) -> dict:
    """``{"layout", "in_ram_bytes", "mapped_bytes", "mapped_files"}`` of the bundle in ``directory``.

    in_ram: files read whole when the bundle opens (the faiss index, the PCA matrices). mapped: files mapped
    and read at random while serving (vector store, Annoy/usearch index, items); the kernel keeps what it
    can of them in the page cache, and drops it again when memory is short.
    """
    directory = Path(directory)
    listed = manifest.get("files") or {}
    sizes = {name: int(v["bytes"]) for name, v in listed.items()} if listed else {
        p.name: p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name != "manifest.json"}
    backend = BACKENDS.get(str(manifest["index"].get("backend", "annoy"))) or Backend()
    whole = _READ_INTO_RAM | backend.in_ram_files(manifest["index"])
    in_ram = {n: s for n, s in sizes.items() if n in whole}
    mapped = {n: s for n, s in sizes.items() if n not in whole}
    return {"layout": _layout(manifest, backend), "in_ram_bytes": sum(in_ram.values()),
            "mapped_bytes": sum(mapped.values()), "mapped_files": sorted(mapped)}


def meminfo() -> dict:
    """MemTotal and MemAvailable of this machine in bytes (empty where /proc/meminfo is missing)."""
    out = {}
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = int(val.split()[0]) * 1024
    return out


def machine_fit(memory: dict, info: dict | None = None) -> dict:
    """Whether this machine holds the bundle: ``{"mem_total_bytes", "mem_available_bytes", "fits",
    "cached_fraction", "verdict"}``.

    fits: what must be in RAM (plus the daemon's own DAEMON_BYTES) is below MemTotal; cached_fraction: the
    share of the mapped files that the page cache can hold beside it (MemAvailable), 1.0 when all of it.
    """
    info = meminfo() if info is None else info
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    if not total or avail is None:
        return {"mem_total_bytes": None, "mem_available_bytes": None, "fits": None, "cached_fraction": None,
                "verdict": "unknown (no /proc/meminfo)"}
    need = int(memory["in_ram_bytes"]) + DAEMON_BYTES
    mapped = int(memory["mapped_bytes"])
    room = max(avail - int(memory["in_ram_bytes"]), 0)
    cached = 1.0 if mapped == 0 else round(min(1.0, room / mapped), 3)
    fits = need <= total
    if not fits:
        verdict = (f"too small: {need / 1e9:.1f} GB must be in RAM, the machine has {total / 1e9:.1f} GB")
    elif need > avail:
        verdict = (f"tight: {need / 1e9:.1f} GB must be in RAM, {avail / 1e9:.1f} GB available now")
    elif cached < 1.0:
        verdict = (f"enough; {cached:.0%} of the mapped files fit in the page cache, the rest is read from "
                   "storage while serving (slower first queries)")
    else:
        verdict = "enough; all of it fits in memory"
    return {"mem_total_bytes": total, "mem_available_bytes": avail, "fits": fits, "cached_fraction": cached,
            "verdict": verdict}

"""What memory this process may use (machine, cgroup, rlimits), the daemon's start check and native caps."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import resource
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from ..bundle import DAEMON_BYTES, meminfo, needs
from ..errors import PiSearchError

log = logging.getLogger(__name__)

# Stack of every thread the daemon starts (Python's and, through the process default, native ones): the
# default is the stack rlimit, 8 MB a thread, which ~55 threads turn into 450 MB of address space.
THREAD_STACK_BYTES = 1 << 20
# glibc arenas: each thread that allocates may get its own (64 MB of address space each, up to 8 per core),
# and memory freed in one is not returned while any block in it lives. Two keep the handler threads apart.
MALLOC_ARENAS = 2
# Blocks of this size or more are mapped on their own and returned to the system when freed (decoded
# photos); without a fixed threshold glibc raises it up to 32 MB after the first large free and keeps
# the memory of every big decode.
MMAP_THRESHOLD_BYTES = 1 << 20
# Address space the daemon reserves besides the bundle (interpreter, libraries, model, thread stacks,
# arenas): 500 MB measured with the caps above (docs/reliability.md), plus room for uploads.
DAEMON_ADDRESS_BYTES = 700_000_000
EXIT_MEMORY = 3  # the exit status of a refusal for lack of memory (systemd: RestartPreventExitStatus=3)


class MemoryLimitError(PiSearchError):
    """The daemon cannot run in the memory it may use: the message says how much it needs and the fix."""

    exit_code = EXIT_MEMORY


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None


def cap_daemon() -> dict:
    """Thread stacks, malloc arenas and the mmap threshold set for a long-running daemon on a small machine;
    returns what was set (a platform without glibc keeps its defaults). Call before starting threads."""
    done = {}
    threading.stack_size(THREAD_STACK_BYTES)
    done["thread_stack"] = THREAD_STACK_BYTES
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return done
    m_mmap_threshold, m_arena_max = -3, -8
    if libc.mallopt(m_arena_max, MALLOC_ARENAS) == 1:
        done["malloc_arenas"] = MALLOC_ARENAS
    if libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES) == 1:
        done["mmap_threshold"] = MMAP_THRESHOLD_BYTES
    if _default_native_stack(libc, THREAD_STACK_BYTES):
        done["native_stack"] = THREAD_STACK_BYTES
    return done


def _default_native_stack(libc, size: int) -> bool:
    """Make ``size`` the stack of native threads started later (LiteRT's, OpenCV's) that ask for none."""
    if not hasattr(libc, "pthread_setattr_default_np"):
        return False
    attr = ctypes.create_string_buffer(128)  # larger than pthread_attr_t on every Linux ABI (36-64 bytes)
    if libc.pthread_attr_init(attr) != 0:
        return False
    try:
        return (libc.pthread_attr_setstacksize(attr, ctypes.c_size_t(size)) == 0
                and libc.pthread_setattr_default_np(attr) == 0)
    finally:
        libc.pthread_attr_destroy(attr)


# ---------------------------------------------------------------- what this process may use
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
                  root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """The smallest memory limit on this process's cgroup and its parents: ``(bytes, cgroup path)``; cgroup
    v2 ``memory.max``, else v1 ``memory.limit_in_bytes``; None when there is none."""
    text = _read(proc_cgroup) or ""
    found: list[tuple[int, str]] = []
    for line in text.splitlines():
        hier, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hier == "0" and controllers == "":
            base, files = root, ("memory.max",)
            if not (root / "cgroup.controllers").exists() and (root / "unified").is_dir():
                base = root / "unified"
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes",)
        else:
            continue
        rel = Path(path.lstrip("/"))
        for part in [rel, *rel.parents]:
            for name in files:
                value = _read(base / part / name)
                if value and value != "max" and value.isdigit() and int(value) < (1 << 60):
                    found.append((int(value), "/" + str(part).strip(".")))
    return min(found) if found else None


def _service_name(cgroup: str) -> str:
    leaf = cgroup.rstrip("/").rsplit("/", 1)[-1]
    return leaf if leaf.endswith((".service", ".scope", ".slice")) else ""


def _rlimit(which: int) -> int | None:
    soft, _hard = resource.getrlimit(which)
    return None if soft == resource.RLIM_INFINITY else soft


def _rss() -> int:
    text = _read(Path("/proc/self/status")) or ""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Room:
    """What this process may use: resident memory (the smallest of the machine's available memory, its
    cgroup's limit and the data rlimit) and address space (the address-space rlimit)."""

    mem_available: int | None
    cgroup_max: int | None
    cgroup: str
    data_limit: int | None
    address_limit: int | None

    def as_dict(self) -> dict:
        return {"mem_available_bytes": self.mem_available, "cgroup_max_bytes": self.cgroup_max,
                "cgroup": self.cgroup, "rlimit_data_bytes": self.data_limit,
                "rlimit_as_bytes": self.address_limit}


def room() -> Room:
    """The limits that apply to this process now."""
    avail = meminfo().get("MemAvailable")
    cg = _cgroup_limit()
    return Room(mem_available=None if avail is None else avail + _rss(),
                cgroup_max=cg[0] if cg else None, cgroup=cg[1] if cg else "",
                data_limit=_rlimit(resource.RLIMIT_DATA), address_limit=_rlimit(resource.RLIMIT_AS))


SERVICE = "pi-search.service"


def _systemd_bytes(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() and int(value) < (1 << 60) else None


def parse_service_limits(text: str, unit: str = SERVICE) -> Room | None:
    """The Room of a systemd unit from ``systemctl show -p LoadState -p MemoryMax -p LimitAS -p LimitDATA``
    output (``KEY=VALUE`` lines); None when the unit is not installed. MemAvailable is left to the caller."""
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return None
    limit = _systemd_bytes(props.get("MemoryMax", ""))
    return Room(mem_available=None, cgroup_max=limit, cgroup=f"/system.slice/{unit}" if limit else "",
                data_limit=_systemd_bytes(props.get("LimitDATA", "")),
                address_limit=_systemd_bytes(props.get("LimitAS", "")))


def service_room(unit: str = SERVICE) -> Room | None:
    """What the installed service may use (its MemoryMax=, LimitAS=, LimitDATA=, as systemd will apply
    them) and this machine's MemAvailable; None without systemd or without the unit."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "show", unit, "-p", "LoadState", "-p", "MemoryMax", "-p", "LimitAS", "-p",
                              "LimitDATA"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = parse_service_limits(out, unit)
    if found is None:
        return None
    avail = meminfo().get("MemAvailable")
    return Room(avail, found.cgroup_max, found.cgroup, found.data_limit, found.address_limit)


@dataclass(frozen=True)
class Fit:
    """The daemon with one bundle against a Room: what it needs, what binds, and the one-line verdict."""

    resident_need: int
    address_need: int
    may_use: int | None       # the tightest hard limit on resident memory (cgroup or data rlimit)
    limited_by: str           # which one, for the message
    address_limit: int | None
    mem_available: int | None
    ok: bool
    message: str

    def as_dict(self) -> dict:
        return {"resident_need_bytes": self.resident_need, "address_need_bytes": self.address_need,
                "may_use_bytes": self.may_use, "limited_by": self.limited_by,
                "address_limit_bytes": self.address_limit, "mem_available_bytes": self.mem_available,
                "ok": self.ok, "message": self.message}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def fit(memory: dict | None, where: Room | None = None) -> Fit:
    """Whether the daemon serving a bundle whose needs are ``memory`` (bundle/memory.py's ``needs``; None:
    no bundle yet) starts within ``where`` (default: this process's limits).

    Resident: DAEMON_BYTES plus the files read whole. The cgroup limit and the data rlimit refuse; memory
    that is merely in use by others now (MemAvailable) only warns, as it may be freed. Address space:
    DAEMON_ADDRESS_BYTES plus every bundle file (mapped files count against ``ulimit -v`` too).
    """
    where = room() if where is None else where
    in_ram = int((memory or {}).get("in_ram_bytes", 0))
    mapped = int((memory or {}).get("mapped_bytes", 0))
    resident = DAEMON_BYTES + in_ram
    address = DAEMON_ADDRESS_BYTES + in_ram + mapped
    service = _service_name(where.cgroup)
    hard = []
    if where.cgroup_max is not None:
        hard.append((where.cgroup_max, f"MemoryMax= of {service}" if service else
                     f"memory.max of cgroup {where.cgroup}",
                     "raise MemoryMax (systemctl edit " + (service or "pi-search") + ")"))
    if where.data_limit is not None:
        hard.append((where.data_limit, "ulimit -d (RLIMIT_DATA)", "raise ulimit -d (LimitDATA=)"))
    may_use, limited_by, fix = min(hard) if hard else (None, "", "")
    if may_use is not None and resident > may_use:
        return Fit(resident, address, may_use, limited_by, where.address_limit, where.mem_available, False,
                   f"not enough memory: the daemon needs ~{_mb(resident)}, may use {_mb(may_use)} "
                   f"({limited_by}): {fix} or use a smaller bundle")
    if where.address_limit is not None and address > where.address_limit:
        return Fit(resident, address, may_use, limited_by, where.address_limit, where.mem_available, False,
                   f"not enough address space: the daemon needs ~{_mb(address)}, may use "
                   f"{_mb(where.address_limit)} (ulimit -v, RLIMIT_AS): raise ulimit -v (LimitAS=) or use a "
                   "smaller bundle")
    if where.mem_available is not None and resident > where.mem_available:
        return Fit(resident, address, may_use, limited_by, where.address_limit, where.mem_available, True,
                   f"tight: the daemon needs ~{_mb(resident)}, {_mb(where.mem_available)} is available now "
                   "(stop other programs, or use a smaller bundle)")
    room_text = _mb(may_use) + f" ({limited_by})" if may_use is not None else (
        _mb(where.mem_available) + " available" if where.mem_available is not None else "no limit")
    return Fit(resident, address, may_use, limited_by, where.address_limit, where.mem_available, True,
               f"the daemon needs ~{_mb(resident)}; it may use {room_text}")


def bundle_memory(bundle: str | Path) -> dict | None:
    """What the bundle in ``bundle`` needs in memory (bundle/memory.py), from its manifest alone; None when
    there is no readable bundle there yet (the daemon then waits for one)."""
    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        return manifest.get("memory") or needs(bundle, manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("no bundle memory figures yet: %s", exc)
        return None


def check_start(memory: dict | None) -> Fit:
    """The daemon's start check: MemoryLimitError (one line with the fix) when it cannot run; a warning in
    the log when it is tight."""
    verdict = fit(memory)
    if not verdict.ok:
        raise MemoryLimitError(verdict.message)
    if verdict.message.startswith("tight"):
        log.warning("%s", verdict.message)
    else:
        log.info("%s", verdict.message)
    return verdict


@contextlib.contextmanager
def out_of_memory_as_error(doing: str):
    """Inside: a thread that cannot start or an allocation that fails becomes MemoryLimitError, one line."""
    try:
        yield
    except MemoryError:
        raise MemoryLimitError(f"out of memory while {doing}: raise the memory limit (MemoryMax=, ulimit -v) "
                               "or use a smaller bundle") from None
    except RuntimeError as exc:
        if "thread" not in str(exc):
            raise
        raise MemoryLimitError(f"cannot start a thread while {doing} ({exc}): raise the memory limit "
                               "(MemoryMax=, ulimit -v, TasksMax=) or use a smaller bundle") from None

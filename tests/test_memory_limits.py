"""Too little memory is one line and an exit status, never a traceback or a signal: the start check, the
caps on threads, and the doctor's figures, under real rlimits (``ulimit -v``) in subprocesses."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pi_search.bundle.memory import DAEMON_BYTES
from pi_search.ops import limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from support.daemon import free_port, healthy, serve_cmd  # noqa: E402

MB = 1_000_000


def _env() -> dict:
    return {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}


def _address_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def test_a_cgroup_limit_below_the_need_refuses_with_the_fix():
    where = limits.Room(mem_available=4000 * MB, cgroup_max=200 * MB,
                        cgroup="/system.slice/pi-search.service", data_limit=None, address_limit=None)
    verdict = limits.fit({"in_ram_bytes": 50 * MB, "mapped_bytes": 10 * MB}, where)
    assert not verdict.ok and verdict.resident_need == DAEMON_BYTES + 50 * MB
    need = (DAEMON_BYTES + 50 * MB) / MB
    assert verdict.message == (f"not enough memory: the daemon needs ~{need:,.0f} MB, "
                               "may use 200 MB (MemoryMax= of pi-search.service): raise MemoryMax (systemctl "
                               "edit pi-search.service) or use a smaller bundle")
    assert "\n" not in verdict.message


def test_the_tightest_limit_binds_and_mem_available_only_warns():
    need = {"in_ram_bytes": 0, "mapped_bytes": 4 * MB}
    roomy = limits.Room(mem_available=100 * MB, cgroup_max=None, cgroup="", data_limit=None,
                        address_limit=None)
    tight = limits.fit(need, roomy)
    assert tight.ok and tight.message.startswith("tight: the daemon needs")
    data = limits.fit(need, limits.Room(None, 2000 * MB, "/x.service", 100 * MB, None))
    assert not data.ok and "ulimit -d (RLIMIT_DATA)" in data.message
    address = limits.fit({"in_ram_bytes": 0, "mapped_bytes": 900 * MB},
                         limits.Room(None, None, "", None, 1200 * MB))
    assert not address.ok and "address space" in address.message and "mapped" not in address.message
    assert address.address_need == limits.DAEMON_ADDRESS_BYTES + 900 * MB
    assert limits.fit(need, limits.Room(None, None, "", None, None)).ok


def test_the_cgroup_limit_is_read_from_this_process_s_cgroup_and_its_parents(tmp_path):
    """cgroup v2: /proc/self/cgroup names the cgroup; the smallest memory.max up the tree binds."""
    root = tmp_path / "cgroup"
    service = root / "system.slice" / "pi-search.service"
    service.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (service / "memory.max").write_text("max\n")
    (root / "system.slice" / "memory.max").write_text(f"{300 * MB}\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/system.slice/pi-search.service\n")
    assert limits._cgroup_limit(proc, root) == (300 * MB, "/system.slice")
    (service / "memory.max").write_text(f"{120 * MB}\n")
    assert limits._cgroup_limit(proc, root) == (120 * MB, "/system.slice/pi-search.service")
    (service / "memory.max").write_text("max\n")
    (root / "system.slice" / "memory.max").write_text("max\n")
    assert limits._cgroup_limit(proc, root) is None


THREAD_SCRIPT = r"""
import resource, sys, threading
from pi_search.ops import limits
from pi_search.errors import PiSearchError
limits.cap_daemon()
soft = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
threading.stack_size(256 << 20)  # a thread whose stack cannot fit under the limit
try:
    with limits.out_of_memory_as_error("starting the server"):
        threading.Thread(target=lambda: None).start()
except PiSearchError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def test_a_thread_that_cannot_start_is_one_line_and_exit_3():
    out = subprocess.run([sys.executable, "-c", THREAD_SCRIPT, str(200 * MB)], capture_output=True,
                         text=True, env=_env(), timeout=60)
    assert out.returncode == limits.EXIT_MEMORY, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot start a thread while starting the server")
    assert "raise the memory limit" in lines[0] and "Traceback" not in out.stderr


def _serve(tmp_path, bundle: Path, limit: int | None) -> tuple[subprocess.Popen, int]:
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    from conftest import camera_view, load_photo

    from pi_search import images

    (frames / "coffee.jpg").write_bytes(images.encode_jpeg(camera_view(load_photo("skimage:coffee"))))
    port = free_port()
    proc = subprocess.Popen(serve_cmd(frames, bundle, port, 2.0), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(),
                            preexec_fn=_address_limit(limit) if limit else None)
    return proc, port


@pytest.mark.slow
def test_the_daemon_starts_under_a_modest_address_space_limit(tmp_path, bundle_dir):
    """ulimit -v 1.5 GB: the daemon used to die with a 42-line "can't start new thread" traceback (it
    reserved 2 GB of address space: 8 MB stacks, a malloc arena per thread, OpenBLAS threads); now it
    serves."""
    import time

    proc, port = _serve(tmp_path, bundle_dir, 1500 * MB)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not healthy(port):
            time.sleep(0.3)
        assert proc.poll() is None and healthy(port), proc.communicate(timeout=30)[0][-3000:]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        vsz = int(next(li.split()[1] for li in status.splitlines() if li.startswith("VmSize"))) * 1024
        assert vsz < limits.DAEMON_ADDRESS_BYTES, f"{vsz / MB:.0f} MB of address space at rest"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.slow
def test_too_small_an_address_space_is_refused_in_one_line(tmp_path, bundle_dir):
    proc, _port = _serve(tmp_path, bundle_dir, 450 * MB)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == limits.EXIT_MEMORY, out
    lines = [li for li in out.splitlines() if li.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: not enough address space: the daemon needs ~")
    assert "may use 450 MB (ulimit -v, RLIMIT_AS): raise ulimit -v" in lines[0]


@pytest.mark.slow
def test_the_doctor_reports_the_same_figures_under_the_limit(bundle_dir, tmp_path):
    exe = Path(sys.executable).with_name("pi-search")
    cmd = [str(exe), "doctor", "--bundle", str(bundle_dir), "--source", f"folder:{tmp_path}", "--json"]
    (tmp_path / "f.jpg").write_bytes(b"")
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120,
                         preexec_fn=_address_limit(450 * MB))
    import json

    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    memory = checks["memory"]
    assert memory["status"] == "FAIL" and "may use 450 MB (ulimit -v, RLIMIT_AS)" in memory["detail"]
    assert out.returncode == 1


def test_the_doctor_judges_by_the_installed_service_s_limits(tmp_path, monkeypatch, bundle_dir):
    """`doctor` runs outside the service's cgroup: it reads the unit's MemoryMax= from systemd (a stand-in
    systemctl here answers as systemd does) and fails with the daemon's own line."""
    from pi_search.ops import doctor

    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'LoadState=loaded\\nMemoryMax=209715200\\nLimitAS=infinity\\n"
                    "LimitDATA=infinity\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    ctx = doctor._Context()
    ctx.config = type("C", (), {"index": type("I", (), {"bundle": str(bundle_dir)})()})()
    check = doctor.check_memory(ctx)
    assert check.status == "FAIL", check
    assert "may use 210 MB (MemoryMax= of pi-search.service): raise MemoryMax" in check.detail
    fake.write_text("#!/bin/sh\nprintf 'LoadState=not-found\\nMemoryMax=infinity\\n'\n")
    assert doctor.check_memory(ctx).status in ("OK", "WARN")


BLAS_SCRIPT = r"""
import os, sys
import pi_search  # first, as the pi-search entry point imports it
import numpy  # noqa: F401
from threadpoolctl import threadpool_info
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(os.environ.get("OPENBLAS_NUM_THREADS"), max(blas or [0]))
"""


@pytest.mark.parametrize("argv, preset, want", [(["serve"], None, "1 1"), (["-v", "demo"], None, "1 1"),
                                                (["serve"], "2", "2 2"), (["query", "x.jpg"], None, None)])
def test_the_daemon_commands_load_blas_with_one_thread(argv, preset, want):
    """For serve and demo the package sets OPENBLAS_NUM_THREADS=1 before numpy loads (unless the
    environment already says); other commands keep BLAS's own choice."""
    env = _env()
    if preset:
        env["OPENBLAS_NUM_THREADS"] = preset
    out = subprocess.run([sys.executable, "-c", BLAS_SCRIPT, *argv], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    var, threads = out.stdout.split()
    if want is None:
        assert var == "None" and int(threads) >= 1  # BLAS's own choice (a thread per core)
    else:
        assert f"{var} {threads}" == want

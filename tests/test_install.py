"""install.sh: refusals, dry runs, the development venv and the system install in a sandbox root."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "install.sh"
SHELL_SCRIPTS = [INSTALL, *sorted((ROOT / "systemd").glob("*.sh")), *sorted((ROOT / "ci").glob("*.sh"))]


def run(args, *, cwd=None, env=None, script=INSTALL, timeout=600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def fake_bin(tmp_path: Path, **commands: str) -> dict:
    """A PATH with fake commands first: name=shell body."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    for name, body in commands.items():
        p = bindir / name
        p.write_text(f"#!/bin/sh\n{body}\n")
        p.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def copy_checkout(dest: Path) -> Path:
    """The files install.sh needs, copied so a run never touches the real checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "install.sh",
                 "config.example.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("pi_search", "systemd", "models"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


# Installs only the project itself, not its dependencies: the layout is under test here, not PyPI.
NO_DEPS = {"PIP_NO_DEPS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not found: ./install.sh --dev as root installs it")
    res = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout


def test_help():
    res = run(["--help"])
    assert res.returncode == 0
    for flag in ("--dev", "--export", "--kiosk", "--dry-run", "--uninstall", "--purge", "--root"):
        assert flag in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "unknown option: --frobnicate"),
    (["--purge"], "--purge only goes with --uninstall"),
    (["--dev", "--kiosk"], "--kiosk is for the system install"),
    (["--export"], "--export is for --dev"),
    (["--dev", "--root", "/tmp/x"], "--root is for the system install"),
])
def test_refuses_bad_combinations(args, message):
    res = run(args)
    assert res.returncode != 0
    assert message in res.stderr


@pytest.mark.parametrize("machine, dpkg_arch", [("armv7l", "armhf"), ("aarch64", "armhf"), ("i686", "i386")])
def test_refuses_32_bit(tmp_path, machine, dpkg_arch):
    env = fake_bin(tmp_path, uname=f"echo {machine}", dpkg=f"echo {dpkg_arch}")
    res = run(["--dev", "--dry-run", "--no-apt"], env=env)
    assert res.returncode == 1
    assert "32-bit OS" in res.stderr
    assert "64-bit" in res.stderr


@pytest.mark.parametrize("version", ["3.9", "3.10", "2.7", "3.15"])
def test_refuses_unsupported_python(tmp_path, version):
    fake = tmp_path / "python-fake"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    res = run(["--dev", "--dry-run", "--no-apt", "--python", str(fake)])
    assert res.returncode == 1
    assert f"unsupported Python {version}" in res.stderr


@pytest.mark.slow
def test_dry_run_changes_nothing(tmp_path):
    target = tmp_path / "root"
    res = run(["--root", str(target), "--dry-run", "--python", sys.executable])
    assert res.returncode == 0, res.stderr
    assert "would: create venv" in res.stdout
    assert f"would: write {target}/etc/pi-search/config.toml" in res.stdout
    assert f"would: install {target}/etc/systemd/system/pi-search.service" in res.stdout
    assert "nothing was changed" in res.stdout
    assert not target.exists()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "/venv/" not in str(p)}


@pytest.mark.slow
def test_sandboxed_system_install(tmp_path):
    src = copy_checkout(tmp_path / "src")
    target = tmp_path / "root"
    args = ["--root", str(target), "--python", sys.executable, "--kiosk", "--kiosk-user", "alice"]
    script = src / "install.sh"
    first = run(args, script=script, env=NO_DEPS)
    assert first.returncode == 0, first.stdout + first.stderr
    opt = target / "opt/pi-search"
    venv = opt / "venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin/pi-search").is_file()
    dist = subprocess.run([str(venv / "bin/python"), "-c",
                           "import importlib.metadata as m; print(m.version('pi-search'))"],
                          capture_output=True, text=True)
    assert dist.returncode == 0 and dist.stdout.strip(), dist.stderr
    assert (opt / "models/efficientnet_lite0_int8.tflite").read_bytes() == \
        (src / "models/efficientnet_lite0_int8.tflite").read_bytes()
    assert os.access(opt / "bin/pi-search-kiosk", os.X_OK)
    conf = target / "etc/pi-search/config.toml"
    assert conf.read_text() == (src / "config.example.toml").read_text()
    unit = target / "etc/systemd/system/pi-search.service"
    assert unit.read_text() == (src / "systemd/pi-search.service").read_text()
    assert (target / "var/lib/pi-search").is_dir()
    if shutil.which("systemctl"):
        link = target / "etc/systemd/system/multi-user.target.wants/pi-search.service"
        assert link.is_symlink()
    assert "Page:     http://127.0.0.1:8080/" in first.stdout
    autostart = target / "home/alice/.config/labwc/autostart"
    assert autostart.read_text() == "/opt/pi-search/bin/pi-search-kiosk &  # pi-search kiosk\n"

    # A second run changes nothing, and says so.
    before = _files(target)
    second = run(args, script=script, env=NO_DEPS)
    assert second.returncode == 0, second.stderr
    assert "Nothing to change" in second.stdout
    assert "\n  do:" not in second.stdout
    assert _files(target) == before

    # The admin's config survives a reinstall.
    conf.write_text(conf.read_text().replace("top_k = 5", "top_k = 7"))
    (src / "systemd/pi-search.service").write_text(unit.read_text() + "# changed\n")
    third = run(args, script=script, env=NO_DEPS)
    assert third.returncode == 0, third.stderr
    assert "top_k = 7" in conf.read_text()
    assert unit.read_text().endswith("# changed\n")
    assert "kept as it is" in third.stdout
    assert "do:    install " + str(unit) in third.stdout

    # Uninstall keeps config and bundles; --purge removes them.
    (target / "var/lib/pi-search/bundle").mkdir()
    gone = run(["--root", str(target), "--uninstall", "--kiosk-user", "alice"], script=script)
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists() and not opt.exists()
    assert autostart.read_text() == ""
    assert conf.is_file() and (target / "var/lib/pi-search/bundle").is_dir()
    purged = run(["--root", str(target), "--uninstall", "--purge"], script=script)
    assert purged.returncode == 0, purged.stderr
    assert not (target / "etc/pi-search").exists() and not (target / "var/lib/pi-search").exists()


@pytest.mark.slow
def test_dev_install(tmp_path):
    src = copy_checkout(tmp_path / "src")
    first = run(["--dev", "--no-apt", "--python", sys.executable], cwd=tmp_path, script=src / "install.sh",
                env=NO_DEPS)
    assert first.returncode == 0, first.stdout + first.stderr
    venv = src / ".venv"
    assert (venv / "bin/pi-search").is_file()
    # Editable: the package is imported from the checkout itself.
    origin = subprocess.run([str(venv / "bin/python"), "-c",
                             "import importlib.util as u; print(u.find_spec('pi_search').origin)"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert origin.stdout.strip() == str(src / "pi_search/__init__.py"), origin.stderr
    assert "Run the tests:  ./install.sh --dev --export && .venv/bin/python -m pytest" in first.stdout

    second = run(["--dev", "--no-apt", "--python", sys.executable], script=src / "install.sh", env=NO_DEPS)
    assert second.returncode == 0
    assert "Nothing to change" in second.stdout

    gone = run(["--dev", "--uninstall"], script=src / "install.sh")
    assert gone.returncode == 0
    assert not venv.exists()


@pytest.mark.slow
def test_pip_is_upgraded_only_in_a_new_venv(tmp_path):
    """A first run makes the venv and upgrades its pip once; a later run on that venv (whose pip is recent
    enough) leaves pip alone, even when the project itself is installed again."""
    src = copy_checkout(tmp_path / "src")
    args = ["--dev", "--no-apt", "--dry-run", "--python", sys.executable]
    fresh = run(args, script=src / "install.sh")
    assert fresh.returncode == 0, fresh.stderr
    assert f"would: create venv {src}/.venv" in fresh.stdout
    assert f"would: upgrade pip in {src}/.venv" in fresh.stdout

    subprocess.run([sys.executable, "-m", "venv", str(src / ".venv")], check=True)
    again = run(args, script=src / "install.sh")
    assert again.returncode == 0, again.stderr
    assert f"ok:    venv {src}/.venv" in again.stdout
    assert f"would: install pi-search and its dependencies into {src}/.venv" in again.stdout  # no stamp yet
    assert "upgrade pip" not in again.stdout, again.stdout


def _install_sh_dev_apt() -> list[str]:
    """The Debian packages ``install.sh --dev`` installs (its DEV_APT list), read by bash itself."""
    res = subprocess.run(["bash", "-c", 'eval "$(sed -n "/^DEV_APT=(/,/)/p" "$1")"; printf "%s\\n" '
                          '"${DEV_APT[@]}"', "-", str(INSTALL)], capture_output=True, text=True, check=True)
    return res.stdout.split()


@pytest.mark.parametrize(("doc", "start"), [("README.md", "the ones the tests need:"),
                                            ("docs/development.md", "the Debian packages the tests use")])
def test_docs_name_the_debian_packages_install_sh_installs(doc, start):
    import re

    text = (ROOT / doc).read_text()
    sentence = text[text.index(start):].split(". ", 1)[0]
    named = re.findall(r"`([a-z0-9][a-z0-9.+-]*)`", re.sub(r"\([^)]*\)", "", sentence))  # not the asides
    packages = _install_sh_dev_apt()
    assert len(packages) >= 8
    assert [p for p in named if p != "npm"] == packages, sentence
    assert "`npm`" in sentence  # added when no npm is installed


def _kiosk(tmp_path, url, wait):
    args_file = tmp_path / "chromium-args"
    env = fake_bin(tmp_path, chromium=f'printf "%s\\n" "$@" > {args_file}')
    env.update(PI_SEARCH_URL=url, PI_SEARCH_KIOSK_WAIT=str(wait))
    res = subprocess.run(["sh", str(ROOT / "systemd/pi-search-kiosk.sh")], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    return res, args_file.read_text().splitlines() if args_file.exists() else []


@pytest.mark.slow
def test_kiosk_waits_for_healthz_then_opens_chromium(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200 if len(seen) >= 3 else 503)  # healthy from the third probe on
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        res, args = _kiosk(tmp_path, url, wait=60)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 0, res.stderr
    assert seen == ["/healthz"] * 3
    assert "--kiosk" in args and args[-1] == url + "/"


@pytest.mark.slow
def test_kiosk_opens_the_page_anyway_after_the_wait(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    res, args = _kiosk(tmp_path, f"http://127.0.0.1:{port}", wait=2)
    assert res.returncode == 0, res.stderr
    assert args[-1] == f"http://127.0.0.1:{port}/"


def test_arm64_script_usage():
    script = ROOT / ".ci/arm64.sh"
    res = run(["--help"], script=script)
    assert res.returncode == 0 and "--suite" in res.stdout and "SKIPPED" in res.stdout
    res = run(["--suite", "buster"], script=script)
    assert res.returncode == 2 and "unknown suite buster" in res.stderr


def test_pi_root_script_usage():
    script = ROOT / ".ci/pi_root.sh"
    res = run(["--help"], script=script)
    assert res.returncode == 0 and "systemd-nspawn" in res.stdout and "SKIPPED" in res.stdout
    res = run(["--bogus"], script=script)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr


def _unit_commands() -> dict[str, str]:
    """Exec*= lines of the unit as systemd runs them ("$$" is a literal "$")."""
    lines = (ROOT / "systemd/pi-search.service").read_text().splitlines()
    return {k: v.replace("$$", "$") for k, _, v in (line.partition("=") for line in lines)
            if k.startswith("Exec")}


def test_unit_runs_only_what_install_sh_installs():
    """Each Exec*= program is the venv's pi-search or /bin/sh (essential in Debian): no procps."""
    for key, command in _unit_commands().items():
        program = command.split()[0]
        assert program.startswith("/opt/pi-search/venv/bin/") or program == "/bin/sh", (key, command)


def test_unit_reload_signals_the_main_process_without_procps(tmp_path):
    """ExecReload sends SIGHUP to $MAINPID with the shell alone (an empty PATH: no /bin/kill to use)."""
    marker = tmp_path / "hup"
    daemon = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: pathlib.Path({str(marker)!r}).write_text("reloaded"))
print("ready", flush=True)
for _ in range(300):
    if pathlib.Path({str(marker)!r}).exists():
        sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline().strip() == "ready"
        args = shlex.split(_unit_commands()["ExecReload"])
        res = subprocess.run(args, env={"MAINPID": str(daemon.pid), "PATH": str(tmp_path / "empty")},
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert daemon.wait(timeout=30) == 0
        assert marker.read_text() == "reloaded"
    finally:
        daemon.kill()


@pytest.mark.slow
def test_installed_wheel_finds_the_shipped_model(tmp_path):
    """A plain (non-editable) install: the int8 model is package data; the CLI finds it from any folder."""
    src = copy_checkout(tmp_path / "src")
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                            str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "license" not in built.stderr.lower(), built.stderr
    (wheel,) = wheels.glob("pi_search-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pi_search/data/models/efficientnet_lite0_int8.tflite" in names
    assert not any(n.endswith("float32.tflite") for n in names)

    # A venv laid out like the system install (/opt/pi-search/venv beside /opt/pi-search/models). Its
    # dependencies come from this test's environment (a path entry after its own site-packages), the package
    # itself only from the wheel.
    opt = tmp_path / "opt"
    venv = opt / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin/python"), "-c",
                           "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install",
                                "--quiet", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    info = subprocess.run([str(venv / "bin/pi-search"), "model", "info", "--json"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    model = json.loads(info.stdout)
    assert Path(model["path"]) == Path(site) / "pi_search/data/models/efficientnet_lite0_int8.tflite"
    sums = dict(line.split()[::-1] for line in (ROOT / "models/SHA256SUMS").read_text().splitlines())
    assert model["sha256"] == sums["efficientnet_lite0_int8.tflite"]

    # The float32 model is not in the wheel: found beside the venv, where install.sh puts both models.
    lookup = [str(venv / "bin/python"), "-c", "from pi_search.model.shipped import SHIPPED_FLOAT, "
              "shipped_model; "
              "print(shipped_model(SHIPPED_FLOAT))"]
    absent = subprocess.run(lookup, cwd=elsewhere, capture_output=True, text=True, check=True)
    assert not Path(absent.stdout.strip()).is_file()
    (opt / "models").mkdir()
    shutil.copy2(ROOT / "models/efficientnet_lite0_float32.tflite", opt / "models")
    found = subprocess.run(lookup, cwd=elsewhere, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()) == opt / "models/efficientnet_lite0_float32.tflite"


@pytest.mark.slow
def test_a_failed_step_shows_its_output_and_keeps_the_log(tmp_path):
    """pip's output is hidden while it works; when a step fails its output is shown, and the log is kept."""
    src = copy_checkout(tmp_path / "src")
    logs = tmp_path / "tmp"
    logs.mkdir()
    res = run(["--root", str(tmp_path / "root"), "--python", sys.executable], script=src / "install.sh",
              env={"TMPDIR": str(logs), "PIP_CONSTRAINT": str(tmp_path / "missing-constraints.txt")})
    assert res.returncode == 1
    assert "error: failed: upgrade pip in" in res.stderr
    assert "missing-constraints.txt" in res.stderr  # pip's own message, shown on failure
    assert "missing-constraints.txt" not in res.stdout
    (log,) = logs.glob("pi-search-install.*.log")
    assert f"The whole log: {log}" in res.stderr
    assert not list(logs.glob("pi-search-src.*"))  # the staged source is removed either way

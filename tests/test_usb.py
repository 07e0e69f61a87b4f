"""The USB stick path: ``systemd/pi-search-usb.sh`` on a real (loop) block device holding a bundle."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import signed_kiosk

from pi_search.bundle import signing, slots

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "systemd" / "pi-search-usb.sh"
EXE = Path(sys.executable).with_name("pi-search")

pytestmark = pytest.mark.slow


def _stick(tmp_path: Path, bundle: Path, name: str) -> str:
    """A loop device with an ext4 file system labelled PISEARCH holding ``bundle`` as pi-search-bundle."""
    content = tmp_path / f"{name}-content"
    shutil.copytree(bundle, content / "pi-search-bundle")
    image = tmp_path / f"{name}.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-L", "PISEARCH", "-d", str(content), str(image)], check=True)
    p = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"no loop device (run as root): {p.stderr.strip()}")
    return p.stdout.strip()


def _run(dev: str, conf: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PI_SEARCH": str(EXE), "PI_SEARCH_USER": "root",
           "PI_SEARCH_CONFIG": str(conf), "TMPDIR": str(tmp_path)}
    return subprocess.run(["sh", str(SCRIPT), dev], capture_output=True, text=True, env=env, timeout=300)


def test_a_signed_stick_is_installed_and_an_unsigned_one_is_not(tmp_path, bundle_dir, extractor):
    signed, live, trusted, conf = signed_kiosk(tmp_path, bundle_dir, extractor)
    loose = tmp_path / "loose.toml"
    loose.write_text(f'[index]\nbundle = "{live}"\n')
    devs = [_stick(tmp_path, signed[7], "good"), _stick(tmp_path, bundle_dir, "unsigned")]
    try:
        p = _run(devs[0], conf, tmp_path)
        assert p.returncode == 0 and "installed the bundle" in p.stderr, p.stderr
        assert signing.parse(live, trusted).version == 7 and slots.active(live) == "b"
        p = _run(devs[1], conf, tmp_path)          # unsigned
        assert p.returncode == 1 and p.stdout.startswith("unsigned: "), p.stdout + p.stderr
        p = _run(devs[1], loose, tmp_path)         # no trusted keys on this kiosk: nothing from a stick
        assert p.returncode == 2 and "trusted_keys" in p.stderr, p.stderr
        assert signing.parse(live, trusted).version == 7 and slots.active(live) == "b"
        assert [x.name for x in tmp_path.iterdir() if x.name.startswith("pi-search-usb.")] == []   # unmounted
    finally:
        for dev in devs:
            subprocess.run(["losetup", "-d", dev], check=False)


def test_the_usb_units_verify(tmp_path):
    unit = (ROOT / "systemd" / "pi-search-usb@.service").read_text()
    copy = tmp_path / "pi-search-usb@.service"
    copy.write_text(re.sub(r"^ExecStart=/opt/pi-search/bin/pi-search-usb ", f"ExecStart={SCRIPT} ", unit,
                           flags=re.M))
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed (apt install systemd)"
    res = subprocess.run([tool, "verify", str(tmp_path / "pi-search-usb@sda1.service")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "pi-search-usb@" not in res.stderr, res.stderr
    rule = (ROOT / "systemd" / "99-pi-search-usb.rules").read_text()
    assert 'ENV{ID_FS_LABEL}=="PISEARCH"' in rule and 'ENV{SYSTEMD_WANTS}+="pi-search-usb@%k.service"' in rule

"""``index pull`` against a local HTTP server: a cut download resumes with a Range request, the signature is
checked before the large files, and what arrives is installed like ``index install``."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from pi_search.bundle import signing, slots
from pi_search.errors import BundleError
from pi_search.updates import pull


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``root``; answers ``Range: bytes=N-`` with 206; the first GET of ``cut`` stops half-way."""

    root: Path
    cut: str | None = None
    log: list

    def do_GET(self):  # noqa: N802 (the http.server name)
        name = self.path.lstrip("/")
        path = self.root / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        self.log.append((name, rng))
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name == type(self).cut:
            type(self).cut = None
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)   # the connection drops half-way
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "published"
    handler = type("Handler", (_Handler,), {"root": root, "log": [], "cut": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield root, handler, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_cut_download_resumes_and_installs(tmp_path, server, bundle_dir, extractor):
    root, handler, url = server
    keys = tmp_path / "keys"
    signing.keygen(keys, "shop")
    shutil.copytree(bundle_dir, root)
    signing.sign(root, keys / "shop.key", version=11)
    trusted = signing.load_trusted([keys / "shop.pub"])
    live = tmp_path / "live"
    biggest = max((p for p in root.iterdir() if p.name not in ("manifest.json", "manifest.sig")),
                  key=lambda p: p.stat().st_size).name
    handler.cut = biggest
    with pytest.raises(BundleError, match=f"{biggest}: .*pull again"):
        pull.pull(url, live, trusted=trusted, extractor=extractor)
    assert not live.exists()
    staged = pull.staging_dir(live) / biggest
    cut_at = staged.stat().st_size
    assert 0 < cut_at < (root / biggest).stat().st_size
    listed = json.loads((root / "manifest.json").read_text())["files"]
    had = sum((pull.staging_dir(live) / n).stat().st_size for n in listed
              if (pull.staging_dir(live) / n).exists())
    report = pull.pull(url, live, trusted=trusted, extractor=extractor)
    assert (biggest, f"bytes={cut_at}-") in handler.log, handler.log       # went on where it stopped
    assert report["version"] == 11
    assert report["downloaded_bytes"] == sum(w["bytes"] for w in listed.values()) - had
    assert signing.parse(live, trusted).version == 11 and slots.active(live) == "a"
    assert not pull.staging_dir(live).exists()


def test_a_tar_is_resumed_then_installed_and_a_tar_with_a_link_is_refused(tmp_path, server, bundle_dir,
                                                                         keys_dir, extractor):
    import tarfile

    root, handler, url = server
    root.mkdir()
    signed = tmp_path / "signed"
    shutil.copytree(bundle_dir, signed)
    signing.sign(signed, keys_dir / "shop.key", version=12)
    with tarfile.open(root / "shop.tar", "w") as tar:
        tar.add(signed, arcname="shop-bundle")
    trusted = signing.load_trusted([keys_dir / "shop.pub"])
    live = tmp_path / "live"
    handler.cut = "shop.tar"
    with pytest.raises(BundleError, match="shop.tar: download cut after"):
        pull.pull(url + "shop.tar", live, trusted=trusted, extractor=extractor)
    assert not live.exists()
    report = pull.pull(url + "shop.tar", live, trusted=trusted, extractor=extractor)
    assert report["version"] == 12 and signing.parse(live, trusted).version == 12
    size = (root / "shop.tar").stat().st_size
    cut_at = size - report["downloaded_bytes"]
    assert 0 < cut_at < size and ("shop.tar", f"bytes={cut_at}-") in handler.log   # went on where it stopped
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".live")] == []
    # a tar holding anything but the bundle's files
    with tarfile.open(root / "evil.tar", "w") as tar:
        link = tarfile.TarInfo("shop-bundle/items.sqlite")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(BundleError, match="evil.tar: holds 'shop-bundle/items.sqlite', which is not a"):
        pull.pull(url + "evil.tar", live, trusted=trusted, extractor=extractor)
    assert signing.parse(live, trusted).version == 12
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".live")] == []


@pytest.fixture
def keys_dir(tmp_path):
    d = tmp_path / "keys"
    signing.keygen(d, "shop")
    return d


def test_an_unknown_key_is_refused_before_the_files_are_downloaded(tmp_path, server, bundle_dir, extractor):
    root, handler, url = server
    keys = tmp_path / "keys"
    signing.keygen(keys, "shop")
    signing.keygen(keys, "thief")
    shutil.copytree(bundle_dir, root)
    signing.sign(root, keys / "thief.key", version=99)
    with pytest.raises(signing.SignatureError, match="unknown key"):
        pull.pull(url, tmp_path / "live", trusted=signing.load_trusted([keys / "shop.pub"]),
                  extractor=extractor)
    assert [name for name, _ in handler.log] == ["manifest.json", "manifest.sig"]


def test_the_pull_unit_verifies_and_the_daemon_stays_offline(tmp_path):
    import re
    import subprocess
    import sys

    root = Path(__file__).parents[1] / "systemd"
    text = (root / "pi-search-pull.service").read_text()
    copy = tmp_path / "pi-search-pull.service"
    copy.write_text(re.sub(r"^ExecStart=/opt/pi-search/venv/bin/pi-search ",
                           f"ExecStart={sys.executable} -m pi_search.cli ", text, flags=re.M))
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed (apt install systemd)"
    res = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "pi-search-pull.service" not in res.stderr, res.stderr
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert any("index pull ${PI_SEARCH_PULL_URL}" in line for line in settings)
    assert not any(line.startswith("IPAddress") for line in settings)   # the network, for this unit only
    assert "IPAddressDeny=any" in (root / "pi-search.service").read_text()

"""``index pull``: download a bundle published as a folder over HTTP (resuming cut downloads), install it."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..bundle import MANIFEST, Manifest, signing
from ..errors import BundleError
from .install import install_bundle, served_version

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20   # a manifest of millions of items is well under this
TIMEOUT_S = 30


def staging_dir(target: Path) -> Path:
    """Where files are downloaded to, kept between runs so a cut download resumes: ``.NAME.pull`` beside."""
    return target.parent / f".{target.name}.pull"


def _url(base: str, name: str) -> str:
    return urllib.parse.urljoin(base if base.endswith("/") else base + "/", urllib.parse.quote(name))


def _get_small(url: str, limit: int) -> bytes | None:
    """The body at ``url`` (at most ``limit`` bytes), or None when the server answers 404."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise BundleError(f"{url}: HTTP {exc.code}; check the address of the published bundle") from None
    except OSError as exc:
        why = getattr(exc, "reason", None) or exc
        raise BundleError(f"{url}: cannot download ({why}); check the address and the network, then pull "
                          "again") from None
    if len(data) > limit:
        raise BundleError(f"{url}: larger than {limit >> 20} MB; not a bundle's file")
    return data


def _fetch(url: str, path: Path, want: dict) -> int:
    """Download ``url`` into ``path``, going on from the bytes already there (HTTP Range); returns the bytes
    fetched now. BundleError naming the file when what arrives is not what the manifest lists."""
    size = int(want.get("bytes") or 0)
    have = path.stat().st_size if path.exists() else 0
    if have > size:
        path.unlink()
        have = 0
    fetched = 0
    if have < size:
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                fetched = _append(resp, path, have, url, size)
        except urllib.error.HTTPError as exc:
            raise BundleError(f"{url}: HTTP {exc.code}; the published bundle is incomplete") from None
        except OSError as exc:
            raise BundleError(f"{url}: download cut after {_on_disk(path)} of {size} bytes "
                              f"({getattr(exc, 'reason', None) or exc}); pull again to go on") from None
    if path.stat().st_size != size:
        raise BundleError(f"{url}: got {path.stat().st_size} of {size} bytes; pull again to go on")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != want.get("sha256"):
        path.unlink()
        raise BundleError(f"{url}: its SHA-256 differs from the manifest's (a file changed on the server "
                          "while publishing?); pull again")
    return fetched


def _append(resp, path: Path, have: int, url: str, size: int | None = None) -> int:
    """Write the body of ``resp`` to ``path`` after the ``have`` bytes already there (from the start when the
    server sends the whole file, not 206), never past ``size`` bytes when given; returns the bytes written."""
    if have and resp.status != 206:
        have = 0
    written = 0
    with open(path, "ab" if have else "wb") as f:
        while block := resp.read(CHUNK):
            if size is not None and have + written + len(block) > size:
                raise BundleError(f"{url}: longer than the {size} bytes the manifest lists")
            f.write(block)
            written += len(block)
    return written


def _on_disk(path: Path) -> int:
    """Bytes of ``path`` on disk so far (0 when there is none)."""
    return path.stat().st_size if path.exists() else 0


def _fetch_whole(url: str, path: Path) -> int:
    """Download ``url`` into ``path`` going on from the bytes there (HTTP Range; its size is not known
    beforehand); returns the bytes fetched now."""
    have = path.stat().st_size if path.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            fetched = _append(resp, path, have, url)
            if resp.length:   # bytes the server announced but did not send
                raise ConnectionError(f"{resp.length} bytes missing")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:   # nothing more to send: it is all here
            return 0
        raise BundleError(f"{url}: HTTP {exc.code}; check the address of the published bundle") from None
    except OSError as exc:
        raise BundleError(f"{url}: download cut after {_on_disk(path)} bytes "
                          f"({getattr(exc, 'reason', None) or exc}); pull again to go on") from None
    return fetched


def _unpack(archive: Path, out: Path, name: str) -> None:
    """The regular files of the tar ``archive`` (at its top or in one folder) into ``out``; anything else
    (links, devices, paths climbing out, nested folders) refuses the archive."""
    try:
        with tarfile.open(archive) as tar:
            for m in tar:
                parts = [p for p in Path(m.name).parts if p not in ("", ".")]
                if m.isdir() and len(parts) <= 1:
                    continue
                if (not m.isfile() or not parts or len(parts) > 2 or ".." in parts
                        or Path(m.name).is_absolute()):
                    raise BundleError(f"{name}: holds {m.name!r}, which is not a bundle file; "
                                      "publish the bundle folder's files only")
                src = tar.extractfile(m)
                with open(out / parts[-1], "wb") as f:
                    shutil.copyfileobj(src, f, CHUNK)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{name}: not a readable tar ({exc}); pull again") from None


def pull_tar(url: str, target: Path, **install) -> dict:
    """``pull`` for a bundle published as one tar file (optionally gzip-compressed)."""
    target = Path(target)
    stage = staging_dir(target)
    stage.mkdir(parents=True, exist_ok=True)
    archive = target.parent / f".{target.name}.pull.tar"
    fetched = _fetch_whole(url, archive)
    shutil.rmtree(stage)
    stage.mkdir()
    try:
        _unpack(archive, stage, url)
    except BundleError:
        archive.unlink(missing_ok=True)   # a broken archive is fetched whole again next time
        shutil.rmtree(stage, ignore_errors=True)
        raise
    report = install_bundle(stage, target, **install)
    shutil.rmtree(stage, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return {**report, "source": url, "downloaded_bytes": fetched}


def pull(url: str, target: str | Path, *, trusted: dict | None = None, allow_downgrade: bool = False,
         extractor=None, model_sha256: str | None = None) -> dict:
    """Download the bundle published at ``url`` (a folder holding ``manifest.json``, ``manifest.sig`` and
    the files it lists, or a ``.tar``/``.tar.gz`` of them) and install it at ``target`` (``install_bundle``:
    checked whole, the other slot, self-check, switch). With ``trusted`` the signature of a folder is checked
    before any large file is downloaded."""
    target = Path(target)
    if urllib.parse.urlparse(url).path.endswith((".tar", ".tar.gz", ".tgz")):
        return pull_tar(url, target, trusted=trusted, allow_downgrade=allow_downgrade, extractor=extractor,
                        model_sha256=model_sha256)
    raw = _get_small(_url(url, MANIFEST), MAX_MANIFEST_BYTES)
    if raw is None:
        raise BundleError(f"{url}: no {MANIFEST} there; give the address of the folder holding the bundle")
    try:
        manifest = Manifest.from_dict(json.loads(raw), url)
    except ValueError as exc:
        raise BundleError(f"{_url(url, MANIFEST)}: not a bundle manifest ({exc})") from None
    names = [Path(n).name for n in manifest.files]
    if any(n != str(k) or n in ("", ".", "..") for n, k in zip(names, manifest.files, strict=True)):
        raise BundleError(f"{url}: its manifest names files outside the bundle folder; refused")
    stage = staging_dir(target)
    stage.mkdir(parents=True, exist_ok=True)
    if (stage / MANIFEST).is_file() and (stage / MANIFEST).read_bytes() != raw:
        log.info("%s: another bundle was published since the last pull; starting again", url)
        shutil.rmtree(stage)
        stage.mkdir()
    (stage / MANIFEST).write_bytes(raw)
    sig = _get_small(_url(url, signing.SIGNATURE), 1 << 16)
    if sig is not None:
        (stage / signing.SIGNATURE).write_bytes(sig)
    else:
        (stage / signing.SIGNATURE).unlink(missing_ok=True)
    if trusted is not None:   # refuse before downloading the large files
        signed = signing.parse(stage, trusted, raw)
        if not allow_downgrade:
            signing.check_not_older(Path(url), signed, served_version(target, trusted))
    fetched = 0
    for name, want in manifest.files.items():
        fetched += _fetch(_url(url, name), stage / Path(name).name, want)
    report = install_bundle(stage, target, trusted=trusted, allow_downgrade=allow_downgrade,
                            extractor=extractor, model_sha256=model_sha256)
    shutil.rmtree(stage, ignore_errors=True)
    return {**report, "source": url, "downloaded_bytes": fetched}

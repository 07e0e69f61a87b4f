"""Signed bundles: keys, signatures over the manifest, the rules install and the daemon's catalog apply."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pi_search.bundle import signing, slots
from pi_search.bundle.manifest import MANIFEST
from pi_search.bundle.trust import Trust, served_status
from pi_search.errors import BundleError
from pi_search.live.catalog import LiveCatalog
from pi_search.model.framing import embed_query_image
from pi_search.updates.install import install_bundle

EXE = [sys.executable, "-c", "import sys; from pi_search.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    signing.keygen(d, "shop")
    signing.keygen(d, "other")
    return d


@pytest.fixture
def signed_pair(tmp_path, bundle_dir, keys):
    """Two copies of the test bundle signed by ``shop``: version 5 and version 7."""
    out = {}
    for v in (5, 7):
        d = tmp_path / f"v{v}"
        shutil.copytree(bundle_dir, d)
        signing.sign(d, keys / "shop.key", version=v)
        out[v] = d
    return out


def _trusted(keys):
    return signing.load_trusted([keys / "shop.pub"])


def _cli(*args, env=None):
    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})})


def _resign_with(directory: Path, key: Path, version: int, **changes) -> None:
    """Change manifest entries (a bundle made wrong on purpose) and sign the result."""
    m = json.loads((directory / MANIFEST).read_text())
    for k, v in changes.items():
        m[k] = v
    (directory / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    signing.sign(directory, key, version=version)


# ---------------------------------------------------------------- keys and signatures
def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path):
    key, pub = signing.keygen(tmp_path, "kiosk")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    k = signing.load_public(pub)
    assert k.name == "kiosk" and len(k.key_id) == 16 and len(k.raw) == 32
    before = key.read_bytes()
    with pytest.raises(BundleError, match="exists already"):
        signing.keygen(tmp_path, "kiosk")
    assert key.read_bytes() == before


def test_sign_and_verify_name_every_rule_broken(signed_pair, keys):
    d = signed_pair[5]
    s, problems = signing.verify_lines(d, _trusted(keys))
    assert problems == [] and s.version == 5 and s.signer == "shop"
    # another key
    s, problems = signing.verify_lines(d, signing.load_trusted([keys / "other.pub"]))
    assert len(problems) == 1 and problems[0].startswith("unknown key: "), problems
    # an altered signature
    body = json.loads((d / signing.SIGNATURE).read_text())
    sig = bytearray(__import__("base64").b64decode(body["signature"]))
    sig[0] ^= 1
    body["signature"] = __import__("base64").b64encode(bytes(sig)).decode()
    (d / signing.SIGNATURE).write_text(json.dumps(body))
    _, problems = signing.verify_lines(d, _trusted(keys))
    assert [p.split(":")[0] for p in problems] == ["bad signature"], problems
    # unsigned
    (d / signing.SIGNATURE).unlink()
    _, problems = signing.verify_lines(d, _trusted(keys))
    assert [p.split(":")[0] for p in problems] == ["unsigned"], problems


def test_a_tampered_file_or_manifest_is_named(signed_pair, keys):
    d = signed_pair[7]
    items = d / "items.sqlite"
    data = bytearray(items.read_bytes())
    data[-100] ^= 0xFF
    items.write_bytes(bytes(data))
    _, problems = signing.verify_lines(d, _trusted(keys))
    assert len(problems) == 1 and problems[0].startswith("file changed: ") and "items.sqlite" in problems[0]
    m = json.loads((d / MANIFEST).read_text())
    m["items"] = m["items"] + 1
    (d / MANIFEST).write_text(json.dumps(m))
    _, problems = signing.verify_lines(d, _trusted(keys))
    assert any(p.startswith("file changed: ") and "manifest differs from the one signed" in p
               for p in problems), problems


def test_verify_cli_prints_one_line_per_failure_and_exits_1(signed_pair, keys):
    d = signed_pair[5]
    p = _cli("index", "verify", d, "--trusted", keys / "shop.pub")
    assert p.returncode == 0 and "good: signed by shop" in p.stderr, p.stderr
    p = _cli("index", "verify", d, "--trusted", keys / "other.pub")
    assert p.returncode == 1 and p.stdout.strip().startswith("unknown key: ") \
        and len(p.stdout.strip().splitlines()) == 1, p.stdout


# ---------------------------------------------------------------- install
def test_install_with_trusted_keys_refuses_unsigned_unknown_replayed_and_other_model(
        tmp_path, signed_pair, bundle_dir, keys, extractor):
    live = tmp_path / "live"
    trusted = _trusted(keys)
    report = install_bundle(signed_pair[7], live, trusted=trusted, extractor=extractor)
    assert report["version"] == 7 and report["slot"] == "a" and live.is_symlink()
    served = (live / MANIFEST).read_bytes()
    with pytest.raises(BundleError, match="^.*unsigned"):
        install_bundle(bundle_dir, live, trusted=trusted, extractor=extractor)
    with pytest.raises(BundleError, match="older than served 7"):
        install_bundle(signed_pair[5], live, trusted=trusted, extractor=extractor)
    foreign = tmp_path / "foreign"
    shutil.copytree(signed_pair[5], foreign)
    signing.sign(foreign, keys / "other.key", version=99)
    with pytest.raises(BundleError, match="unknown key"):
        install_bundle(foreign, live, trusted=trusted, extractor=extractor)
    model = json.loads((bundle_dir / MANIFEST).read_text())["model"]
    other_model = tmp_path / "other-model"
    shutil.copytree(bundle_dir, other_model)
    _resign_with(other_model, keys / "shop.key", 100, model={**model, "sha256": "0" * 64, "name": "other"})
    with pytest.raises(BundleError, match="built with model other"):
        install_bundle(other_model, live, trusted=trusted, extractor=extractor)
    assert (live / MANIFEST).read_bytes() == served and slots.active(live) == "a"
    # going back on purpose
    report = install_bundle(signed_pair[5], live, trusted=trusted, extractor=extractor, allow_downgrade=True)
    assert report["version"] == 5 and slots.active(live) == "b"
    assert slots.read_state(live)["last_event"]["downgrade"] is True


def test_first_install_converts_a_plain_bundle_and_rollback_returns_to_it(tmp_path, signed_pair, keys,
                                                                          extractor):
    live = tmp_path / "live"
    shutil.copytree(signed_pair[5], live)
    old = (live / MANIFEST).read_bytes()
    install_bundle(signed_pair[7], live, trusted=_trusted(keys), extractor=extractor)
    assert live.is_symlink() and slots.active(live) == "a"
    assert (slots.slots_dir(live) / "b" / MANIFEST).read_bytes() == old   # the plain bundle, kept
    report = slots.rollback(live)
    assert report["slot"] == "b" and report["version"] == 5 and (live / MANIFEST).read_bytes() == old
    assert slots.read_state(live)["last_event"]["kind"] == "rolled back"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".live")) == []


def test_a_bundle_failing_its_self_check_is_not_switched_in(tmp_path, catalog_dir, signed_pair, keys,
                                                            extractor):
    """A bundle whose vectors do not come from these photos with this framing (here: random ones) opens and
    is signed, but its items' own thumbnails do not find them."""
    from pi_search.embed.build import FromVectors, build_bundle

    ids = [row.split(",")[0] for row in (catalog_dir / "catalog.csv").read_text().splitlines()[1:]]
    rng = np.random.default_rng(3)
    np.save(tmp_path / "vecs.npy", rng.standard_normal((len(ids), extractor.dim)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    wrong = tmp_path / "wrong"
    build_bundle(catalog_dir, wrong, extractor, progress=False,
                 source=FromVectors(tmp_path / "vecs.npy", tmp_path / "ids.txt"),
                 dims=None, learn=False)   # nothing learned to mend them
    signing.sign(wrong, keys / "shop.key", version=50)
    live = tmp_path / "live"
    install_bundle(signed_pair[7], live, trusted=_trusted(keys), extractor=extractor)
    with pytest.raises(BundleError, match="self-check failed: item .* own thumbnail does not find it"):
        install_bundle(wrong, live, trusted=_trusted(keys), extractor=extractor)
    assert slots.active(live) == "a" and signing.parse(live, _trusted(keys)).version == 7
    event = slots.read_state(live)["last_event"]
    assert event["kind"] == "refused" and "self-check failed" in event["reason"]


def test_an_empty_catalog_is_refused(tmp_path, signed_pair, keys):
    empty = tmp_path / "empty"
    shutil.copytree(signed_pair[5], empty)
    _resign_with(empty, keys / "shop.key", 9, items=0)
    with pytest.raises(signing.SignatureError, match="wrong bundle: its catalog has 0 items"):
        Trust(_trusted(keys)).admit(empty, None)


def test_a_full_disk_during_install_changes_nothing(tmp_path, signed_pair, keys, extractor):
    """A tmpfs just big enough for the served bundle: the copy into the other slot runs out of space."""
    size = sum(p.stat().st_size for p in signed_pair[5].iterdir())
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + size // 2}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.fail("cannot mount a tmpfs (run as root)")
    try:
        live = mnt / "live"
        shutil.copytree(signed_pair[5], live)
        before = {p.name: p.read_bytes() for p in live.iterdir()}
        with pytest.raises(BundleError, match="No space left on device.*nothing was changed") as err:
            install_bundle(signed_pair[7], live, trusted=_trusted(keys), extractor=extractor)
        assert "\n" not in str(err.value)
        assert {p.name: p.read_bytes() for p in live.iterdir()} == before and not live.is_symlink()
        assert [p.name for p in mnt.iterdir() if p.name.startswith(".")] == []
        assert list((mnt / "live.slots").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------- the daemon's catalog
def _swap_in(src: Path, live: Path) -> None:
    """Put ``src`` at the slot link ``live`` the way a copy by hand would: into the served folder."""
    target = live.resolve()
    for p in target.iterdir():
        p.unlink()
    for p in src.iterdir():
        shutil.copy2(p, target / p.name)


def test_the_daemon_catalog_serves_only_signed_newer_bundles(tmp_path, signed_pair, bundle_dir, keys,
                                                              extractor, coffee):
    live = tmp_path / "live"
    trusted = _trusted(keys)
    install_bundle(signed_pair[5], live, trusted=trusted, extractor=extractor)
    q = embed_query_image(extractor, coffee)
    cat = LiveCatalog.open(live, extractor=extractor, guard=True, wait=True, trust=Trust(trusted))
    try:
        assert cat.serving and cat.signed.version == 5
        first = [m.id for m in cat.search(q, 3)]
        unsigned = tmp_path / "unsigned"
        shutil.copytree(bundle_dir, unsigned)
        _swap_in(unsigned, live)                  # copied over the served files by hand
        cat.reload()
        assert cat.refused.startswith(f"{live}: unsigned") and cat.signed.version == 5
        assert [m.id for m in cat.search(q, 3)] == first
        install_bundle(signed_pair[7], live, trusted=trusted, extractor=extractor)   # into the other slot
        cat.reload()
        assert cat.refused is None and cat.signed.version == 7
        older = tmp_path / "older"
        shutil.copytree(signed_pair[5], older)
        _swap_in(older, live)                     # a replayed older signed bundle
        cat.reload()
        assert "version 5 older than served 7" in cat.refused and cat.signed.version == 7
        shown = served_status(cat)                # what /healthz shows under index.update
        assert shown["slot"] == "b" and shown["version"] == 7 and shown["signer"] == "shop"
        assert shown["signatures_required"] is True and shown["last_event"]["kind"] == "installed"
    finally:
        cat.close()


def test_a_rollback_is_served_though_older(tmp_path, signed_pair, keys, extractor):
    live = tmp_path / "live"
    trusted = _trusted(keys)
    install_bundle(signed_pair[5], live, trusted=trusted, extractor=extractor)
    install_bundle(signed_pair[7], live, trusted=trusted, extractor=extractor)
    cat = LiveCatalog.open(live, extractor=extractor, guard=True, wait=True, trust=Trust(trusted))
    try:
        assert cat.signed.version == 7
        slots.rollback(live)
        cat.reload()
        assert cat.refused is None and cat.signed.version == 5
    finally:
        cat.close()


# ---------------------------------------------------------------- kills at every step
KILL_STEPS = ["copy", "written", "switch", "convert", "switched"]


@pytest.mark.slow
@pytest.mark.parametrize("step", KILL_STEPS)
def test_a_kill_at_any_step_of_install_leaves_a_complete_bundle_served(tmp_path, signed_pair, keys, step):
    """``index install`` is SIGKILLed where it pauses (``PI_SEARCH_INSTALL_PAUSE``); the served path then
    names the old or the new bundle, whole and signed, and the next install tidies up and succeeds."""
    from pi_search.bundle.reader import Bundle

    live = tmp_path / "live"
    shutil.copytree(signed_pair[5], live)          # a plain bundle: the first install converts it
    conf = tmp_path / "config.toml"
    conf.write_text(f'[index]\nbundle = "{live}"\ntrusted_keys = ["{keys / "shop.pub"}"]\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), slots.FAULT_ENV: f"{step}:60"}
    proc = subprocess.Popen([*EXE, "index", "install", str(signed_pair[7]), "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"PAUSED {step}", (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.kill()
    finally:
        proc.kill()
        proc.wait(30)
    trusted = _trusted(keys)
    version = signing.parse(live, trusted).version
    assert version in (5, 7)
    with Bundle.open(live, deep=True) as b:
        assert len(b) > 0
    if step in ("switched", "convert"):
        assert version == 7
    else:
        assert version == 5
    report = install_bundle(signed_pair[7], live, trusted=trusted, allow_downgrade=True, selfcheck=False)
    assert report["version"] == 7 and signing.parse(live, trusted).version == 7
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".live")]
    leftovers += [p.name for p in slots.slots_dir(live).iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert sorted(p.name for p in slots.slots_dir(live).iterdir()) == ["a", "b", "state.json"]


@pytest.mark.slow   # builds a real bundle: over 1.5 s
def test_a_build_into_the_slot_link_is_converted_again(tmp_path, signed_pair, keys, extractor):
    from conftest import CATALOG_PHOTOS, write_catalog

    from pi_search.embed.build import build_bundle

    live = tmp_path / "live"
    install_bundle(signed_pair[5], live, selfcheck=False)
    small = write_catalog(tmp_path / "small", CATALOG_PHOTOS[:4])
    build_bundle(small, live, extractor, progress=False)            # e.g. a build on the kiosk itself
    assert live.is_dir() and not live.is_symlink() and slots.active(live) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".live")] == []   # no stray link
    report = install_bundle(signed_pair[7], live, trusted=_trusted(keys), extractor=extractor)
    assert live.is_symlink() and report["version"] == 7
    assert slots.rollback(live)["version"] is None                   # the build, unsigned, kept as the other

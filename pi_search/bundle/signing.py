"""Ed25519 bundle signatures (``manifest.sig`` over the exact manifest bytes), their keys and checks."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BundleError
from .files import write_atomic
from .manifest import MANIFEST, Manifest
from .verify import check_file

log = logging.getLogger(__name__)

SIGNATURE = "manifest.sig"
STATEMENT_KIND = "pi-search bundle signature 1"
PUB_PREFIX = "pi-search-ed25519"


class SignatureError(BundleError):
    """A bundle refused by a signing rule; ``rule`` is one of ``RULES``."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


RULES = ("unsigned", "unknown key", "bad signature", "file changed", "older version", "wrong bundle")


@dataclass(frozen=True)
class PublicKey:
    """A trusted key: its id (first 16 hex digits of the SHA-256 of its 32 raw bytes) and name."""

    key_id: str
    name: str
    raw: bytes
    path: str = ""

    def verifier(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw)


@dataclass(frozen=True)
class Signed:
    """What a valid ``manifest.sig`` says about the bundle beside it."""

    version: int
    signer: str
    key_id: str
    signed_at: str
    manifest_sha256: str
    manifest_raw: bytes
    signature_sha256: str

    def as_dict(self) -> dict:
        return {"version": self.version, "signer": self.signer, "key_id": self.key_id,
                "signed_at": self.signed_at, "manifest_sha256": self.manifest_sha256}


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------- keys
def keygen(directory: str | Path, name: str = "pi-search") -> tuple[Path, Path]:
    """Write a new key pair ``DIR/NAME.key`` (secret, mode 600) and ``DIR/NAME.pub`` (to copy to kiosks).

    Refuses (BundleError) to overwrite either file. Returns their paths.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    if not name or "/" in name or name.startswith(".") or any(c.isspace() for c in name):
        raise BundleError(f"key name {name!r}: use letters, digits, - and _ (e.g. shop-2026)")
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise BundleError(f"{p}: exists already; keep it (kiosks trust its public key) or give another "
                              "folder or --name")
    secret = Ed25519PrivateKey.generate()
    pem = secret.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    raw = secret.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(key_path, 0o600)
    try:
        with open(pub_path, "x") as f:
            f.write(f"{PUB_PREFIX} {base64.b64encode(raw).decode()} {name}\n")
    except BaseException:
        key_path.unlink()
        raise
    return key_path, pub_path


def load_public(path: str | Path) -> PublicKey:
    """A ``.pub`` file written by ``keygen``; BundleError in one line if it is not one."""
    path = Path(path)
    try:
        parts = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the public key ({getattr(exc, 'strerror', None) or exc}); "
                          "copy the .pub written by pi-search index keygen") from None
    try:
        if parts[0] != PUB_PREFIX:
            raise ValueError
        raw = base64.b64decode(parts[1], validate=True)
        if len(raw) != 32:
            raise ValueError
    except (IndexError, ValueError):
        raise BundleError(f"{path}: not a pi-search public key; copy the .pub written by pi-search index "
                          "keygen") from None
    name = parts[2] if len(parts) > 2 else path.stem
    return PublicKey(key_id_of(raw), name, raw, str(path))


def load_trusted(paths) -> dict[str, PublicKey]:
    """The trusted keys by id, from ``.pub`` paths (``[index] trusted_keys``)."""
    keys = {}
    for p in paths:
        k = load_public(p)
        keys[k.key_id] = k
    return keys


def _load_secret(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the key ({exc.strerror or exc}); give the .key written by "
                          "pi-search index keygen") from None
    except (ValueError, TypeError):
        raise BundleError(f"{path}: not a pi-search secret key; give the .key written by pi-search index "
                          "keygen") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 key; make one with pi-search index keygen DIR")
    if os.stat(path).st_mode & 0o077:
        log.warning("%s: readable by other users; chmod 600 it", path)
    return key


# ---------------------------------------------------------------- signing
def sign(bundle_dir: str | Path, key_path: str | Path, *, version: int | None = None,
         signer: str | None = None) -> Signed:
    """Write ``manifest.sig`` into the bundle: the signature of its exact ``manifest.json`` bytes, ``version``
    (default: UTC seconds now, so later signatures carry larger numbers) and the signer (the key's name).

    Every file is checked against the manifest first: only a whole bundle is signed.
    """
    from cryptography.hazmat.primitives import serialization

    bundle_dir, key_path = Path(bundle_dir), Path(key_path)
    secret = _load_secret(key_path)
    raw_manifest = _manifest_bytes(bundle_dir)
    manifest = Manifest.from_dict(json.loads(raw_manifest), bundle_dir)
    if not manifest.files:
        raise BundleError(f"{bundle_dir}: its manifest lists no files with their SHA-256 (an older bundle); "
                          f"rebuild it: pi-search index build CATALOG --out {bundle_dir}")
    for name, want in manifest.files.items():
        check_file(bundle_dir / Path(name).name, want)
    version = int(time.time()) if version is None else int(version)
    if version < 0:
        raise BundleError(f"--version {version}: give a number of 0 or more")
    raw_pub = secret.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    statement = json.dumps({
        "kind": STATEMENT_KIND, "manifest_sha256": hashlib.sha256(raw_manifest).hexdigest(),
        "version": version, "signer": signer or key_path.stem, "key_id": key_id_of(raw_pub),
        "signed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}, sort_keys=True)
    signature = secret.sign(statement.encode())
    body = json.dumps({"statement": statement, "signature": base64.b64encode(signature).decode()},
                      indent=1) + "\n"
    write_atomic(bundle_dir / SIGNATURE, lambda f: f.write(body.encode()))
    return parse(bundle_dir, None, raw_manifest)


def _manifest_bytes(directory: Path) -> bytes:
    try:
        return (directory / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{directory / MANIFEST}: missing; {directory} is not a bundle (pi-search index "
                          f"build CATALOG --out {directory})") from None


# ---------------------------------------------------------------- checking
def parse(directory: str | Path, trusted: dict[str, PublicKey] | None, raw_manifest: bytes | None = None
          ) -> Signed:
    """Check ``manifest.sig`` of the bundle at ``directory`` against ``raw_manifest`` (default: its
    ``manifest.json`` as it is now) and, unless ``trusted`` is None, against the trusted keys.

    SignatureError naming the rule broken (unsigned, unknown key, bad signature, file changed).
    """
    from cryptography.exceptions import InvalidSignature

    directory = Path(directory)
    if raw_manifest is None:
        raw_manifest = _manifest_bytes(directory)
    try:
        body = json.loads((directory / SIGNATURE).read_text())
        statement_text, sig = body["statement"], base64.b64decode(body["signature"], validate=True)
        statement = json.loads(statement_text)
        version, signer = int(statement["version"]), str(statement["signer"])
        key_id = str(statement["key_id"])
        if statement.get("kind") != STATEMENT_KIND:
            raise ValueError("another kind of signature")
    except FileNotFoundError:
        raise SignatureError("unsigned", f"{directory}: unsigned (no {SIGNATURE}); sign it where it was "
                             "built: "
                             f"pi-search index sign {directory} --key FILE.key") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError("bad signature", f"{directory / SIGNATURE}: bad signature (unreadable: {exc}); "
                             "sign the bundle again: pi-search index sign") from None
    if trusted is not None:
        key = trusted.get(key_id)
        if key is None:
            raise SignatureError("unknown key", f"{directory}: unknown key: signed by {signer} (key "
                                 f"{key_id}), which is not in [index] trusted_keys; sign it with a trusted "
                                 "key or add that key's .pub to trusted_keys")
        try:
            key.verifier().verify(sig, statement_text.encode())
        except InvalidSignature:
            raise SignatureError("bad signature", f"{directory / SIGNATURE}: bad signature: it does not "
                                 "match "
                                 f"key {key.name} ({key_id}); the signature was altered or made with another "
                                 "key: sign the bundle again") from None
    have = hashlib.sha256(raw_manifest).hexdigest()
    if have != statement.get("manifest_sha256"):
        signed_sha = str(statement.get("manifest_sha256"))[:12]
        raise SignatureError("file changed", f"{directory / MANIFEST}: file changed: the manifest differs "
                             f"from the one signed ({have[:12]} is not {signed_sha}); "
                             "copy the whole signed bundle again or sign it again")
    return Signed(version, signer, key_id, str(statement.get("signed_at", "")), have, raw_manifest,
                  hashlib.sha256(sig).hexdigest())


def check_not_older(directory: Path, signed: Signed, served: int | None) -> None:
    """SignatureError (older version) when ``signed`` is older than the ``served`` version."""
    if served is not None and signed.version < served:
        raise SignatureError("older version", f"{directory}: version {signed.version} older than served "
                             f"{served} (a replayed old bundle?); install it with --allow-downgrade to go "
                             "back on purpose")


def check_contents(directory: Path, manifest: Manifest) -> None:
    """SignatureError (wrong bundle) for a bundle that opens but cannot be right: an empty catalog."""
    if manifest.items <= 0:
        raise SignatureError("wrong bundle", f"{directory}: wrong bundle: its catalog has 0 items; build it "
                             "from the shop's catalog: pi-search index build CATALOG --out DIR")


def verify_lines(directory: str | Path, trusted: dict[str, PublicKey] | None, *, extractor_sha256: str | None
                 = None) -> tuple[Signed | None, list[str]]:
    """Every problem of the bundle at ``directory`` as one line naming its rule (``pi-search index verify``):
    the signature, then every file against the signed manifest, the item count and the model."""
    directory = Path(directory)
    problems: list[str] = []
    signed = None
    try:
        raw = _manifest_bytes(directory)
        manifest = Manifest.from_dict(json.loads(raw), directory)
    except (BundleError, ValueError) as exc:
        return None, [f"wrong bundle: {exc}"]
    try:
        signed = parse(directory, trusted, raw)
    except SignatureError as exc:
        problems.append(f"{exc.rule}: {exc}")
    if not manifest.files:
        problems.append(f"file changed: {directory}: the manifest lists no files with their SHA-256; "
                        "rebuild it")
    for name, want in manifest.files.items():
        try:
            check_file(directory / Path(name).name, want)
        except BundleError as exc:
            problems.append(f"file changed: {exc}")
    try:
        check_contents(directory, manifest)
    except SignatureError as exc:
        problems.append(f"{exc.rule}: {exc}")
    if extractor_sha256 and manifest.model.sha256 != extractor_sha256:
        problems.append(f"wrong bundle: {directory}: built with model {manifest.model.name} (sha256 "
                        f"{manifest.model.sha256[:12]}), not this appliance's (sha256 "
                        f"{extractor_sha256[:12]}); "
                        "rebuild it with the appliance's model")
    return signed, problems

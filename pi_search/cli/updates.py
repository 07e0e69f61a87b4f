"""The ``pi-search index`` commands of signed updates: keygen, sign, verify and rollback."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import click

from ..bundle import Bundle, keygen, load_public, load_trusted, rollback, sign, verify_lines
from ..bundle.signing import parse
from ..config import load_config
from ..errors import BundleError
from ..model.extractor import Extractor, default_model_path, file_sha256
from ..ops.doctor import default_config_path
from ..updates import confirm, fleet
from ..updates.install import install_bundle
from ..updates.pull import pull
from .output import emit_json

log = logging.getLogger(__name__)


def trusted_from(config) -> dict | None:
    """The trusted keys of ``[index] trusted_keys`` (None when none are set: signatures are not required)."""

    paths = config.index.trusted_keys
    return load_trusted(paths) if paths else None


@dataclass
class _Kiosk:
    """What installing a bundle on this kiosk takes: the bundle directory to replace, the running model
    (its extractor for the self-check, None without a model file), the trusted keys and the daemon's health
    before the switch."""

    target: Path
    extractor: Extractor | None
    model_sha256: str | None
    trusted: dict | None
    healthz: str
    before: dict | None

    @classmethod
    def of(cls, config_file: Path | None, target: Path | None, wait_s: float) -> _Kiosk:
        config = load_config(config_file or default_config_path())
        target = target or (Path(config.index.bundle) if config.index.bundle else None)
        if target is None:
            raise click.UsageError("give the bundle directory to replace: --to DIR (or set [index] bundle)")
        model = Path(config.model.path) if config.model.path else default_model_path()
        present = model.is_file()
        healthz = confirm.healthz_url(config.server.host, config.server.port)
        return cls(target, Extractor(model, num_threads=config.model.threads) if present else None,
                   file_sha256(model) if present else None, trusted_from(config), healthz,
                   confirm.health(healthz) if wait_s > 0 else None)

    def await_served(self, report: dict, wait_s: float) -> bool:
        """When the local daemon served the replaced bundle, wait until it serves the new slot (else switch
        back and raise); True when it did."""
        if not confirm.serves(self.before, self.target):
            return False
        confirm.await_served(self.target, self.healthz, report["slot"], wait_s, confirm.refused(self.before))
        return True


@click.command("install")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Path(path_type=Path), default=None,
              help="Bundle directory to replace [index.bundle of the config].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config naming the bundle and model [default: /etc/pi-search/config.toml if it exists].")
@click.option("--allow-downgrade", is_flag=True,
              help="Install a signed bundle older than the one served (going back on purpose).")
@click.option("--wait-healthy", "wait_s", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="Seconds to wait for a daemon serving the bundle ([server] host and port) to serve the "
                   "new one; if it does not, switch back. 0: do not wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def index_install(source: Path, target: Path | None, config_file: Path | None, allow_downgrade: bool,
                  wait_s: float, as_json: bool) -> None:
    """Put a bundle built elsewhere in place in one atomic step; a running daemon maps it within seconds.

    Copy the bundle to the Pi anywhere first (scp, rsync, a USB stick), then install it over the served one.
    It is written into the slot not served, self-checked with the model, then switched in; with [index]
    trusted_keys set it must be signed by one of them and not older than the bundle served.
    """
    kiosk = _Kiosk.of(config_file, target, wait_s)
    report = install_bundle(source, kiosk.target, model_sha256=kiosk.model_sha256, trusted=kiosk.trusted,
                            allow_downgrade=allow_downgrade, extractor=kiosk.extractor)
    if kiosk.await_served(report, wait_s):   # the local daemon serves this bundle: it took the new one
        report["daemon"] = "serving it"
    target = kiosk.target
    if as_json:
        emit_json(report)
        return
    signed = f", version {report['version']} signed by {report['signer']}" if report.get("signer") else ""
    click.echo(f"{target}: {report['items']} items installed from {source} into slot {report['slot']}"
               f"{signed} in {report['seconds']:.1f} s; a running daemon serves them within a few seconds",
               err=True)


@click.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="pi-search", show_default=True,
              help="Key name: the files are NAME.key and NAME.pub; signatures name it as the signer.")
@click.option("--json", "as_json", is_flag=True, help="Print the paths as JSON on stdout.")
def keygen_cmd(directory: Path, name: str, as_json: bool) -> None:
    """Write a new Ed25519 key pair: DIR/NAME.key (secret, mode 600) and DIR/NAME.pub (copy to kiosks).

    Keep the .key where bundles are built; list the .pub in [index] trusted_keys on every kiosk.
    Never overwrites an existing key.
    """

    key, pub = keygen(directory, name)
    k = load_public(pub)
    if as_json:
        emit_json({"key": str(key), "pub": str(pub), "key_id": k.key_id, "name": k.name})
        return
    click.echo(f"{key}: secret key (keep it private); {pub}: public key {k.key_id} (add it to [index] "
               "trusted_keys on each kiosk)", err=True)


@click.command("sign")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The secret .key written by index keygen.")
@click.option("--version", "version", type=click.IntRange(0), default=None,
              help="Bundle version (kiosks refuse older ones) [default: UTC seconds now].")
@click.option("--signer", default=None,
              help="Signer name recorded in the signature [default: the key's name].")
@click.option("--json", "as_json", is_flag=True, help="Print the signature's contents as JSON on stdout.")
def sign_cmd(bundle: Path, key: Path, version: int | None, signer: str | None, as_json: bool) -> None:
    """Sign a bundle: writes BUNDLE/manifest.sig over its exact manifest.json (which lists the size and
    SHA-256 of every file), its version and the signer. Every file is checked first."""

    signed = sign(bundle, key, version=version, signer=signer)
    if as_json:
        emit_json({"bundle": str(bundle), **signed.as_dict()})
        return
    click.echo(f"{bundle}: signed by {signed.signer} (key {signed.key_id}), version {signed.version}",
               err=True)


@click.command("verify")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--trusted", "trusted", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A trusted .pub (repeat for several) [default: [index] trusted_keys of the config].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config naming the trusted keys [default: /etc/pi-search/config.toml if it exists].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def verify_cmd(bundle: Path, trusted: tuple[Path, ...], config_file: Path | None, as_json: bool) -> None:
    """Check a bundle's signature against trusted keys and every file against the signed manifest: one line
    per failure, naming the rule (unsigned, unknown key, bad signature, file changed, wrong bundle);
    exit status 1 when any fails."""

    if trusted:
        keys = load_trusted(trusted)
    else:
        keys = trusted_from(load_config(config_file or default_config_path()))
        if keys is None:
            raise click.UsageError("give the trusted public key: --trusted FILE.pub (or set [index] "
                                   "trusted_keys)")
    signed, problems = verify_lines(bundle, keys)
    if as_json:
        emit_json({"bundle": str(bundle), "ok": not problems,
                   "signature": signed.as_dict() if signed else None, "problems": problems})
    else:
        for line in problems:
            click.echo(line)
        if not problems:
            click.echo(f"{bundle}: good: signed by {signed.signer} (key {signed.key_id}), version "
                       f"{signed.version}; every file as signed", err=True)
    if problems:
        raise SystemExit(1)


@click.command("rollback")
@click.option("--to", "target", type=click.Path(path_type=Path), default=None,
              help="Bundle directory (the slot link) [index.bundle of the config].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config naming the bundle [default: /etc/pi-search/config.toml if it exists].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def rollback_cmd(target: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Go back to the bundle installed before the one served (the other slot), checked whole first; a
    running daemon serves it within seconds."""

    config = load_config(config_file or default_config_path())
    target = target or (Path(config.index.bundle) if config.index.bundle else None)
    if target is None:
        raise click.UsageError("give the bundle directory: --to DIR (or set [index] bundle)")
    keys = trusted_from(config)

    def check(slot_dir: Path) -> None:
        if keys is not None:
            parse(slot_dir, keys)
        with Bundle.open(slot_dir, deep=True):
            pass

    try:
        report = rollback(target, check=check)
    except OSError as exc:
        raise BundleError(f"{target}: cannot roll back ({exc.strerror or exc})") from None
    if as_json:
        emit_json(report)
        return
    click.echo(f"{target}: back to slot {report['slot']} (version {report.get('version')}, signer "
               f"{report.get('signer')}); a running daemon serves it within a few seconds", err=True)


@click.command("pull")
@click.argument("url")
@click.option("--to", "target", type=click.Path(path_type=Path), default=None,
              help="Bundle directory to replace [index.bundle of the config].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Config naming the bundle, model and trusted keys [default: /etc/pi-search/config.toml].")
@click.option("--allow-downgrade", is_flag=True, help="Install a signed bundle older than the one served.")
@click.option("--wait-healthy", "wait_s", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="Seconds to wait for a daemon serving the bundle to serve the new one, else switch back.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def pull_cmd(url: str, target: Path | None, config_file: Path | None, allow_downgrade: bool, wait_s: float,
             as_json: bool) -> None:
    """Download a bundle published as a folder over HTTP (manifest.json, manifest.sig and its files) and
    install it like index install. A cut download goes on where it stopped the next time (HTTP Range);
    with [index] trusted_keys the signature is checked before the large files are fetched."""
    kiosk = _Kiosk.of(config_file, target, wait_s)
    report = pull(url, kiosk.target, trusted=kiosk.trusted, allow_downgrade=allow_downgrade,
                  extractor=kiosk.extractor, model_sha256=kiosk.model_sha256)
    kiosk.await_served(report, wait_s)
    target = kiosk.target
    if as_json:
        emit_json(report)
        return
    click.echo(f"{target}: {report['items']} items pulled from {url} ({report['downloaded_bytes']} bytes "
               f"downloaded) into slot {report['slot']}, version {report.get('version')}", err=True)


COMMANDS = (index_install, keygen_cmd, sign_cmd, verify_cmd, rollback_cmd, pull_cmd)


# ---------------------------------------------------------------- fleet
@click.group("fleet")
def fleet_group() -> None:
    """Several kiosks: their bundle and health, and pushing a bundle to them one at a time."""


_TOKEN = click.option("--token", envvar="PI_SEARCH_TOKEN", default=None,
                      help="The kiosks' [server] token [env PI_SEARCH_TOKEN].")


@fleet_group.command("status")
@click.argument("hosts", metavar="HOST...", nargs=-1, required=True)
@_TOKEN
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def fleet_status_cmd(hosts: tuple[str, ...], token: str | None, as_json: bool) -> None:
    """Each kiosk's health, slot, bundle version and signer (HOST or HOST:PORT, port 8080 by default);
    exit status 1 when any is down or unhealthy."""
    rows = [fleet.status(h, token) for h in hosts]
    if as_json:
        emit_json({"kiosks": rows})
    else:
        for r in rows:
            click.echo(f"{r['host']:<24} {'ok' if r['ok'] else 'DOWN':<5} slot {r['slot'] or '-'}  version "
                       f"{r['version'] if r['version'] is not None else '-'}  signer {r['signer'] or '-'}  "
                       f"items {r['items'] if r['items'] is not None else '-'}"
                       + (f"  ({r['problem']})" if r["problem"] else ""))
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


@fleet_group.command("push")
@click.argument("bundle", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("hosts", metavar="HOST...", nargs=-1, required=True)
@_TOKEN
@click.option("--allow-downgrade", is_flag=True, help="Install a signed bundle older than the one served.")
@click.option("--wait", "wait_s", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Seconds each kiosk has to install and serve the bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def fleet_push_cmd(bundle: Path, hosts: tuple[str, ...], token: str | None, allow_downgrade: bool,
                   wait_s: float, as_json: bool) -> None:
    """Upload BUNDLE to each kiosk in turn over HTTP (needs its [server] token), install it there (checked,
    signed when the kiosk has trusted_keys, self-checked, switched) and wait until it serves it; stops at the
    first kiosk that fails, so the rest keep their bundle."""
    done = fleet.push(bundle, list(hosts), token, allow_downgrade=allow_downgrade, wait_s=wait_s,
                      say=lambda line: click.echo(line, err=True))
    if as_json:
        emit_json({"kiosks": done})


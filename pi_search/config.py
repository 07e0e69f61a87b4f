"""The daemon's settings: frozen dataclasses loaded once from a TOML file, every key checked."""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)


def _check(low=None, high=None, choices=None, pattern=None, hint="", each=None):
    """Field metadata: an inclusive numeric range, a set of allowed values, a regular expression a string
    must match in full (``hint`` says what is expected), or ``each(item)`` returning what is wrong with one
    item of a list (None when it is fine)."""
    return {"low": low, "high": high, "choices": choices, "pattern": pattern, "hint": hint, "each": each}


_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?$", re.IGNORECASE)


def _host_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as an entry of ``allowed_hosts`` (a bare host name or IP), or None."""
    import ipaddress

    try:
        ipaddress.ip_address(name.strip("[]"))
        return None
    except ValueError:
        pass
    if _HOST_NAME.match(name) and len(name) <= 253:
        return None
    return (f"{name!r} is not a host name: write the bare name the page is opened by, without scheme, port "
            "or wildcard (e.g. \"pi.local\")")


@dataclass(frozen=True)
class CameraConfig:
    """[camera]: where frames come from."""

    # Frame source spec: "picamera2" (the Pi camera), "opencv:0" (USB webcam index), "opencv:PATH" (video
    # file), "folder:DIR" (replays the images of DIR; demo and tests).
    source: str = "picamera2"
    # Frame size asked from the camera (picamera2 and webcams); the ISP scales, so keep it small.
    width: int = field(default=640, metadata=_check(16, 4096))
    height: int = field(default=480, metadata=_check(16, 4096))
    # Frames per second asked from the camera; the replay rate of folder: and video sources.
    fps: float = field(default=15.0, metadata=_check(0.1, 120))
    # Seconds without a frame before the source counts as failed and is reopened.
    timeout_s: float = field(default=5.0, metadata=_check(0.1, 600))
    # Replay folder: and video-file sources forever (false: stop at the end, the camera shows as down).
    loop: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """[model]: the feature extractor."""

    # A .tflite file; empty means the shipped int8 EfficientNet-Lite0.
    path: str = ""
    # Interpreter threads (1 leaves a core for the web server and the camera).
    threads: int = field(default=1, metadata=_check(1, 16))
    # "ai_edge_litert" or "tflite_runtime"; empty picks ai_edge_litert, else tflite_runtime.
    runtime: str = field(default="", metadata=_check(choices=("", "ai_edge_litert", "tflite_runtime")))


@dataclass(frozen=True)
class IndexConfig:
    """[index]: the catalog bundle."""

    # Bundle directory written by `pi-search index build` (required to serve).
    bundle: str = ""
    # How many matches to publish.
    top_k: int = field(default=5, metadata=_check(1, 100))
    # Taught, edited or removed items pending in NAME.changes.sqlite beside the bundle that start a compaction
    # in the background (folding them into a new bundle); 0: never by count.
    compact_after: int = field(default=200, metadata=_check(0, 1_000_000))
    # Also compact pending changes every this many seconds (e.g. 86400: daily); 0: no schedule.
    compact_every_s: float = field(default=0.0, metadata=_check(0.0, 31_536_000.0))
    # Public keys (.pub files written by `pi-search index keygen`) a bundle must be signed by; empty: bundles
    # need no signature. When set, install and the daemon refuse unsigned, altered and older bundles, and the
    # daemon does not compact taught items into the (signed) bundle.
    trusted_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateConfig:
    """[gate]: skip frames that look like the last one inferred."""

    # false: infer every frame.
    enabled: bool = True
    # Mean absolute difference (0-255 grey levels) of small grey thumbnails below which a frame is skipped.
    threshold: float = field(default=3.0, metadata=_check(0.0, 255.0))
    # Thumbnail size [width, height] the difference is computed on.
    size: tuple[int, int] = (32, 24)
    # Infer anyway after this many seconds of skipped frames (0: never), so slow drifts are caught.
    refresh_s: float = field(default=5.0, metadata=_check(0.0, 3600.0))


@dataclass(frozen=True)
class SmoothingConfig:
    """[smoothing]: keep the published matches steady between near-ties."""

    # Weight of the newest embedding in the running mean (1.0: no smoothing).
    alpha: float = field(default=0.5, metadata=_check(0.01, 1.0))
    # Cosine similarity of a new embedding to the running mean below which the mean restarts (a new item).
    reset_below: float = field(default=0.8, metadata=_check(-1.0, 1.0))
    # Consecutive inferred frames a new best match must lead before it replaces the shown one (1: at once).
    # A restarted mean (a new item) is shown at once.
    agree: int = field(default=3, metadata=_check(1, 10))


@dataclass(frozen=True)
class ServerConfig:
    """[server]: the local web page and API."""

    # Address to bind; 127.0.0.1 keeps the page local to the Pi (use 0.0.0.0 to allow phones on the LAN).
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_check(1, 65535))
    # If set, every route but /healthz and /static needs it: header "Authorization: Bearer TOKEN", or open
    # the page once as /?token=TOKEN (a cookie keeps it). token_problem says what a token must look like.
    token: str = ""
    # Host names the page may be opened by besides loopback names, IP addresses and ``host`` (e.g.
    # "pi.local"); requests naming any other host are refused (a DNS-rebinding page in the kiosk's browser).
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=_check(each=_host_name_problem))
    # Largest photo accepted by /api/search and the teach page, in megabytes: a 50 MP phone photo is 10-20 MB
    # (the page shrinks photos before sending them where the browser can decode them).
    max_upload_mb: float = field(default=25.0, metadata=_check(0.1, 100.0))
    # Most simultaneous /stream.mjpg viewers; each holds one server thread.
    max_viewers: int = field(default=20, metadata=_check(1, 200))
    # JPEG quality of the live preview (encoded once per frame, shared by every viewer).
    jpeg_quality: int = field(default=70, metadata=_check(10, 100))


@dataclass(frozen=True)
class PageConfig:
    """[page]: what the kiosk page shows and who may teach items on it."""

    # ISO 4217 code of the catalog's prices (e.g. "EUR", "GBP", "USD"); a price that is a plain number is
    # shown in this currency. Empty: prices are shown as written in the catalog.
    currency: str = field(default="", metadata=_check(pattern=r"[A-Z]{3}|", hint='a code like "EUR"'))
    # Language tag for numbers and prices (e.g. "en-GB", "de-DE"); empty: the browser's own.
    locale: str = field(default="", metadata=_check(pattern=r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*|",
                                                     hint='a tag like "en-GB"'))
    # true: the kiosk screen hides teaching (adding, editing, removing items), and the daemon refuses it,
    # unless the PIN below (or the [server] token) is given.
    lock_teaching: bool = False
    # PIN that unlocks teaching on the page while lock_teaching is true (4 to 32 characters); empty: only
    # the [server] token unlocks it.
    pin: str = field(default="", metadata=_check(pattern=r"\S{4,32}|", hint="4 to 32 characters, no spaces"))


@dataclass(frozen=True)
class Config:
    """The whole configuration; each attribute is one TOML section."""

    camera: CameraConfig = CameraConfig()
    model: ModelConfig = ModelConfig()
    index: IndexConfig = IndexConfig()
    gate: GateConfig = GateConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    server: ServerConfig = ServerConfig()
    page: PageConfig = PageConfig()


_SECTION_TYPES = {"camera": CameraConfig, "model": ModelConfig, "index": IndexConfig, "gate": GateConfig,
                  "smoothing": SmoothingConfig, "server": ServerConfig, "page": PageConfig}


def _line_of(text: str | None, section: str, key: str | None = None) -> str:
    """' (line N)' where ``[section]`` or ``key`` inside it appears in ``text``; '' if unknown."""
    if not text:
        return ""
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", s)
        if m:
            current = m.group(1)
            if key is None and current == section:
                return f" (line {n})"
            continue
        if key is not None and current == section and re.match(rf"^{re.escape(key)}\s*=", s):
            return f" (line {n})"
    return ""


def _convert(value, annotation, where: str):
    """Check ``value`` against a field annotation; return it converted (int to float, list to tuple)."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for hint in hints:
        origin = typing.get_origin(hint)
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, str):
            return value
        if origin is tuple and isinstance(value, list | tuple) and typing.get_args(hint)[1:] == (...,):
            item = typing.get_args(hint)[0]
            if all(isinstance(v, item) for v in value):
                return tuple(value)
            continue
        if origin is tuple and isinstance(value, list | tuple):
            args = typing.get_args(hint)
            if len(value) == len(args) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                               for v in value):
                return tuple(value)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             tuple[str, ...]: "a list of strings"}
    want = " or ".join(names.get(h, "a list of 2 positive integers") for h in hints)
    raise ConfigError(f"{where}: {value!r} is not {want}")


def _build_section(name: str, values: dict, text: str | None, origin: str):
    cls = _SECTION_TYPES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        where = f"{origin}: [{name}] {key}{_line_of(text, name, key)}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key; known keys of [{name}]: {', '.join(fields)}")
        value = _convert(value, hints[key], where)
        meta = fields[key].metadata
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}")
        if meta.get("low") is not None and not meta["low"] <= value <= meta["high"]:
            raise ConfigError(f"{where}: {value!r} is outside {meta['low']}..{meta['high']}")
        if meta.get("pattern") is not None and not re.fullmatch(meta["pattern"], value):
            raise ConfigError(f"{where}: {value!r} is not {meta['hint']}")
        for item in value if meta.get("each") is not None else ():
            problem = meta["each"](item)
            if problem:
                raise ConfigError(f"{where}: {problem}")
        kwargs[key] = value
    return cls(**kwargs)


def _merge(data: dict, overrides: dict) -> dict:
    """Apply ``{"section.key": value}`` overrides (None values are ignored) onto parsed TOML data."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r}: expected SECTION.KEY")
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"override {dotted!r}: {section} is not a section")
        out[section][key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Read a TOML file (or only the defaults if ``path`` is None), apply ``{"section.key": value}`` overrides
    (command-line flags win over the file), validate every key, and return a frozen ``Config``.

    Raises ConfigError naming the file, the section, the key and its line for unknown keys and bad values.
    """
    text, origin, data = None, "flags", {}
    if path is not None:
        path = Path(path)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc}); "
                              "check the path given to --config") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    data = _merge(data, overrides or {})
    sections = {}
    for name, values in data.items():
        if name not in _SECTION_TYPES:
            raise ConfigError(f"{origin}: unknown section [{name}]{_line_of(text, name)}; "
                              f"known sections: {', '.join(_SECTION_TYPES)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: {name} must be a [{name}] section, not a value")
        sections[name] = _build_section(name, values, text, origin)
    return Config(**sections)


MIN_TOKEN = 16  # characters of a token
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")  # survives a URL, a cookie and a header unquoted
MIN_TOKEN_DISTINCT = 5  # a random 16-character hex token has fewer with a chance below 1 in a million
WEAK_TOKEN_WORDS = ("password", "passwort", "changeme", "secret", "token", "example", "random", "qwerty",
                    "letmein", "admin", "pisearch", "pi-search")
TOKEN_FIX = "use e.g. openssl rand -hex 16"


def token_problem(token: str) -> str | None:
    """Why ``token`` is too weak to guard the daemon (a short phrase), or None when it is usable.

    A token is at least ``MIN_TOKEN`` characters of letters, digits and ``- . _ ~`` (no whitespace: it must
    survive a URL, a cookie and a header), with at least ``MIN_TOKEN_DISTINCT`` different characters, not a
    straight run like ``abcdefgh...`` and no word a guesser tries first (``password``, ``secret`` ...).
    """
    if len(token) < MIN_TOKEN:
        return f"is {len(token)} characters long: use at least {MIN_TOKEN}"
    if any(c.isspace() for c in token):
        return "contains whitespace: use letters, digits and - . _ ~ only"
    if not TOKEN_CHARS.match(token):
        bad = sorted({c for c in token if not TOKEN_CHARS.match(c)})
        return f"contains {' '.join(map(repr, bad[:5]))}: use letters, digits and - . _ ~ only"
    if len(set(token)) == 1:
        return f"is one character repeated ({token[0]!r})"
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        return f"uses only {len(set(token))} different characters: use at least {MIN_TOKEN_DISTINCT}"
    steps = {ord(b) - ord(a) for a, b in zip(token, token[1:], strict=False)}
    if len(steps) == 1:
        return "is a straight run of characters (like abcdef...)"
    low = token.lower()
    word = next((w for w in WEAK_TOKEN_WORDS if w in low), None)
    if word:
        return f"contains the word {word!r}, one of the first a guesser tries"
    return None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(server: ServerConfig) -> None:
    """Refuse a weak token, and a non-loopback bind address without a token (checked at start).

    On such an address everything needs the token; without one anybody on the network could change the
    appliance, so the daemon does not start. ConfigError says what to set, in one line.
    """
    if server.token:
        problem = token_problem(server.token)
        if problem:
            raise ConfigError(f"[server] token {problem}; {TOKEN_FIX}")
    if is_loopback(server.host):
        return
    if not server.token:
        raise ConfigError(f"[server] host = {server.host!r} is reachable from the network but no "
                          f"[server] token is set: set token = \"<{MIN_TOKEN}+ random characters>\" "
                          "(e.g. openssl rand -hex 16) in the config, or bind 127.0.0.1")


def as_dict(config: Config) -> dict:
    """The configuration as plain data (for /healthz and logs); the server token is masked."""
    d = dataclasses.asdict(config)
    if d["server"]["token"]:
        d["server"]["token"] = "***"
    if d["page"]["pin"]:
        d["page"]["pin"] = "***"
    return d

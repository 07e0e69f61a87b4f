"""Raw HTTP fuzzer: malformed requests against a running daemon; no crash, no 5xx, nothing left behind.

Cases (deterministic for a seed): malformed request lines, header floods, huge and duplicated headers,
conflicting Content-Length / Transfer-Encoding, bad chunked bodies, invalid UTF-8 and percent-escapes in
paths, bare CR or LF line ends, NUL bytes, truncated and bit-flipped valid requests, random bytes.
Each case is sent on its own connection; the answer's status is read (or "none" when the server rightly
waits for the rest of an incomplete request, or closes without answering). Prints the counts by status,
the 5xx and non-JSON errors, and the daemon's threads and sockets before and after.

    python bench/fuzz_http.py --cases 5000            # starts its own daemon (demo bundle)
    python bench/fuzz_http.py --port 8080 --cases 500  # against a daemon already running
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import socket
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PATHS = ["/", "/healthz", "/api/results", "/api/results?after=1&wait=0.2", "/api/search", "/frame.jpg",
         "/thumbs/x", "/static/app.js", "/api/items", "/teach", "/metrics", "/api/reload", "/stream.mjpg",
         "/nope"]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "G ET",
           "GET\x00", "\xff\xfe", "PRI", "*", ""]
BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xfe\xff"]


def _valid(rng: random.Random, path: str | None = None, method: str = "GET", body: bytes = b"",
           extra: list[bytes] = ()) -> bytes:
    path = path or rng.choice(PATHS)
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", *extra]
    if body:
        head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _multipart(rng: random.Random) -> bytes:
    b = f"b{rng.getrandbits(32):08x}"
    part = rng.choice([b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randint(0, 3000)), b"", rng.randbytes(64)])
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + part + f"\r\n--{b}--\r\n".encode()
    ctype = f"Content-Type: multipart/form-data; boundary={b}".encode()
    return _valid(rng, "/api/search", "POST", body, [ctype])


def _request_line(rng: random.Random) -> bytes:
    m = rng.choice(METHODS).encode("utf-8", "surrogateescape")
    p = rng.choice([rng.choice(PATHS).encode(), b"", b"*", b"http://127.0.0.1/", b"//" * 50,
                    b"/" + b"a" * 70000, b"/%", b"/%zz", b"/%00", b"/\x00", b"/ /", b"/?" + b"&" * 500,
                    b"/\t", b"/#frag", b"../../etc/passwd", b"/" + rng.randbytes(20)])
    v = rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1 extra", b"", b"http/1.1",
                    b"HTTP/1", b"HTTP/1.1\x00", b"HTTP/01.1", b"HTTX/1.1"])
    sep = rng.choice([b" ", b"  ", b"\t", b" \t "])
    line = sep.join(x for x in (m, p, v) if x or rng.random() < 0.5)
    return line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"


def _header_flood(rng: random.Random) -> bytes:
    n = rng.choice([100, 1000, 3000, 10000])
    extra = [f"X-H{i}: {'v' * rng.randint(0, 20)}".encode() for i in range(n)]
    return _valid(rng, extra=extra)


def _huge_header(rng: random.Random) -> bytes:
    size = rng.choice([8000, 31000, 33000, 100_000, 1_000_000])
    name = rng.choice([b"X-Big", b"Cookie", b"Host", b"User-Agent", b"A" * size])
    return _valid(rng, extra=[name + b": " + b"x" * size])


def _duplicates(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randint(0, 100))
    sets = [
        [b"Content-Length: 5", b"Content-Length: 7"],
        [b"Content-Length: 5", b"Content-Length: 5"],
        [b"Content-Length: 5, 5"],
        [b"Content-Length: -1"], [b"Content-Length: 1e3"], [b"Content-Length: 0x10"],
        [b"Content-Length: 99999999999999999999999"], [b"Content-Length: +5"], [b"Content-Length:  5 "],
        [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: gzip, chunked"], [b"Transfer-Encoding: chunked, gzip"],
        [b"Transfer-Encoding: identity"], [b"Transfer-Encoding: xchunked"], [b"Transfer-Encoding : chunked"],
        [b"Host: a", b"Host: b"], [b"Host:"], [b"Host: evil.example:8080"],
        [b"Connection: close", b"Connection: keep-alive"], [b"Expect: 100-continue"], [b"Expect: 999-bogus"],
        [b"Content-Type: multipart/form-data"], [b"Content-Type: multipart/form-data; boundary="],
        [b"Authorization: Bearer " + b"x" * 5000], [b"Cookie: pi_search_token=" + rng.randbytes(30)],
    ]
    extra = rng.choice(sets)
    method = rng.choice(["POST", "PUT", "GET", "PATCH"])
    head = [f"{method} {rng.choice(PATHS)} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
            *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _chunked(rng: random.Random) -> bytes:
    bodies = [
        b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\nhello\n0\n\n", b"0\r\nX-Trailer: " + b"t" * 40000 + b"\r\n\r\n", b"0\r\n\r\n",
        b"1\r\n\xff\r\n0\r\nbad trailer\r\n\r\n", b"\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n" * 2000 + b"0\r\n\r\n", rng.randbytes(rng.randint(1, 200)),
    ]
    head = [f"POST {rng.choice(['/api/search', '/api/items', '/', '/api/reload'])} HTTP/1.1".encode(),
            b"Host: 127.0.0.1", b"Connection: close", b"Transfer-Encoding: chunked",
            b"Content-Type: multipart/form-data; boundary=x"]
    return b"\r\n".join(head) + b"\r\n\r\n" + rng.choice(bodies)


def _utf8_path(rng: random.Random) -> bytes:
    bad = rng.choice(BAD_UTF8)
    esc = "".join(f"%{c:02X}" for c in bad).encode()
    base = rng.choice([b"/", b"/thumbs/", b"/static/", b"/api/items/", b"/api/results?after=", b"/?q=",
                       b"/teach/"])
    path = base + rng.choice([bad, esc, bad + b"/../x", esc + b"%2F..%2F", b"%", b"%e2%82", b"\xe2\x82\xac"])
    extra = [] if rng.random() < 0.5 else [b"X-Name: " + bad, b"Referer: http://x/" + bad]
    head = [rng.choice([b"GET", b"DELETE", b"PATCH"]) + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1",
            b"Connection: close", *extra]
    return b"\r\n".join(head) + b"\r\n\r\n"


def _line_ends(rng: random.Random) -> bytes:
    raw = _valid(rng)
    return raw.replace(b"\r\n", rng.choice([b"\n", b"\r", b"\n\r", b"\r\r\n", b"\r\n "]))


def _mutated(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        raw = bytearray(_multipart(rng))
    else:
        body = rng.randbytes(rng.randint(0, 50))
        raw = bytearray(_valid(rng, body=body, method=rng.choice(["GET", "POST"])))
    for _ in range(rng.randint(1, 8)):
        op, i = rng.random(), rng.randrange(len(raw))
        if op < 0.4:
            raw[i] ^= 1 << rng.randrange(8)
        elif op < 0.6:
            raw[i:i] = rng.randbytes(rng.randint(1, 10))
        elif op < 0.8:
            del raw[i:i + rng.randint(1, 10)]
        else:
            raw[i:i] = rng.choice([b"\x00", b"\r", b"\n", b":", b" ", b"\xff"])
    return bytes(raw)


def _truncated(rng: random.Random) -> bytes:
    raw = _multipart(rng) if rng.random() < 0.5 else _valid(rng)
    return raw[:rng.randrange(1, len(raw))]


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(1, 4000)) + rng.choice([b"", b"\r\n\r\n"])


def _nul(rng: random.Random) -> bytes:
    raw = bytearray(_valid(rng))
    raw.insert(rng.randrange(len(raw)), 0)
    return bytes(raw)


KINDS = {"request-line": _request_line, "header-flood": _header_flood, "huge-header": _huge_header,
         "duplicate-headers": _duplicates, "chunked": _chunked, "utf8-path": _utf8_path,
         "line-ends": _line_ends,
         "mutated": _mutated, "truncated": _truncated, "random": _random_bytes, "nul": _nul,
         "multipart": _multipart}


def cases(n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    kinds = list(KINDS)
    return [(k, KINDS[k](rng)) for k in (kinds[i % len(kinds)] for i in range(n))]


def send(port: int, data: bytes, timeout: float) -> tuple[str, bytes]:
    """(status or "none", the answer's first bytes); reads at most the headers and a small body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        with contextlib.suppress(OSError):  # the server may refuse (and close) before all is sent
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            head, sep, body = got.partition(b"\r\n\r\n")
            if sep and (b"multipart/x-mixed-replace" in head or _complete(head, body)):
                break
    finally:
        s.close()
    while got.startswith(b"HTTP/1.1 100 ") and b"\r\n\r\n" in got:  # an interim answer: the next one counts
        got = got.partition(b"\r\n\r\n")[2]
    if got.startswith(b"HTTP/") and len(got) >= 12:
        return got[9:12].decode("latin-1"), got
    return "none", got


def _complete(head: bytes, body: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value)
            except ValueError:
                return True
    return False


def _health_report(request: bytes, answer: bytes) -> bool:
    """True for /healthz's own 503: the daemon answering that its camera is down, not a server fault."""
    if request.split(b" ", 2)[1:2] != [b"/healthz"] or not answer.startswith(b"HTTP/1.1 503"):
        return False
    try:
        return "reasons" in json.loads(answer.partition(b"\r\n\r\n")[2])
    except ValueError:
        return False


def _is_json_error(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"content-type: application/json" not in head.lower():
        return False
    if not _complete(head, body):
        return True  # the connection was reset before the whole body came (the request was not read)
    length = next((int(line.partition(b":")[2]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), len(body))
    try:  # only this answer's body: the rest of a keep-alive connection may hold the next answer
        return "error" in json.loads(body[:length])
    except ValueError:
        return False


def fuzz(port: int, n: int, *, seed: int = 1, workers: int = 16, timeout: float = 2.0) -> dict:
    by_status: collections.Counter = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    server_errors, not_json = [], []
    todo = cases(n, seed)

    def one(case):
        kind, data = case
        status, answer = send(port, data, timeout)
        return kind, data, status, answer

    with ThreadPoolExecutor(workers) as pool:
        for kind, data, status, answer in pool.map(one, todo):
            by_status[status] += 1
            by_kind[kind][status] += 1
            if status.startswith("5") and not _health_report(data, answer):
                server_errors.append((kind, data[:120], answer[:300]))
            elif status[0] == "4" and not data.startswith(b"HEAD") and not _is_json_error(answer):
                not_json.append((kind, data[:120], answer[:300]))
    return {"cases": n, "by_status": dict(sorted(by_status.items())),
            "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
            "server_errors": server_errors, "not_json": not_json}


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status
    except OSError as exc:
        return getattr(exc, "code", 0) or 0


def settle(count, target: int, seconds: float = 15.0) -> int:
    """``count()`` once back to ``target`` (or after ``seconds``): connections need a moment to close."""
    deadline = time.monotonic() + seconds
    value = count()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.25)
        value = count()
    return value


def run(args) -> dict:
    from daemon import Daemon, demo_bundle, scene

    bundle = demo_bundle(args.state_dir)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "daemon.log"
        with Daemon(scene(Path(tmp) / "frames", 4), bundle, log) as d:
            time.sleep(1)
            threads, sockets = d.threads(), d.sockets()
            t0 = time.monotonic()
            res = fuzz(d.port, args.cases, seed=args.seed, workers=args.workers, timeout=args.timeout)
            res["seconds"] = round(time.monotonic() - t0, 1)
            res["threads"] = [threads, settle(d.threads, threads)]
            res["sockets"] = [sockets, settle(d.sockets, sockets, 40.0)]
            res["healthz_after"] = _health(d.port)
            res["alive"] = d.proc.poll() is None
            exit_code = d.stop()
        text = log.read_text(errors="replace")
        res["exit_code"] = exit_code
        res["tracebacks_in_log"] = text.count("Traceback")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=16, help="Cases sent at once.")
    ap.add_argument("--timeout", type=float, default=2.0, help="Seconds to wait for each answer.")
    ap.add_argument("--port", type=int, help="Fuzz a daemon already running here (else start one).")
    ap.add_argument("--state-dir", type=Path, default=Path(tempfile.gettempdir()) / "pi-search-bench-health")
    ap.add_argument("--json", type=Path, help="Also write the result here.")
    args = ap.parse_args()
    if args.port:
        res = fuzz(args.port, args.cases, seed=args.seed, workers=args.workers, timeout=args.timeout)
        res["healthz_after"] = _health(args.port)
    else:
        res = run(args)
    print(f"{res['cases']} cases" + (f" in {res['seconds']} s" if "seconds" in res else ""))
    print("by status: " + ", ".join(f"{k}: {v}" for k, v in res["by_status"].items()))
    for kind, counts in res["by_kind"].items():
        print(f"  {kind:<18} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    print(f"5xx answers: {len(res['server_errors'])}; 4xx without a JSON error body: {len(res['not_json'])}")
    for kind, data, answer in (res["server_errors"] + res["not_json"])[:10]:
        print(f"  {kind}: {data!r} -> {answer!r}")
    if "threads" in res:
        print(f"daemon threads before/after: {res['threads'][0]}/{res['threads'][1]}; sockets before/after: "
              f"{res['sockets'][0]}/{res['sockets'][1]}; alive {res['alive']}; "
              f"/healthz {res['healthz_after']}; exit {res['exit_code']}; "
              f"tracebacks in the log: {res['tracebacks_in_log']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {k: v for k, v in res.items() if k not in ("server_errors", "not_json")}
        out |= {"server_errors": len(res["server_errors"]), "not_json": len(res["not_json"])}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

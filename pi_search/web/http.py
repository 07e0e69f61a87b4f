"""waitress hardened for a kiosk: JSON refusals, slow-client deadlines and eviction, and thread lanes."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import resource
import socket
import threading
import time
from urllib.parse import parse_qs

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import Error

from .errors import FORM_BYTES, MB, too_big

log = logging.getLogger(__name__)

# A request's headers must arrive within this many seconds of its first byte (slow-header clients), and
# the whole request (an upload: 8 MB at 1 Mbit/s takes 64 s) within REQUEST_TIMEOUT_S.
HEADER_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 120.0
# A connection with no request in progress and no byte received for this long is closed (idle keep-alive).
IDLE_TIMEOUT_S = 30.0
# At most this many connections from one address: a new one closes that address's oldest connection that
# is waiting for its client (idle or half-sent); connections being served are never closed.
MAX_PER_ADDRESS = 128
# Beyond MAX_PER_ADDRESS, when every connection of the address is being served (300 long polls), this many
# more are let in to ask /healthz or /metrics only: any other request on them is answered 503 at once.
HEALTH_HEADROOM = 8
ACCEPT_BATCH = 32
MAX_HEADER_BYTES = 32 * 1024
# Kernel send buffer per connection (Linux doubles it): bounds what a client that stopped reading can
# absorb before the preview notices (without it, autotuning lets it soak up to 4 MB).
SEND_BUFFER_BYTES = 128 * 1024
# Worker threads per lane beyond the previews: a lane's requests can only ever take the lane's own threads,
# so 50 long polls or 20 previews never delay /healthz or the page.
LANE_THREADS = {"health": 2, "main": 6, "upload": 4, "poll": 16}
# Lanes whose requests wait long: their connections are read while served, to notice a client leaving.
WATCHED_LANES = ("stream", "poll")
# Requests waiting for a lane's thread beyond this many are refused at once with 503 (the health lane has
# no limit: its requests are quick). Every page and poller has at most one request waiting per lane.
QUEUE_LIMITS = {"main": 256, "poll": 256, "upload": 32, "stream": 64}


class Busy(Error):
    """The lane that would serve the request has too long a queue."""

    code = 503
    reason = "Service Unavailable"


class TooMany(Busy):
    """A connection let in over its address's limit asked for more than /healthz or /metrics."""


def _message(error: Error, adj, size: int | None = None) -> tuple[int, str, str]:
    """(status code, reason, one-line message) for one of waitress's own refusals (``size``: the declared
    body size)."""
    code, detail = error.code, " ".join(str(error.body).split()).rstrip(".")
    if code == 431:
        return code, error.reason, f"the request headers are too large (at most {MAX_HEADER_BYTES >> 10} KB)"
    if code == 413:  # the server's body limit is the upload limit plus the form's own bytes (server.py)
        mb = math.floor((adj.max_request_body_size - FORM_BYTES) / MB * 10) / 10
        return code, error.reason, too_big(size, mb)
    if code == 501:  # an unknown Transfer-Encoding: the request is unusable here, not a server fault
        return 400, "Bad Request", f"bad request: {detail}; send the body with Content-Length or chunked"
    if isinstance(error, TooMany):
        return code, error.reason, "too many connections from this address; try again"
    if code == 503:
        return code, error.reason, "the server is busy; try again in a moment"
    if code >= 500:
        return code, error.reason, "internal server error; the daemon's log has the details"
    return code, error.reason, f"bad request: {detail}" if detail else "bad request"


def json_error(code: int, reason: str, message: str, *, close: bool = True) -> bytes:
    """A complete HTTP/1.1 response carrying ``{"error": message}`` (for refusals made outside a task)."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            + ("Retry-After: 1\r\n" if code == 503 else "")
            + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode("latin-1") + body


class JSONErrorTask(ErrorTask):
    """waitress's own refusals (bad request line or headers, body too large, 500) as ``{"error": ...}``."""

    def execute(self):
        code, reason, message = _message(self.request.error, self.channel.adj,
                                         getattr(self.request, "content_length", None))
        body = json.dumps({"error": message}).encode()
        self.status = f"{code} {reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                      ("X-Content-Type-Options", "nosniff")])
        if code == 503:
            self.response_headers.append(("Retry-After", "1"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Task(WSGITask):
    """A WSGI task whose environ tells a streaming route how much of its output the client has not taken
    (``pi_search.backlog``) and whether the client has left (``pi_search.gone``)."""

    def get_environment(self):
        environ = super().get_environment()
        channel = self.channel
        environ["pi_search.backlog"] = lambda: channel.total_outbufs_len
        environ["pi_search.gone"] = lambda: peer_gone(channel)
        return environ


def peer_gone(channel) -> bool:
    """True when the client of ``channel`` has closed or reset its connection (a peek at the socket: the
    server loop does not read a connection whose request is being served, so the end of its stream waits
    there). A client that only half-closes after sending its request looks the same and is counted gone."""
    if not channel.connected:
        return True
    try:
        return channel.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset, or the socket already closed
        return True


class Channel(HTTPChannel):
    """One connection; knows when it started waiting for the client and since when a request is arriving."""

    task_class = Task
    error_task_class = JSONErrorTask
    request_began = 0.0
    lane = ""  # the lane serving the current request (set by Lanes.add_task)
    over_cap = False  # let in beyond MAX_PER_ADDRESS: may ask for /healthz and /metrics only

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map=map)
        self.waiting_since = self.creation_time

    def received(self, data):
        if self.request is None and data:
            self.request_began = time.time()
        return super().received(data)

    def service(self):
        try:
            super().service()
        finally:
            self.waiting_since = time.time()

    def readable(self):
        # While a preview or a long poll is served, keep reading so a client that leaves is noticed at
        # once; other requests are read one at a time, so a client that half-closes still gets its answer.
        if self.requests and self.lane not in WATCHED_LANES:
            return False
        return super().readable()

    def del_channel(self, map=None):
        super().del_channel(map)
        self.server.forget(self)

    def waiting(self) -> bool:
        """True when the connection holds nothing of ours: no request being served, no output to send."""
        return not (self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed)

    def too_slow(self, now: float) -> str | None:
        """Why the request being received is past its deadline (headers or the whole request not in time,
        or nothing more received for IDLE_TIMEOUT_S), as the 408's message; None while it is in time."""
        request = self.request
        if request is None or request.error or request.completed:
            return None
        part = "request" if request.headers_finished else "headers"
        limit = REQUEST_TIMEOUT_S if request.headers_finished else HEADER_TIMEOUT_S
        if now - self.request_began > limit:
            return f"the request's {part} did not arrive within {limit:g} s; send it at once"
        if now - self.last_activity > IDLE_TIMEOUT_S:
            missing = ("its body is shorter than its Content-Length" if request.headers_finished
                       else "its headers stopped")
            return (f"the request stalled: nothing received for {IDLE_TIMEOUT_S:g} s ({missing}); "
                    "send it whole")
        return None


class Server(TcpWSGIServer):
    """Keeps accepting when full: a new connection closes the oldest connection still waiting for its client.

    Slow-header and idle connections are closed after ``HEADER_TIMEOUT_S`` / ``IDLE_TIMEOUT_S``; under
    ``max_connections`` (derived from the file-descriptor limit) or ``MAX_PER_ADDRESS`` the oldest
    waiting connection (of the address holding the most) gives way, so a client that sends its request at
    once is always read. Connections being served are never evicted.
    """

    channel_class = Channel

    def __init__(self, application, *, max_connections: int, **kw):
        self.max_connections = max_connections
        self._by_host: dict[str, collections.deque] = {}  # open connections per client address, oldest first
        self.evicted = 0
        self._evict_logged = 0.0
        super().__init__(application, **kw)

    def set_socket_options(self, conn):
        super().set_socket_options(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    def readable(self):
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        return self.accepting

    def maintenance(self, now):
        # Before waitress's own idle sweep, which would close a stalled half-sent request without a word.
        for channel in list(self.active_channels.values()):
            why = channel.too_slow(now) if channel.waiting() else None
            if why:
                with contextlib.suppress(OSError):  # best effort: the client may not be reading at all
                    channel.socket.send(json_error(408, "Request Timeout", why))
                channel.handle_close()
                self.evicted += 1
        super().maintenance(now)

    def handle_accept(self):
        for _ in range(ACCEPT_BATCH):  # several per wake-up: a flood of connections costs fewer loop turns
            try:
                pair = self.accept()
            except OSError as exc:  # out of descriptors, or the peer left
                log.debug("accept failed: %s", exc)
                return
            if pair is None:
                return
            sock, addr = pair
            try:
                self.set_socket_options(sock)
            except OSError:  # the peer left before accept() returned
                sock.close()
                continue
            self._admit(self.channel_class(self, sock, addr, self.adj, map=self._map))

    def _admit(self, new: Channel) -> None:
        host = new.addr[0]
        mine = self._by_host.setdefault(host, collections.deque())
        mine.append(new)
        victims = []
        if len(mine) > MAX_PER_ADDRESS:
            victims.append(self._oldest_waiting(mine, new))
        if len(self.active_channels) - len(victims) > self.max_connections and new not in victims:
            crowd = max(self._by_host.values(), key=len)
            victims.append(self._oldest_waiting(crowd, new, victims))
        if victims == [new] and len(mine) <= MAX_PER_ADDRESS + HEALTH_HEADROOM:
            new.over_cap = True  # every other connection is being served: this one may ask for health only
            return
        for c in victims:
            if c is new:  # every connection of that address is being served: refuse the new one
                with contextlib.suppress(OSError):
                    new.socket.send(json_error(503, "Service Unavailable", "too many connections; try again"))
            c.handle_close()
        if victims:
            self.evicted += len(victims)
            now = time.monotonic()
            if now - self._evict_logged > 60:
                self._evict_logged = now
                log.warning("connection limits reached (%d open, at most %d per address): closing the oldest "
                            "idle or half-sent connections", len(self.active_channels), MAX_PER_ADDRESS)

    @staticmethod
    def _oldest_waiting(channels, new: Channel, exclude=()) -> Channel:
        for c in channels:
            if c is not new and c not in exclude and c.waiting():
                return c
        return new

    def forget(self, channel: Channel) -> None:
        """A channel closed: drop it from its address's list."""
        host = channel.addr[0] if channel.addr else None
        mine = self._by_host.get(host)
        if mine is not None:
            with contextlib.suppress(ValueError):
                mine.remove(channel)
            if not mine:
                del self._by_host[host]


def lane_of(channel) -> str:
    """The lane serving the channel's next request: health, stream, poll, upload or main."""
    request = channel.requests[0] if channel.requests else None
    if request is None or request.error:
        return "health"  # refusals are quick: the reserved threads answer them at once
    path, method = request.path or "", (request.command or "").upper()
    if path in ("/healthz", "/metrics"):
        return "health"
    if path == "/stream.mjpg":
        return "stream"
    if path == "/api/results" and request.query:
        try:
            wait = float(parse_qs(request.query).get("wait", ["0"])[0])
        except ValueError:
            wait = 0.0
        if wait > 0:
            return "poll"
    if method in ("POST", "PUT", "PATCH"):
        return "upload"
    return "main"


class _Lane(ThreadedTaskDispatcher):
    """A pool of named threads with its own queue."""

    def __init__(self, name: str, threads: int, max_queue: int | None):
        super().__init__()
        self.name = name
        self.size = threads
        self.max_queue = max_queue

    def start_new_thread(self, target, thread_no):
        threading.Thread(target=target, name=f"http-{self.name}-{thread_no}", args=(thread_no,),
                         daemon=True).start()

    def add_task(self, task):  # like the base class, without its warning on every queued task
        with self.lock:
            self.queue.append(task)
            self.queue_cv.notify()

    def queued(self) -> int:
        return len(self.queue)


class Lanes:
    """A task dispatcher for waitress that gives each kind of request its own threads (see ``lane_of``).

    A lane whose queue is full answers at once with 503 (on the health lane's reserved threads).
    """

    def __init__(self, sizes: dict[str, int], queue_limits: dict[str, int] | None = None):
        limits = QUEUE_LIMITS if queue_limits is None else queue_limits
        self.lanes = {name: _Lane(name, n, limits.get(name)) for name, n in sizes.items()}

    def start(self) -> None:
        """Start every lane's threads (once the server is bound)."""
        for lane in self.lanes.values():
            lane.set_thread_count(lane.size)

    def set_thread_count(self, count):  # waitress's dispatcher interface: the lanes are sized at construction
        self.start()

    def add_task(self, channel):
        lane = self.lanes.get(lane_of(channel)) or self.lanes["main"]
        channel.lane = lane.name
        if channel.over_cap and lane.name != "health":
            channel.requests[0].error = TooMany("too many connections from this address")
            lane = self.lanes["health"]
        elif lane.max_queue is not None and lane.queued() >= lane.max_queue:
            channel.requests[0].error = Busy(f"the {lane.name} lane is full")
            lane = self.lanes["health"]
        lane.add_task(channel)

    def sizes(self) -> dict[str, int]:
        return {name: lane.size for name, lane in self.lanes.items()}

    def shutdown(self, cancel_pending=True, timeout=5):
        deadline = time.monotonic() + timeout
        done = True
        for lane in self.lanes.values():
            done = lane.shutdown(cancel_pending, max(0.05, deadline - time.monotonic())) and done
        return done


def lane_sizes(max_viewers: int) -> dict[str, int]:
    """Threads per lane: every preview has its thread, plus two to answer previews over the limit."""
    return {**LANE_THREADS, "stream": max_viewers + 2}


def connection_budget() -> int:
    """Connections the server may hold open: raise the soft descriptor limit if allowed; keep 128 spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as exc:  # a seccomp filter or a hard limit: keep what we have
            log.debug("cannot raise the descriptor limit: %s", exc)
    soft = 4096 if soft == resource.RLIM_INFINITY else soft
    return max(32, min(2000, soft - 128))


def adjustments(max_body_bytes: int) -> dict:
    """waitress settings shared by every server the project starts."""
    return {
        "ident": "pi-search",
        "max_request_body_size": max_body_bytes,
        "max_request_header_size": MAX_HEADER_BYTES,
        "channel_timeout": IDLE_TIMEOUT_S,
        "cleanup_interval": 1,
        "channel_request_lookahead": 1,  # reads while serving, so a client that leaves is noticed at once
        "asyncore_use_poll": True,  # select() fails beyond descriptor 1023
        "log_socket_errors": False,  # a client that resets its connection is no fault of ours: no traceback
        "backlog": 1024,
    }


def make_server(app, *, host: str, port: int, max_viewers: int, max_body_bytes: int) -> Server:
    """The hardened server bound to host:port (OSError if the address is taken); not yet running."""
    lanes = Lanes(lane_sizes(max_viewers))
    server = Server(app, host=host, port=port, dispatcher=lanes, max_connections=connection_budget(),
                    **adjustments(max_body_bytes))
    lanes.start()
    return server

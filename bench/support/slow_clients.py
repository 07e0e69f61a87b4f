"""Slow-header clients: connections that send a request's headers one byte at a time and never finish."""

from __future__ import annotations

import selectors
import socket
import threading
import time


class SlowClients:
    """Keeps ``count`` connections from ``source`` open to host:port, each trickling header bytes.

    Every ``interval`` seconds each connection sends one more byte of an endless header; a connection the
    server closes is opened again, so ``count`` are always attempted. ``opened`` counts every connection
    made, ``closed_by_server`` the ones the server ended. Runs in a background thread until ``stop()``.
    """

    PREFIX = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self, port: int, count: int, *, host: str = "127.0.0.1", source: str = "127.0.0.1",
                 interval: float = 1.0):
        self.port, self.count, self.host, self.source, self.interval = port, count, host, source, interval
        self.opened = self.closed_by_server = self.refused = 0
        self._socks: dict[socket.socket, int] = {}
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def start(self) -> SlowClients:
        self._thread.start()
        return self

    def open_now(self) -> int:
        return len(self._socks)

    def _open(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.bind((self.source, 0))
        err = s.connect_ex((self.host, self.port))
        if err not in (0, 115):  # EINPROGRESS
            s.close()
            self.refused += 1
            return
        self._socks[s] = 0
        self._sel.register(s, selectors.EVENT_READ)
        self.opened += 1

    def _drop(self, s: socket.socket) -> None:
        self._sel.unregister(s)
        self._socks.pop(s, None)
        s.close()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            while len(self._socks) < self.count and not self._stop.is_set():
                self._open()
            timeout = max(0.0, next_tick - time.monotonic())
            for key, _ in self._sel.select(timeout):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.closed_by_server += 1
                    self._drop(s)
            if time.monotonic() >= next_tick:
                next_tick += self.interval
                for s in list(self._socks):
                    i = self._socks[s]
                    byte = self.PREFIX[i:i + 1] if i < len(self.PREFIX) else b"a"
                    try:
                        s.send(byte)
                        self._socks[s] = i + 1
                    except BlockingIOError:
                        pass  # not connected yet
                    except OSError:
                        self.closed_by_server += 1
                        self._drop(s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in list(self._socks):
            self._drop(s)

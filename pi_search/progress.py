"""Progress of a long run over items: a tqdm bar on a terminal, plain timed lines on stderr otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """A tqdm bar on a terminal; plain stderr lines with items/s and ETA (every 5 s) otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool, what: str = "embedding",
                 done: str = "embedded"):
        self.total, self.count, self.start_count = total, initial, initial
        self.what, self.done = what, done
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="item", desc=what, file=sys.stderr,
                            smoothing=0.1)
        elif enabled:
            self._line(f"{what} {total} items" + (f" ({initial} already done)" if initial else ""))
        self.enabled = enabled

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= 5.0 or self.count == self.total:
            self.last = now
            rate = (self.count - self.start_count) / max(now - self.t0, 1e-9)
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
            if self.enabled:
                self._line(f"{self.done} {self.count}/{self.total} items ({rate:.1f} items/s, "
                           f"ETA {eta_text})")

    @staticmethod
    def _line(text: str) -> None:
        """Progress for logs and pipes (no terminal): one plain line on stderr."""
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

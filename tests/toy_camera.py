"""A frame source defined in one module outside the package: a moving test pattern (``pattern:SEED``).

Importing this module registers it; nothing else changes for ``open_source``, the daemon or ``doctor``.
"""

from __future__ import annotations

import numpy as np

from pi_search.camera import BaseSource
from pi_search.errors import SourceError


class PatternSource(BaseSource):
    """RGB uint8 [height, width, 3] frames: a bright square that moves across a noisy grey field."""

    kind = "pattern"
    specs = (("pattern:SEED", "moving test pattern"),)

    @classmethod
    def from_spec(cls, arg, *, width, height, fps, loop):
        return cls(int(arg), width=width, height=height, fps=fps) if arg.isdigit() else None

    def __init__(self, seed: int, *, width: int = 640, height: int = 480, fps: float = 15.0):
        super().__init__(fps)
        self.name = f"pattern:{seed}"
        self.size = (height, width)
        self._rng = None
        self._seed = seed

    def start(self) -> None:
        self._rng = np.random.default_rng(self._seed)

    def read(self):
        if self._rng is None:
            raise SourceError(f"{self.name}: not started")
        self._pace()
        h, w = self.size
        rgb = self._rng.integers(100, 140, (h, w, 3), dtype=np.uint8)
        side = h // 4
        x = (self._count * 8) % (w - side)
        rgb[h // 3:h // 3 + side, x:x + side] = (230, 60, 40)
        return self._frame(rgb)

    def stop(self) -> None:
        self._rng = None

"""The gate: skips camera frames that barely differ from the last inferred one (a still scene)."""

from __future__ import annotations

import numpy as np

from ..config import GateConfig


class Gate:
    """Skips frames that barely differ from the last inferred one.

    Compares a small grey thumbnail (``size``, area-averaged, so sensor noise averages out) by mean absolute
    difference in grey levels. A frame passes when the difference reaches ``threshold``, when there is no
    reference yet, or after ``refresh_s`` seconds without inference.
    """

    def __init__(self, config: GateConfig):
        self.config = config
        self._ref: np.ndarray | None = None
        self._ref_time = 0.0
        self.last_diff = float("nan")

    def thumb(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        small = cv2.resize(rgb, tuple(self.config.size), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.int16)

    def check(self, rgb: np.ndarray, now: float) -> tuple[bool, np.ndarray | None]:
        """``(infer?, thumbnail)``; call ``accept(thumbnail, now)`` once the frame has been inferred."""
        if not self.config.enabled:
            self.last_diff = float("nan")
            return True, None
        t = self.thumb(rgb)
        if self._ref is None or self._ref.shape != t.shape:
            self.last_diff = float("inf")
            return True, t
        self.last_diff = float(np.abs(t - self._ref).mean())
        stale = self.config.refresh_s > 0 and now - self._ref_time >= self.config.refresh_s
        return self.last_diff >= self.config.threshold or stale, t

    def accept(self, thumb: np.ndarray | None, now: float) -> None:
        if thumb is not None:
            self._ref, self._ref_time = thumb, now

    def reset(self) -> None:
        self._ref = None

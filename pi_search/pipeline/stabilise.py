"""Steady matches from frame to frame: embedding smoothing and agreement before the shown matches change."""

from __future__ import annotations

import numpy as np

from ..config import SmoothingConfig


class Smoother:
    """Exponential moving average of the embeddings of consecutive inferred frames, restarted on a new item.

    ``alpha`` is the newest embedding's weight; a new embedding whose cosine similarity to the running mean
    is below ``reset_below`` restarts the mean (a different item came into view, so no lag). Input and
    output: float32 [dim], L2-normalised.
    """

    def __init__(self, config: SmoothingConfig):
        self.config = config
        self._mean: np.ndarray | None = None
        self.resets = 0

    def update(self, v: np.ndarray) -> np.ndarray:
        a = self.config.alpha
        new_item = self._mean is None or float(v @ self._mean) < self.config.reset_below
        if new_item:
            self.resets += 1
        if new_item or a >= 1.0:
            self._mean = v
            return v
        m = (1.0 - a) * self._mean + a * v
        n = float(np.linalg.norm(m))
        self._mean = (m / n if n > 0 else v).astype(np.float32)
        return self._mean

    def reset(self) -> None:
        self._mean = None


class Agreement:
    """Holds the shown matches until a new best match has led ``agree`` consecutive inferred frames.

    Near-ties (an item that is not in the catalog, or two similar items) would otherwise swap places from
    frame to frame. ``fresh=True`` (a new item came into view) shows the new matches at once, as do matches
    found in another bundle than the shown ones (``generation``: a result never mixes two bundles).
    """

    def __init__(self, agree: int):
        self.agree = agree
        self._shown: tuple = ()
        self._candidate: str | None = None
        self._streak = 0

    def update(self, matches: tuple, fresh: bool) -> tuple:
        top = matches[0].id if matches else None
        shown_top = self._shown[0].id if self._shown else None
        if matches and self._shown and _generation(matches) != _generation(self._shown):
            fresh = True
        if fresh or self.agree <= 1 or not self._shown or top == shown_top:
            self._shown, self._candidate, self._streak = matches, None, 0
            return matches
        self._streak = self._streak + 1 if top == self._candidate else 1
        self._candidate = top
        if self._streak >= self.agree:
            self._shown, self._candidate, self._streak = matches, None, 0
            return matches
        # Keep the shown order, with this frame's scores where the items are still among the matches.
        scores = {m.id: m for m in matches}
        return tuple(scores.get(m.id, m) for m in self._shown)

    def reset(self) -> None:
        self._shown, self._candidate, self._streak = (), None, 0


def _generation(matches: tuple) -> int:
    return getattr(matches[0], "generation", 0)

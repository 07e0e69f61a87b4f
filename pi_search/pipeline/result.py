"""What the worker publishes for the page and the API: the matches of one frame and that frame as JPEG."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatestResult:
    """What the page and the API show: the matches for one inferred frame and that frame as one JPEG.

    ``timings_ms`` holds each stage of that frame (capture, gate, preprocess, extract, search, encode) and
    ``latency_ms``: capture time to publication. ``jpeg`` is encoded once and shared by every viewer.
    ``guide`` (None or ``{"hint", "target", "region"}``, boxes as fractions [x0, y0, x1, y1] of the frame):
    where the framing expects the item, the window the settled look picked (or None), and a sentence for
    staff when the best match is weak or the item was found outside the target box (or None).
    ``settle_ms``: these matches come from the settled look at the whole frame (``Worker.settle``), which
    took that long; ``timings_ms`` and ``latency_ms`` are then those of the inference it refined.
    """

    frame_id: int
    frame_time: float
    published_time: float
    matches: tuple = ()
    timings_ms: dict = field(default_factory=dict)
    latency_ms: float = 0.0
    jpeg: bytes = b""
    width: int = 0
    height: int = 0
    guide: dict | None = None
    settle_ms: float | None = None
    codes: tuple = ()        # barcodes read in the still scene: {"code", "format", "matched", "id"} each

    def as_dict(self) -> dict:
        out = {
            "frame_id": self.frame_id,
            "frame_time": round(self.frame_time, 3),
            "published_time": round(self.published_time, 3),
            "latency_ms": round(self.latency_ms, 2),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "frame_size": [self.width, self.height],
            "matches": [m.as_dict() for m in self.matches],
            "codes": list(self.codes),
        }
        if self.guide is not None:
            out["guide"] = self.guide
        if self.settle_ms is not None:
            out["settle_ms"] = round(self.settle_ms, 2)
        return out

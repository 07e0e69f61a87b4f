"""The Raspberry Pi camera through picamera2 (from apt: python3-picamera2), imported only when opened."""

from __future__ import annotations

import logging
import time

from ..errors import SourceError
from .source import BaseSource, Frame

log = logging.getLogger(__name__)


class PicameraSource(BaseSource):
    """The Pi camera's main stream, scaled by the ISP to ``width`` x ``height`` (little CPU resizing).

    Asks for ``BGR888``, which libcamera lays out as R,G,B bytes in memory (``RGB888`` would give B,G,R), so
    frames need no colour conversion. Rows may be padded to a stride wider than ``width``: the padding is
    sliced off (a view, no copy). Frames: RGB uint8 [height, width, 3].
    """

    FORMAT = "BGR888"

    kind = "picamera2"
    specs = (("picamera2", ""),)   # the Pi camera
    rank = 0

    @classmethod
    def from_spec(cls, arg, *, width, height, fps, loop):
        return cls(width=width, height=height, fps=fps)

    def __init__(self, *, width: int = 640, height: int = 480, fps: float = 15.0, buffer_count: int = 3):
        super().__init__(fps)
        self.width, self.height, self.buffer_count = int(width), int(height), int(buffer_count)
        self.name = "picamera2"
        self._cam = None

    def start(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError("picamera2 is not installed: on Raspberry Pi OS run "
                              "`sudo apt install python3-picamera2` and make the venv with "
                              "--system-site-packages (or use --source opencv:0 / folder:DIR)") from exc
        cam = None
        try:
            cam = Picamera2()
            cfg = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": self.FORMAT},
                buffer_count=self.buffer_count,
                controls={"FrameRate": self.fps},
            )
            cam.configure(cfg)
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError, IndexError (no camera), OSError
            if cam is not None:
                _close_quietly(cam)
            raise SourceError(f"cannot open the Pi camera ({type(exc).__name__}: {exc}); is it connected, "
                              "enabled, and not used by another process?") from exc
        self._cam, self._count = cam, 0
        log.info("picamera2 started: %dx%d %s at %.1f fps", self.width, self.height, self.FORMAT, self.fps)

    def read(self) -> Frame:
        if self._cam is None:
            raise SourceError("picamera2: read before start (or after stop)")
        try:
            arr = self._cam.capture_array("main")
        except Exception as exc:
            raise SourceError(f"picamera2: capture failed ({type(exc).__name__}: {exc})") from exc
        t = time.time()
        if arr is None or arr.ndim != 3 or arr.shape[0] < self.height or arr.shape[1] < self.width:
            raise SourceError(f"picamera2: unexpected frame {getattr(arr, 'shape', None)}, "
                              f"wanted {self.height}x{self.width}x3")
        # Drop the row-stride padding and any 4th byte (XBGR formats); keep R,G,B.
        return self._frame(arr[: self.height, : self.width, :3], t)

    def stop(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _close_quietly(cam)
            log.info("picamera2 closed")


def _close_quietly(cam) -> None:
    for step in ("stop", "close"):
        try:
            getattr(cam, step)()
        except Exception as exc:  # closing must never raise: the camera is being released anyway
            log.warning("picamera2 %s failed: %s", step, exc)

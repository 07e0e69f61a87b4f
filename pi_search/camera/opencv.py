"""USB webcams (``opencv:N``) and video files (``opencv:PATH``) through OpenCV's VideoCapture."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import SourceError
from .source import BaseSource, Frame

log = logging.getLogger(__name__)


class OpenCVSource(BaseSource):
    """A webcam by device number, or a video file replayed at its own frame rate (else ``fps``).

    Frames: RGB uint8 [H, W, 3] (OpenCV delivers B,G,R; converted once here).
    """

    kind = "opencv"
    specs = (("opencv:N", "webcam"), ("opencv:PATH", "video file"))
    rank = 1

    @classmethod
    def from_spec(cls, arg, *, width, height, fps, loop):
        return cls(arg, width=width, height=height, fps=fps, loop=loop) if arg else None

    def __init__(self, target: str, *, width: int = 640, height: int = 480, fps: float = 15.0,
                 loop: bool = True):
        super().__init__(fps)
        self.device = int(target) if target.isdigit() else None
        self.path = None if self.device is not None else Path(target)
        self.name = f"opencv:{target}"
        self.width, self.height, self.loop = int(width), int(height), bool(loop)
        self._cap = None

    def start(self) -> None:
        import cv2

        if self.path is not None and not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file for the opencv: source")
        # OpenCV's own log says why it could not open the device ([ WARN ...] cap_v4l.cpp) on every retry;
        # the SourceError below says it once in the project's words, so its logger is silent meanwhile.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            cap = cv2.VideoCapture(self.device if self.device is not None else str(self.path))
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not cap.isOpened():
            cap.release()
            what = f"webcam {self.device} (is it plugged in? see ls /dev/video*)" if self.path is None \
                else f"{self.path} (not a video OpenCV can read)"
            raise SourceError(f"cannot open {what}")
        if self.device is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
        else:
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            if file_fps and 0 < file_fps < 240:
                self.fps = float(file_fps)
        self._cap, self._count, self._next_due = cap, 0, 0.0
        log.info("opened %s", self.name)

    def read(self) -> Frame:
        import cv2

        if self._cap is None:
            raise SourceError(f"{self.name}: read before start (or after stop)")
        ok, bgr = self._cap.read()
        if not ok and self.path is not None and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise SourceError(f"{self.name}: no frame (device unplugged, or end of the video)")
        t = time.time()
        if self.path is not None:
            self._pace()
        return self._frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t)

    def stop(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

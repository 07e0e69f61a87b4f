"""The image feature extractor: a TFLite model run by LiteRT (or tflite-runtime), L2-normalised output."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, RuntimeMissingError
from .shipped import shipped_model

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime")
_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
_TFLITE_MAGIC = b"TFL3"
# LiteRT's C++ logger writes this on fd 2 when the first interpreter allocates its tensors; no environment
# variable or API of the wheel turns it off (TF_CPP_MIN_LOG_LEVEL has no effect on it).
_RUNTIME_NOISE = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)
_FD2_LOCK = threading.Lock()


@contextmanager
def _runtime_noise_filtered():
    """Catch what the runtime writes on fd 2 meanwhile and pass every line on except ``_RUNTIME_NOISE``."""
    with _FD2_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to filter
            yield
            return
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                with suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = [line for line in caught.read().splitlines(keepends=True)
                        if line.rstrip() not in _RUNTIME_NOISE]
                if kept:
                    os.write(2, b"".join(kept))


def default_model_path() -> Path:
    """The shipped int8 EfficientNet-Lite0 extractor (``models/`` of a checkout, else the package data)."""
    return shipped_model()


def load_runtime(name: str | None = None):
    """Return ``(module name, Interpreter class, version)``: ai_edge_litert first, tflite_runtime next."""
    names = (name,) if name else RUNTIMES
    errors = []
    for n in names:
        if n not in _PACKAGES:
            raise RuntimeMissingError(f"unknown runtime {n!r}; choose one of {', '.join(RUNTIMES)}")
        try:
            mod = importlib.import_module(f"{n}.interpreter")
        except ImportError as exc:
            errors.append(f"{_PACKAGES[n]} ({exc})")
            continue
        try:
            version = importlib.metadata.version(_PACKAGES[n])
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return n, mod.Interpreter, version
    raise RuntimeMissingError(
        "no TFLite runtime: install ai-edge-litert (pip install ai-edge-litert) "
        "or tflite-runtime with numpy<2; tried " + "; ".join(errors)
    )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's contract as the model declares it."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def as_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype,
                "quantization": {"scale": self.scale, "zero_point": self.zero_point}}


def _tensor_info(detail: dict) -> TensorInfo:
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorInfo(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale), int(zero))


class Extractor:
    """Image embedding model.

    Tensor contract of ``embed``: input RGB uint8 [224, 224, 3] (one image, NHWC without the batch axis;
    see ``framing.to_model_input``); output float32 [dim], L2-normalised. The model's own input dtype
    (uint8, int8 or float32 taking 0..255) and output quantisation are read from the file, never assumed.
    One interpreter is created and reused; calls are serialised by a lock (the interpreter is not
    thread-safe).
    """

    def __init__(self, model_path: str | Path | None = None, *, num_threads: int = 1,
                 runtime: str | None = None):
        path = Path(model_path) if model_path else default_model_path()
        self.path = path
        if not path.is_file():
            raise ModelError(f"{path}: model file not found; pass --model FILE or reinstall pi-search")
        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[4:8] != _TFLITE_MAGIC:
            raise ModelError(f"{path}: not a TFLite model (no TFL3 identifier); use a .tflite file")
        self.runtime, interpreter_cls, self.runtime_version = load_runtime(runtime)
        try:
            with _runtime_noise_filtered():
                self._interp = interpreter_cls(model_path=str(path), num_threads=int(num_threads))
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: the runtime cannot load it ({str(exc).splitlines()[0]}); "
                             "the file is corrupt or truncated: copy it again") from exc
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}")
        self.input = _tensor_info(inputs[0])
        self.output = _tensor_info(outputs[0])
        shape = self.input.shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise ModelError(f"{path}: input must be NHWC, 3 channels, square; got {list(shape)}")
        if self.input.dtype not in ("uint8", "int8", "float32"):
            raise ModelError(f"{path}: unsupported input dtype {self.input.dtype}")
        if len(self.output.shape) != 2:
            raise ModelError(f"{path}: output must be [1, dim] features, got {list(self.output.shape)}")
        self._in_index = inputs[0]["index"]
        self._out_index = outputs[0]["index"]
        self.num_threads = int(num_threads)
        self.size = int(shape[1])
        self.dim = int(self.output.shape[1])
        self._lock = threading.Lock()
        self._sha256: str | None = None
        log.info("extractor %s: %s %s, %d-d, %s %s, %d thread(s)", path.name, self.input.dtype,
                 list(shape), self.dim, self.runtime, self.runtime_version, self.num_threads)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def _quantize_input(self, rgb: np.ndarray) -> np.ndarray:
        info = self.input
        if info.dtype == "uint8" and (not info.quantized or (info.scale == 1.0 and info.zero_point == 0)):
            return rgb
        x = rgb.astype(np.float32)
        if info.dtype == "float32":
            return x
        # Real value 0..255 -> q = x / scale + zero_point, clipped to the integer type.
        q = np.round(x / info.scale + info.zero_point)
        lo, hi = (0, 255) if info.dtype == "uint8" else (-128, 127)
        return np.clip(q, lo, hi).astype(info.dtype)

    def _dequantize_output(self, out: np.ndarray) -> np.ndarray:
        if self.output.quantized and out.dtype != np.float32:
            return (out.astype(np.float32) - self.output.zero_point) * self.output.scale
        return out.astype(np.float32, copy=False)

    def features(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 [size, size, 3] -> the model's raw pooled features, float32 [dim] (not normalised)."""
        if rgb.shape != (self.size, self.size, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 [{self.size}, {self.size}, 3], got {rgb.dtype} {rgb.shape}")
        x = self._quantize_input(rgb)[np.newaxis]
        with self._lock:
            self._interp.set_tensor(self._in_index, x)
            self._interp.invoke()
            out = self._interp.get_tensor(self._out_index)[0]
        return self._dequantize_output(out)

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 [size, size, 3] -> float32 [dim], L2-normalised."""
        vec = self.features(rgb)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def info(self) -> dict:
        """Machine-readable description (``pi-search model info --json``)."""
        return {
            "path": str(self.path),
            "name": self.name,
            "size_bytes": self.path.stat().st_size,
            "sha256": self.sha256,
            "input": self.input.as_dict(),
            "output": self.output.as_dict(),
            "dim": self.dim,
            "runtime": {"name": self.runtime, "version": self.runtime_version},
            "num_threads": self.num_threads,
        }

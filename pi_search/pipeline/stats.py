"""The worker's counters and stage latency histograms, as prometheus-client metrics (safe from any thread)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGES = ("capture", "gate", "preprocess", "extract", "search", "encode")
# Histogram bucket upper bounds in seconds, shared by every stage (Prometheus convention).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COUNTERS = {
    "frames": "Camera frames read",
    "inferences": "Frames run through the model and the index",
    "skipped_frames": "Frames skipped by the gate (unchanged scene)",
    "source_errors": "Camera failures (each followed by a reopen)",
    "frame_errors": "Frames that could not be processed",
    "uploads": "Photos searched through /api/search",
    "settled": "Settled looks at a still scene (windows over the whole frame)",
    "code_reads": "Still frames read for barcodes",
}


class Stats:
    """Counters, the viewer gauge and per-stage histograms of one worker.

    The metrics are prometheus-client objects (their updates take a lock: the worker and request threads may
    write and read them at once) registered in no global registry: ``collectors`` are added to each app's
    registry (``web.metrics.make_registry``). Read the current values as attributes (``stats.frames``).
    """

    def __init__(self):
        self._counters = {name: Counter(f"pi_search_{name}", doc, registry=None)
                          for name, doc in COUNTERS.items()}
        self._viewers = Gauge("pi_search_stream_viewers", "Open /stream.mjpg connections", registry=None)
        self._stages = Histogram("pi_search_stage_seconds", "Time per pipeline stage of inferred frames",
                                 ["stage"], buckets=BUCKETS, registry=None)
        for stage in (*STAGES, "latency"):
            self._stages.labels(stage)   # every stage listed from the start, at zero

    @property
    def collectors(self) -> tuple:
        return (*self._counters.values(), self._viewers, self._stages)

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name`` (one of ``COUNTERS``)."""
        self._counters[name].inc(n)

    def observe(self, stage: str, seconds: float) -> None:
        """One duration of ``stage`` (one of ``STAGES`` or ``"latency"``: capture to publication)."""
        self._stages.labels(stage).observe(seconds)

    def set_viewers(self, n: int) -> None:
        self._viewers.set(n)

    def _value(self, metric, suffix: str = "_total") -> float:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(suffix):
                    return sample.value
        return 0.0

    def stage(self, name: str) -> tuple[int, float]:
        """``(count, sum of seconds)`` observed for stage ``name``."""
        count = total = 0.0
        for family in self._stages.collect():
            for sample in family.samples:
                if sample.labels.get("stage") != name:
                    continue
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
        return int(count), float(total)

    frames = property(lambda self: int(self._value(self._counters["frames"])))
    inferences = property(lambda self: int(self._value(self._counters["inferences"])))
    skipped = property(lambda self: int(self._value(self._counters["skipped_frames"])))
    source_errors = property(lambda self: int(self._value(self._counters["source_errors"])))
    frame_errors = property(lambda self: int(self._value(self._counters["frame_errors"])))
    uploads = property(lambda self: int(self._value(self._counters["uploads"])))
    settled = property(lambda self: int(self._value(self._counters["settled"])))
    code_reads = property(lambda self: int(self._value(self._counters["code_reads"])))
    viewers = property(lambda self: int(self._value(self._viewers, "")))

"""Prometheus metrics read from the worker's counters at scrape time (one registry per app)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def make_registry(service):
    """A CollectorRegistry exposing ``service``'s counters, gauges and stage latency histograms."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service))
    return registry


class _Collector:
    def __init__(self, service):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        s = self.service.stats
        for name, value, doc in (
            ("pi_search_frames", s.frames, "Camera frames read"),
            ("pi_search_inferences", s.inferences, "Frames run through the model and the index"),
            ("pi_search_skipped_frames", s.skipped, "Frames skipped by the gate (unchanged scene)"),
            ("pi_search_source_errors", s.source_errors, "Camera failures (each followed by a reopen)"),
            ("pi_search_frame_errors", s.frame_errors, "Frames that could not be processed"),
            ("pi_search_uploads", s.uploads, "Photos searched through /api/search"),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        up, _ = self.service.camera_state()
        yield GaugeMetricFamily("pi_search_camera_up", "1 if the camera delivers frames",
                                value=1 if up else 0)
        yield GaugeMetricFamily("pi_search_camera_fps", "Camera frames per second", value=self.service.fps())
        yield GaugeMetricFamily("pi_search_stream_viewers", "Open /stream.mjpg connections", value=s.viewers)
        bundle = self.service.bundle
        yield GaugeMetricFamily("pi_search_catalog_items", "Items in the loaded bundle",
                                value=len(bundle) if bundle is not None else 0)
        h = HistogramMetricFamily("pi_search_stage_seconds", "Time per pipeline stage of inferred frames",
                                  labels=["stage"])
        for stage, hist in s.stages.items():
            h.add_metric([stage], hist.cumulative(), hist.sum)
        yield h

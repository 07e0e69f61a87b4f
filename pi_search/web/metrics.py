"""Prometheus metrics of one app: the appliance's own metrics plus gauges read at scrape time."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge

from ..app import Appliance


def make_registry(appliance: Appliance) -> CollectorRegistry:
    """A registry exposing ``appliance``'s counters and stage histograms (``pipeline.stats.Stats``) and
    gauges of the camera and the catalog, read when /metrics is scraped."""
    prometheus_client.disable_created_metrics()   # no ``*_created`` series: counters start with the daemon
    registry = CollectorRegistry(auto_describe=True)
    for collector in appliance.stats.collectors:
        registry.register(collector)
    Gauge("pi_search_camera_up", "1 if the camera delivers frames", registry=registry).set_function(
        lambda: 1 if appliance.camera_state()[0] else 0)
    Gauge("pi_search_camera_fps", "Camera frames per second", registry=registry).set_function(appliance.fps)
    Gauge("pi_search_catalog_items", "Items in the loaded bundle", registry=registry).set_function(
        lambda: len(appliance.catalog))
    return registry

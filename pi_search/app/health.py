"""The appliance's health report (/healthz): camera and frame loop, model, and the served bundle."""

from __future__ import annotations

import time

from ..bundle.trust import served_status as update_of

FAULT_SHOWN_S = 60.0  # a failed read of the bundle shows in /healthz this long


def report(loop, extractor, catalog) -> dict:
    """Health of the camera, model and index; ``ok`` is False with reasons when any is down.

    ``loop`` is the frame loop (``port.FrameLoop``), ``catalog`` the live catalog (``serving``, ``problem``,
    ``fault``, ``refused``).
    """
    cam_up, cam_reason = loop.camera_state()
    model_up = extractor is not None
    cat = catalog
    index_up = cat.serving
    problem = cat.problem
    fault = cat.fault
    fault_age = time.time() - fault[0] if fault else None
    alive = loop.alive
    last_frame = loop.last_frame_time
    reasons = []
    if not cam_up:
        reasons.append(f"camera: {cam_reason}")
    if not alive and loop.running:
        reasons.append("worker: not running")
    if loop.driver_wedged():
        reasons.append(f"camera: {loop.wedged()} read(s) never returned (driver wedged); "
                       "the daemon restarts under systemd")
    if not model_up:
        reasons.append("model: not loaded")
    if not index_up:
        reasons.append(f"index: {problem or 'not loaded'}")
    elif fault_age is not None and fault_age < FAULT_SHOWN_S:
        reasons.append(f"index: a read failed {fault_age:.0f} s ago: {fault[1]}")
    return {
        "ok": not reasons,
        "reasons": reasons,
        "camera": {"up": cam_up, "reason": cam_reason, "source": loop.source_name,
                   "last_frame_age_s": round(time.time() - last_frame, 3) if last_frame else None,
                   "fps": round(loop.fps(), 2)},
        "model": {"up": model_up, "name": getattr(extractor, "name", None),
                  "threads": getattr(extractor, "num_threads", None)},
        "index": {"up": index_up, "items": len(cat) if index_up else 0, "problem": problem,
                  "refused": getattr(cat, "refused", None) if index_up else None,
                  "update": update_of(cat),
                  "last_fault": None if fault is None else {"age_s": round(fault_age, 1), "error": fault[1]}},
        "worker": {"alive": alive},
    }

"""A bundle damaged while it is served: the request that hits the damage gets a JSON error, /healthz shows it,
and everything else keeps being served."""

from __future__ import annotations

import os
import shutil

from fakes import kiosk

from pi_search.config import load_config
from pi_search.live.catalog import LiveCatalog
from pi_search.pipeline.worker import Worker
from pi_search.web import create_app


def test_an_unreadable_row_fails_that_request_only_and_shows_in_healthz(tmp_path, bundle_dir, extractor):
    live = tmp_path / "bundle"
    shutil.copytree(bundle_dir, live)
    cat = LiveCatalog.open(live, extractor=extractor)
    try:
        config = load_config(None, {})
        client = create_app(kiosk(Worker(lambda: None, extractor, cat, config)), config).test_client()
        assert client.get("/thumbs/coffee").status_code == 200
        path = live / "items.sqlite"
        fd = os.open(path, os.O_WRONLY)      # damage on the disk under the served bundle
        os.ftruncate(fd, path.stat().st_size // 2)
        os.close(fd)
        answers = {i: client.get(f"/thumbs/{i}") for i in ("spade", "strawberry", "lightbulb", "fruits")}
        failed = [r for r in answers.values() if r.status_code == 500]
        assert failed, {i: r.status_code for i, r in answers.items()}
        for r in failed:
            assert r.is_json and "items.sqlite" in r.get_json()["error"]
        assert client.get("/thumbs/coffee").status_code == 200      # rows read before still answer
        h = client.get("/healthz")
        body = h.get_json()
        assert "items.sqlite" in body["index"]["last_fault"]["error"]
        assert any(r.startswith("index: a read failed") for r in body["reasons"])
        assert client.get("/api/results").status_code == 200
    finally:
        cat.close()

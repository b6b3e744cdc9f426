"""The request log (service/request_log.py) under uvicorn's standard --log-config: a dictConfig
that routes `simclr_embed.access` to a file with its own format gets the request's fields
(the JSON lines, with trace ids, are checked in test_tracing.py)."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np

from tests.support.servers import Server, png

IMG = png(np.random.default_rng(9).integers(0, 256, (32, 32, 3), np.uint8))


def test_serve_takes_uvicorns_log_config_for_the_request_log(bundle_dir, tmp_path):
    out = tmp_path / "access.log"
    config = {"version": 1, "disable_existing_loggers": False,
              "formatters": {"f": {"format": "%(route)s %(status)s %(model)s %(images)s"}},
              "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out),
                                    "formatter": "f"}},
              "loggers": {"simclr_embed.access": {"handlers": ["file"], "level": "INFO",
                                                  "propagate": False}}}
    (tmp_path / "log.json").write_text(json.dumps(config))
    srv = Server(bundle_dir, tmp_path / "data",
                 module=f"simclr_embed.cli serve --log-config {tmp_path / 'log.json'}").start()
    try:
        r = httpx.post(srv.url + "/v1/embed", content=IMG, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        want = f"/v1/embed 200 {r.json()['model']} 1"
        end = time.monotonic() + 30  # the line follows the response: wait for it
        while want not in (out.read_text() if out.exists() else ""):
            assert time.monotonic() < end, out.read_text() if out.exists() else "no file"
            time.sleep(0.01)
    finally:
        srv.stop()

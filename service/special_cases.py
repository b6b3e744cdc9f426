"""The request path's special cases: each a second way of doing something, kept because a
benchmark here measured what it buys (docs/benchmarks.md, "The request path's special cases":
`benchmarks/results/special_cases.json`, `gc_settle.json`, `spinning.json`). They live here
with their reasons, the service always runs with these values, and nothing else decides
whether they apply; `benchmarks/servers/variant_server.py` turns one off to measure it again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpecialCases:
    # POST /v1/embed and /v1/search answered past FastAPI's routing (service/hot_path.py):
    # +27 % requests/s at 32 clients, -11 % lone-request latency.
    hot_path: bool = True
    # The loaded heap frozen and the collector's first generation enlarged (app.settle_heap):
    # +10 % requests/s at 32 clients, p99 halved.
    settle_heap: bool = True
    # A lone image runs on the event loop instead of the model thread (Batcher._run_alone):
    # -4 % lone-request latency.
    lone_run: bool = True
    # Images up to this many pixels decode on the event loop while no decode is queued
    # (pipeline.decode_all): +29 % requests/s, -12 % lone latency with 32 x 32 PNGs.
    inline_decode_pixels: int = 128 * 128
    # How ONNX Runtime's idle threads wait (service/runtime.py): `run` has the lone latency
    # of `always` and the throughput of `off`.
    spinning: str = "run"


CASES = SpecialCases()  # read where each case applies; changed only by variant_server

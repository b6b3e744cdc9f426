"""A picture of one batched request's trace from a real run: a server traced to
benchmarks.servers.otlp_sink, two /v1/classify requests of two images each queued within its
gathering window (so they share a model batch), and their spans drawn on one time axis
(benchmarks/results/tracing/batched_trace.png, shown in the README).

    python -m benchmarks.serving trace --bundle bundles/default
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import secrets
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx

from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.benchmarks.servers.otlp_sink import Receiver, Span

log = logging.getLogger("trace_picture")
STAGES = ("receive body", "admission", "decode", "queue wait", "model run", "search")


def queued_images(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("simclr_embed_queue_images{"))


def two_batched_requests(srv: ServiceProcess, image: bytes) -> list[str]:
    """Their trace ids: the second sent once the first is queued."""
    body = {"images": [base64.b64encode(image).decode()] * 2}
    ids = [secrets.token_hex(16) for _ in range(2)]

    def post(trace_id: str) -> None:
        httpx.post(srv.url + "/v1/classify", json=body, timeout=30, headers={
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}).raise_for_status()

    first = threading.Thread(target=post, args=(ids[0],))
    first.start()
    while queued_images(srv.url) < 2:
        time.sleep(0.005)
    post(ids[1])
    first.join()
    return ids


def draw(spans: list[Span], ids: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, Span, str]] = []
    for n, trace_id in enumerate(ids):
        mine = [s for s in spans if s.trace_id == trace_id]
        server = next(s for s in mine if s.kind == 2)
        rows.append((f"request {'AB'[n]}: {server.name}", server, f"C{n}"))
        rows += [(f"    {s.name}", s, f"C{n}") for s in sorted(mine, key=lambda s: s.start_ns)
                 if s.name in STAGES]
    batch = next(s for s in spans if s.name == "model batch" and s.links)
    rows.append((f"model batch: {batch.attributes['batch.size']} images of "
                 f"{batch.attributes['batch.requests']} requests (linked to both)", batch, "C2"))
    t0 = min(s.start_ns for _, s, _ in rows)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1))
    for y, (_, s, color) in enumerate(rows):
        ax.barh(y, (s.end_ns - s.start_ns) / 1e6, left=(s.start_ns - t0) / 1e6, color=color)
        ax.text((s.end_ns - t0) / 1e6 + 5, y, f"{(s.end_ns - s.start_ns) / 1e6:.1f} ms",
                va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first request arrived")
    ax.set_title("Two requests sharing one model batch (OpenTelemetry spans, real run)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


QUICK = {"out": Path("benchmarks/results/quick/tracing")}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--image", type=Path, default=Path("examples/cat.png"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tracing"))


def run(args: argparse.Namespace) -> None:
    with Receiver() as receiver, tempfile.TemporaryDirectory() as tmp:
        srv = ServiceProcess(args.bundle, Path(tmp) / "data", Path(tmp) / "server.log",
                             OTEL_TRACES_EXPORTER="otlp", OTEL_BSP_SCHEDULE_DELAY="20",
                             OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                             SIMCLR_EMBED_MAX_WAIT_MS="200").start()
        try:
            ids = two_batched_requests(srv, args.image.read_bytes())
            for trace_id in ids:
                receiver.trace(trace_id, {"POST /v1/classify", "queue wait", "model run"})
        finally:
            srv.stop()
    mine = [s for s in receiver.spans if s.trace_id in ids or s.name == "model batch"]
    draw(mine, ids, args.out / "batched_trace.png")
    (args.out / "batched_trace.json").write_text(json.dumps(
        [s.__dict__ for s in mine], indent=1))
    log.info("wrote %s", args.out / "batched_trace.png")

"""The floor under the HTTP path: the service's own engine (batching, lone-run, the same decode)
behind the cheapest HTTP server Python has (a bare uvloop protocol, httptools, orjson, no ASGI,
no admission, no metrics, no error handling), against the service, in interleaved rounds. Per
server: a lone request's p50 (wrk, 1 connection) and requests/s at 32 connections, each
against the engine timed in this process just before (batch 1 p50, batch 64 images/s), and the
server's CPU per answered request. If the floor cannot reach a goal of issue #22 on this host,
no HTTP stack can that keeps this engine.

    python -m benchmarks.http_floor --bundle bundles/default
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks.archive.asgi_servers import tree_cpu_s
from simclr_embed.benchmarks.archive.refusal_floor import wait_for_port
from simclr_embed.benchmarks.harness import hardware, write_result, wrk
from simclr_embed.benchmarks.parts.serving_http import images_per_s
from simclr_embed.benchmarks.process import ServiceProcess, free_port
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import make_session

log = logging.getLogger("http_floor")
PROVIDER = "openvino"  # what provider=auto takes on this host: both servers pinned to it


# --- the floor server ------------------------------------------------------------------------
def serve_floor(port: int) -> None:
    import httptools
    import orjson
    import uvloop

    from simclr_embed.service.engine import Engine
    from simclr_embed.service.metrics import Metrics
    from simclr_embed.service.preprocess import decode_image
    from simclr_embed.service.settings import Settings

    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

    class Conn(asyncio.Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            self.t, self.parser, self.body = transport, httptools.HttpRequestParser(self), []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            raw, self.body = b"".join(self.body), []
            asyncio.get_running_loop().create_task(self.answer(raw))

        async def answer(self, raw: bytes) -> None:
            engine.inflight.requests += 1  # what the engine's lone-run test reads
            try:
                image = decode_image(raw, engine.size, settings.max_request_pixels)
                emb, _ = await engine.infer(image[None])
            finally:
                engine.inflight.requests -= 1
            out = orjson.dumps({"model": engine.model_id, "embeddings": emb},
                               option=orjson.OPT_SERIALIZE_NUMPY)
            self.t.write(head % len(out) + out)

    async def main() -> None:
        await engine.start()
        server = await asyncio.get_running_loop().create_server(
            Conn, "127.0.0.1", port, backlog=2048)
        await server.serve_forever()

    settings = Settings()
    engine = Engine(settings, Metrics())
    uvloop.run(main())


# --- the comparison --------------------------------------------------------------------------
def engine_b1_p50_ms(session, image: np.ndarray, reps: int = 200) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, {"pixels": image[None]})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(url: str, pid: int, png: Path, seconds: float, session, images: np.ndarray
            ) -> dict:
    b1 = engine_b1_p50_ms(session, images[0])
    lone = wrk(url, png, 1, seconds).result()
    b64 = images_per_s(session, images)
    before = tree_cpu_s(pid)
    loaded = wrk(url, png, 32, seconds).result()
    answered = max(loaded["requests"] - loaded["non2xx"], 1)
    return {"engine_b1_p50_ms": b1, "lone_p50_ms": lone["p50_ms"],
            "lone_vs_engine_b1": lone["p50_ms"] / b1, "engine_b64_images_per_s": b64,
            "requests_per_s_32": loaded["requests_per_s"], "p99_ms_32": loaded["p99_ms"],
            "non2xx_32": loaded["non2xx"], "vs_engine_b64": loaded["requests_per_s"] / b64,
            "server_cpu_ms_per_request_32": (tree_cpu_s(pid) - before) * 1000 / answered,
            "wrk_cpu_share_32": loaded["tool_cpu_share_of_cores"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/http_floor.json"))
    p.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_floor:
        return serve_floor(args.serve_floor)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from simclr_embed.training.data import load_dataset, stratified_subset

    images = stratified_subset(load_dataset(args.data)[1], 7, seed=11).images
    session = make_session(load_bundle(args.bundle).encoder_path("int8"), args.threads, PROVIDER)
    for _ in range(3):  # first runs allocate
        session.run(None, {"pixels": images[:64]})
    env = {"SIMCLR_EMBED_PROVIDER": PROVIDER, "SIMCLR_EMBED_THREADS": str(args.threads)}
    runs: dict[str, list[dict]] = {"service": [], "floor": []}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        png = t / "query.png"
        Image.fromarray(images[0]).save(png)
        srv = ServiceProcess(args.bundle, t / "service", t / "service.log", **env).start()
        port = free_port()
        floor = subprocess.Popen(
            [sys.executable, "-m", "simclr_embed.benchmarks.archive.http_floor", "--serve-floor",
             str(port)], env={**os.environ, **env, "SIMCLR_EMBED_BUNDLE": str(args.bundle),
                              "SIMCLR_EMBED_DATA_DIR": str(t / "floor")},
            stdout=(t / "floor.log").open("w"), stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, floor, timeout=120)
            time.sleep(3)  # the floor's engine warms up after it listens
            servers = (("service", srv.url + "/v1/embed", srv.pid),
                       ("floor", f"http://127.0.0.1:{port}/v1/embed", floor.pid))
            for r in range(args.rounds):
                for name, url, pid in servers if r % 2 == 0 else servers[::-1]:
                    runs[name].append(measure(url, pid, png, args.seconds, session, images))
                    log.info("round %d %s: %s", r, name, runs[name][-1])
        finally:
            floor.terminate()
            floor.wait(30)
            srv.stop()
    medians = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
               for name, rs in runs.items()}
    write_result(args.out, {"benchmark": "http_floor", "hardware": hardware(),
                            "bundle": args.bundle.name, "provider": PROVIDER,
                            "threads": args.threads, "rounds": args.rounds,
                            "seconds": args.seconds, "runs": runs, "medians": medians})
    log.info("medians: %s", medians)


if __name__ == "__main__":
    main()

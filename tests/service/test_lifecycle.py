"""SIGTERM: the server stops taking work but finishes what it has already accepted."""

import asyncio
import signal
import time

import httpx

from tests.support.servers import Server, png, wait_for_metric


def test_sigterm_lets_in_flight_requests_finish(bundle_dir, tmp_path, cifar10) -> None:
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_MAX_BATCH_SIZE="8",
                 SIMCLR_EMBED_MAX_IMAGES_PER_REQUEST="8").start()
    images = [png(x) for x in cifar10[1].images[:16]]
    signalled = 0.0

    async def post(c: httpx.AsyncClient, i: int) -> tuple[int, float]:
        r = await c.post("/v1/embed", files=[("files", ("a.png", images[i], "image/png"))] * 8)
        return r.status_code, time.perf_counter()

    async def main() -> tuple[int, list[tuple[int, float]]]:
        nonlocal signalled
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            tasks = [asyncio.create_task(post(c, i)) for i in range(16)]
            # 16 batches of one request each: signal once the first has run and the rest are queued
            await asyncio.to_thread(wait_for_metric, srv.url, "simclr_embed_batch_size_count",
                                    lambda n: n >= 1)
            signalled = time.perf_counter()
            srv.proc.send_signal(signal.SIGTERM)
            pending = await asyncio.to_thread(refused_while, tasks)
            return pending, await asyncio.gather(*tasks)

    def refused_while(tasks: list[asyncio.Task]) -> int:
        """Tries new requests until one is refused (the port closed, or a connection that was
        still in the listen backlog closed unanswered); how many accepted requests were still
        unanswered at that moment."""
        deadline = time.monotonic() + 60  # bounds a hang only
        while time.monotonic() < deadline:
            try:
                httpx.get(srv.url + "/healthz", timeout=5)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                return sum(not t.done() for t in tasks)
        raise AssertionError("new connections were still taken 60 s after SIGTERM")

    pending, results = asyncio.run(main())
    log = srv.stop()
    assert pending > 0  # refused new work while accepted work was still being done
    assert [code for code, _ in results] == [200] * 16
    assert max(t for _, t in results) > signalled  # some were still running at the signal
    assert "Application shutdown complete" in log

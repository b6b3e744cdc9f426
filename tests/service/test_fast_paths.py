"""Each serving optimization keeps the answers: a lone request run on the event loop and the
same image in a batch, a thumbnail decoded inline and in the decode pool, every ORT spinning
setting, and OpenVINO against ONNX Runtime on the same INT8 file, all on real CIFAR-10 images
and a real server."""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from simclr_embed.service.engine import Engine
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.pipeline import decode_all
from simclr_embed.service.preprocess import decode_image
from simclr_embed.service.runtime import SPINNING, make_session
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES
from tests.support.servers import Server, metric, png, wait_for_metric


def embed(url: str, body: bytes) -> np.ndarray:
    r = httpx.post(url + "/v1/embed", content=body, headers={"content-type": "image/png"},
                   timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"][0], np.float32)


def test_lone_and_batched_requests_give_the_same_embeddings(bundle_dir: Path, tmp_path: Path,
                                                           cifar10) -> None:
    bodies = [png(x) for x in cifar10[1].images[:24]]
    busy = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate((bodies * 3)[:64])]
    srv = Server(bundle_dir, tmp_path / "data").start()
    try:
        before = httpx.get(srv.url + "/metrics").text
        alone = np.stack([embed(srv.url, b) for b in bodies])  # one at a time: the lone path
        mid = httpx.get(srv.url + "/metrics").text
        with ThreadPoolExecutor(25) as pool:
            # 64 images keep the model busy, so the 24 single-image requests queue behind them
            blocker = pool.submit(httpx.post, srv.url + "/v1/embed", files=busy, timeout=60)
            # In flight once its body is held (received, until it is answered): its 64 images
            # are then decoding or in the model, for about a tenth of a second at least.
            wait_for_metric(srv.url, "simclr_embed_body_bytes", lambda held: held > 0)
            together = np.stack(list(pool.map(lambda b: embed(srv.url, b), bodies)))
            assert blocker.result().status_code == 200
        after = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    lone = "simclr_embed_lone_runs_total"
    assert metric(mid, lone) - metric(before, lone) == 24
    batches = (metric(after, "simclr_embed_batch_size_count")
               - metric(mid, "simclr_embed_batch_size_count"))
    assert batches < 1 + 24 - 2, batches  # the blocker, then batches of several requests
    np.testing.assert_allclose(alone, together, atol=1e-5)


class FakeRequest:
    """A small fake: decode_all only asks a request whether its client is still there, and
    for its deadline (none: an empty scope)."""

    def __init__(self) -> None:
        self.scope: dict = {}

    async def is_disconnected(self) -> bool:
        return False


def test_inline_and_pool_decodes_are_the_same(cifar10) -> None:
    engine = Engine(Settings(decode_threads=1), Metrics())
    engine.size = 32
    small = png(cifar10[1].images[0])
    big = png(np.kron(cifar10[1].images[1], np.ones((8, 8, 1), np.uint8)))  # 256x256
    assert CASES.inline_decode_pixels < 256 * 256  # the big one goes to the pool
    settings = engine.settings

    async def run() -> tuple[np.ndarray, np.ndarray]:
        inline = await decode_all(FakeRequest(), engine, settings, [small, big])
        async with engine.decode_slots:  # a decode in progress: the thumbnail queues for a slot
            queued = asyncio.create_task(decode_all(FakeRequest(), engine, settings, [small]))
            for _ in range(100):  # however many turns the loop takes, it stays queued
                await asyncio.sleep(0)
            assert not queued.done()
        return inline, await queued

    inline, pooled = asyncio.run(run())
    engine.decode_pool.shutdown()
    np.testing.assert_array_equal(inline[0], pooled[0])
    np.testing.assert_array_equal(inline[0], decode_image(small, 32, 10**8))
    np.testing.assert_array_equal(inline[1], decode_image(big, 32, 10**8))


def test_openvino_serves_the_int8_model_within_the_gates(bundle_dir: Path, tmp_path: Path,
                                                        server, cifar10) -> None:
    images = cifar10[1].images[::50][:200]  # (200, 32, 32, 3) real test images
    fp32 = make_session(bundle_dir / "encoder_fp32.onnx", 1)
    ort8 = make_session(bundle_dir / "encoder_int8.onnx", 1)
    ov8 = make_session(bundle_dir / "encoder_int8.onnx", 1, provider="openvino")
    ref = fp32.run(None, {"pixels": images})[0]
    logits_ort = ort8.run(None, {"pixels": images})[1]
    emb_ov, logits_ov = ov8.run(None, {"pixels": images})
    assert (emb_ov * ref).sum(1).mean() >= 0.998  # the export's INT8 cosine gate
    agree = (logits_ov.argmax(1) == logits_ort.argmax(1)).mean()
    assert agree >= 0.95, agree
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_PROVIDER="openvino").start()
    try:
        body = png(images[0])
        served = embed(srv.url, body)
        info = httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    assert 'provider="OpenVINO-CPU"' in info
    assert float(served @ embed(server.url, body)) > 0.998  # vs the ORT server, same file


def test_spinning_settings_change_timing_not_answers(bundle_dir: Path, cifar10) -> None:
    images = cifar10[1].images[:40]  # (40, 32, 32, 3)
    outs = {mode: make_session(bundle_dir / "encoder_int8.onnx", 2, spinning=mode).run(
        None, {"pixels": images})[0] for mode in SPINNING}
    for mode in SPINNING:
        np.testing.assert_allclose(outs[mode], outs["run"], atol=1e-5)
    with pytest.raises(ValueError, match="valid choices: run, always, off"):
        make_session(bundle_dir / "encoder_int8.onnx", spinning="sometimes")



@pytest.mark.parametrize("settle", [True, False])
def test_startup_settles_the_heap_unless_told_not_to(bundle_dir: Path, tmp_path: Path,
                                                     settle: bool, monkeypatch) -> None:
    from simclr_embed.service.app import GC_GEN0_THRESHOLD, create_app

    monkeypatch.setattr(CASES, "settle_heap", settle)

    async def started() -> tuple[int, int]:
        app = create_app(Settings(bundle=bundle_dir, data_dir=tmp_path))
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count(), gc.get_threshold()[0]

    before = gc.get_threshold()
    gc.unfreeze()
    try:
        frozen, gen0 = asyncio.run(started())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert (frozen > 0) == settle
    assert (gen0 == GC_GEN0_THRESHOLD) == settle

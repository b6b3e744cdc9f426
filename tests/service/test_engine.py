"""The engine in process, on a real bundle and a real ONNX Runtime session: a batch loop that
dies is restarted with its callers failed (not left waiting), one that cannot recover turns
readiness off, and no wait on the model is without a deadline. The faults are injected by
replacing one engine method (named where it is done)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from simclr_embed.service.batcher import CRASH_LIMIT
from simclr_embed.service.engine import Engine
from simclr_embed.service.errors import ModelFailure, NotReady, Overloaded
from simclr_embed.service.metrics import Metrics
from simclr_embed.service.settings import Settings
from tests.support.gate import HeldModel


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), np.uint8)


async def started(bundle_dir, tmp_path, **kw) -> Engine:
    engine = Engine(Settings(bundle=bundle_dir, data_dir=tmp_path, threads=1, **kw), Metrics())
    await engine.start()
    return engine


def test_a_crashed_batch_loop_fails_its_callers_and_restarts(bundle_dir, tmp_path):
    async def run() -> None:
        engine = await started(bundle_dir, tmp_path)
        real, calls = engine.batcher._take_batch, []

        def crash_once():  # the fault: an error outside the model run, once
            calls.append(1)
            if len(calls) == 1:
                real()  # moves the batch out of the queue, then dies
                raise RuntimeError("bookkeeping bug")
            return real()

        engine.batcher._take_batch = crash_once
        results = await asyncio.gather(engine.infer(images(2)), engine.infer(images(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, ModelFailure) for r in results), results
        emb, _ = await asyncio.wait_for(engine.infer(images(2)), 10)  # the loop is back
        assert emb.shape == (2, engine.dim) and engine.ready
        assert engine.metrics.registry.get_sample_value(
            "simclr_embed_model_loop_crashes_total", {"model": engine.model_id}) == 1
        await engine.stop()

    asyncio.run(run())


def test_a_loop_that_keeps_crashing_turns_readiness_off(bundle_dir, tmp_path):
    async def run() -> None:
        engine = await started(bundle_dir, tmp_path)

        def always():  # the fault: every batch dies
            raise RuntimeError("broken for good")

        engine.batcher._take_batch = always
        for _ in range(CRASH_LIMIT):
            with pytest.raises(ModelFailure):
                await asyncio.wait_for(engine.infer(images(2)), 10)
        for _ in range(100):  # poll: the supervisor gives up right after the last crash
            if not engine.ready:
                break
            await asyncio.sleep(0.01)
        assert not engine.ready
        await engine.stop()

    asyncio.run(run())


def test_every_wait_on_the_model_has_a_deadline(bundle_dir, tmp_path):
    async def run() -> None:
        engine = await started(bundle_dir, tmp_path, model_timeout_s=0.3)
        real = engine.batcher.run

        def stuck(batch):  # the fault: a model run that takes far too long
            time.sleep(2)
            return real(batch)

        engine.batcher.run = stuck
        with pytest.raises(Overloaded, match=r"did not answer within 0\.3 s"):
            await engine.infer(images(2))
        engine.batcher.run = real
        await engine.stop()

    asyncio.run(run())


def test_a_stopping_engine_fails_its_queued_requests_at_once(bundle_dir, tmp_path):
    """A swap or a shutdown stops an engine with requests queued behind a batch in the model:
    they get 503 not_ready while that batch still runs, instead of waiting their whole
    MODEL_TIMEOUT_S (30 s by default); so does a request that held the engine from before."""
    async def run() -> None:
        engine = await started(bundle_dir, tmp_path)
        model = HeldModel(engine)
        in_model, queued = await model.one_in_one_behind(engine, images(2), images(3))
        stopping = asyncio.create_task(engine.stop())
        with pytest.raises(NotReady, match="stopped"):
            await asyncio.wait_for(queued, 10)
        assert not model.is_open  # answered while the model was still busy
        with pytest.raises(NotReady):
            await engine.infer(images(1))
        model.open()
        await stopping
        in_model.cancel()

    asyncio.run(run())


def test_a_job_queued_behind_a_batch_counts_its_wait(bundle_dir, tmp_path):
    """simclr_embed_queue_wait_seconds: one observation per batched job, the wait of one queued
    behind a batch in the model included (held there by a gate)."""
    async def run() -> None:
        engine = await started(bundle_dir, tmp_path)
        model = HeldModel(engine)
        first, queued = await model.one_in_one_behind(engine, images(2), images(3))
        model.open()
        await asyncio.gather(first, queued)
        reg, labels = engine.metrics.registry, {"model": engine.model_id}
        assert reg.get_sample_value("simclr_embed_queue_wait_seconds_count", labels) == 2
        assert reg.get_sample_value("simclr_embed_queue_wait_seconds_sum", labels) > 0
        await engine.stop()

    asyncio.run(run())

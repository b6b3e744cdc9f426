"""An engine whose model runs wait at a gate the test opens: what is queued behind a batch in
the model is then known, with no timing involved."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from simclr_embed.service.engine import Engine


class HeldModel:
    """Replaces `engine.batcher.run` (the model call, in the model thread): each batch records its
    size, says it has entered, and waits until `open()`."""

    def __init__(self, engine: Engine) -> None:
        self.real = engine.batcher.run
        self.sizes: list[int] = []
        self.gate, self.running = threading.Event(), threading.Event()
        engine.batcher.run = self._run  # type: ignore[method-assign]

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(batch))
        self.running.set()
        assert self.gate.wait(30)
        return self.real(batch)

    async def entered(self) -> None:
        """Returns once a batch is in the model."""
        await asyncio.to_thread(self.running.wait, 30)

    async def one_in_one_behind(self, engine: Engine, first: np.ndarray, then: np.ndarray
                                ) -> tuple[asyncio.Task, asyncio.Task]:
        """`first` in the model (held), then `then` in the queue behind it: their tasks."""
        in_model = asyncio.create_task(engine.infer(first))
        await self.entered()
        queued = asyncio.create_task(engine.infer(then))
        while engine.pending == 0:  # the loop's turn in which `then` enters the queue
            await asyncio.sleep(0)
        return in_model, queued

    def open(self) -> None:
        self.gate.set()

    @property
    def is_open(self) -> bool:
        return self.gate.is_set()

"""The micro-batcher: the queue of inference jobs, the batch loop that hands them to the model
thread, and its supervision. It runs whatever `run` it is bound to (service/model.py's) and asks
`in_flight` how many requests the server holds (the admission layer's count), so that it
imports neither the model nor the admission layer.

Batching policy: a request never waits for company. The loop takes whatever is queued when the
model becomes free (up to max_batch_size images) and runs it at once, so a lone request pays no
batching delay, while under load the requests that arrived during one batch form the next one.
max_wait_ms > 0 adds a short gathering window for deployments that prefer throughput. The queue
is bounded in images: past max_queue_images callers get 503 with Retry-After right away instead
of a latency that grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import SpanContext
from starlette.requests import ClientDisconnect

from simclr_embed.service import deadline, request_log, tracing
from simclr_embed.service.errors import (
    DeadlineExceeded,
    ModelFailure,
    NotReady,
    Overloaded,
    ServiceError,
)
from simclr_embed.service.metrics import Metrics, ModelMetrics
from simclr_embed.service.settings import Settings
from simclr_embed.service.special_cases import CASES

log = logging.getLogger(__name__)

CRASH_LIMIT, CRASH_WINDOW_S = 5, 10.0  # batch-loop crashes that mean it cannot recover
Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Job:
    images: np.ndarray  # (n, S, S, 3) uint8
    future: asyncio.Future
    deadline: float | None  # the time.monotonic() its caller stops waiting at (deadline.py)
    trace: SpanContext | None  # its request's span (service/tracing.py), None when off
    notes: dict | None  # its request's log line (service/request_log.py), None when off
    enqueued: float = field(default_factory=time.perf_counter)
    enqueued_ns: int = field(default_factory=time.time_ns)  # a span's clock
    taken: bool = False  # in a model batch: its deadline no longer drops it



class Batcher:
    """`bind()` gives it the model to run; `start()` its loop; `stop()` fails what is queued."""

    def __init__(self, settings: Settings, metrics: Metrics | ModelMetrics,
                 in_flight: Callable[[], int] = lambda: 0) -> None:
        self.settings, self.metrics = settings, metrics
        self.in_flight = in_flight  # requests admitted and not yet answered (the Gate's count)
        self.run: Run | None = None
        self.attributes: dict[str, str] = {}  # the model's, on every span of a job
        self.model_id = ""
        self._running = False  # a batch is in the model thread
        self.ready = False
        self.failed = False  # the model can no longer run: /healthz answers 503
        self._crashes: deque[float] = deque(maxlen=CRASH_LIMIT)
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # images queued, not yet handed to the model
        self._wake = asyncio.Event()
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="onnx")
        self._worker: asyncio.Task | None = None
        self._taken: list[_Job] = []  # the batch being run

    def bind(self, run: Run, model_id: str, attributes: dict[str, str],
             metrics: ModelMetrics) -> None:
        self.run, self.model_id, self.attributes, self.metrics = run, model_id, attributes, metrics

    def _model(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.run is None:
            raise RuntimeError("the batcher runs no model before bind()")
        return self.run(batch)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._supervise())
        self.ready = True

    def stop(self) -> None:
        """Fails what is queued or in the model with 503 at once; `close()` joins the thread."""
        self.ready = False
        if self._worker:
            self._worker.cancel()
        if self._taken or self._jobs:
            self._fail_all(self._taken + list(self._jobs),
                           NotReady("the model was stopped (a swap or a shutdown); retry",
                                    headers={"Retry-After": "1"}))

    def close(self) -> None:
        """Blocking: waits for a batch in the model thread to finish."""
        self._model_pool.shutdown(wait=True)

    @property
    def pending(self) -> int:
        """Images queued for the model, not yet in a batch."""
        return self._pending

    def admit(self, n: int) -> None:
        """Refuse n more images when the queue is full: called before decoding too, so that a
        refusal costs as little CPU as possible when CPU is what is short."""
        if self._pending + n > self.settings.max_queue_images:
            self.metrics.rejected.inc()
            raise Overloaded(f"{self._pending} images already queued; retry shortly",
                             headers={"Retry-After": "1"})

    async def infer(self, images: np.ndarray, until: float | None = None,
                    gone: Callable[[], Awaitable[object]] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, S, S, 3) uint8 -> this caller's own (embeddings (n, D), logits (n, C)). `until`:
        the caller's deadline (service/deadline.py), past which its job leaves the queue unrun
        and it gets 504 (once in a model batch, it waits for its answer); `gone()`: returns when
        the caller has left, and its job leaves the queue unrun too."""
        n = len(images)
        if not self.ready:  # held since before a stop or a failure: never queued to wait
            raise NotReady("the model is not running (stopped, or failed); retry",
                           headers={"Retry-After": "1"})
        self.admit(n)
        tracing.annotate(self.attributes)
        request_log.note(model=self.model_id)
        if n == 1 and CASES.lone_run and self._idle():
            await asyncio.sleep(0)  # requests already read off the sockets enter the Gate first
            if self._idle():
                return self._run_alone(images)
        job = _Job(images, asyncio.get_running_loop().create_future(), until, tracing.current(),
                   request_log.current())
        self._jobs.append(job)
        self._pending += n
        self.metrics.queue_images.set(self._pending)
        self._wake.set()
        limit = self.settings.model_timeout_s
        left = limit if until is None else min(limit, until - time.monotonic())
        watcher = asyncio.ensure_future(gone()) if gone is not None else None
        try:  # a timed-out job stays queued (dropped there if its deadline passed)
            done, _ = await asyncio.wait([job.future, *([watcher] if watcher else [])],
                                         timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher is not None:
                watcher.cancel()
        if job.future in done:
            return job.future.result()
        if watcher in done:  # its place is freed: the batcher skips a cancelled job
            job.future.cancel()
            raise ClientDisconnect()
        if left < limit and not job.taken:
            raise DeadlineExceeded(f"the request's {deadline.HEADER} passed while it waited "
                                   "for the model", param=deadline.HEADER)
        if left < limit:  # its deadline passed in the model: a late answer beats a 504, as
            with contextlib.suppress(TimeoutError):  # Triton's deadline covers the queue alone
                return await asyncio.wait_for(asyncio.shield(job.future), limit - left)
        raise Overloaded(f"the model did not answer within {limit:g} s; retry shortly",
                         headers={"Retry-After": "1"})

    def _idle(self) -> bool:
        """No other request admitted, queued or in the model. A request still in a socket buffer
        is not counted: without the yield in infer(), a closed loop of clients degrades into
        one-image runs on the event loop (measured: 32 clients, 1,100 -> 700 req/s)."""
        return self.in_flight() <= 1 and not self._jobs and not self._running

    def _run_alone(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A lone image runs right here on the event loop: waking the model thread after an idle
        gap costs more than the INT8 model itself (docs/benchmarks.md, "Serving"), and with no
        other request in flight there is nothing the loop could do meanwhile."""
        start = time.perf_counter()
        try:
            with tracing.span("model run", {"batch.size": 1}):
                out = self._model(images)
        except Exception as e:
            log.exception("inference failed (lone run)")
            self._model_failed()
            raise ModelFailure(f"inference failed: {e}") from e
        took = time.perf_counter() - start
        self.metrics.lone_runs.inc()
        self.metrics.queue_wait.observe(0.0)
        self.metrics.batch_size.observe(1)
        self.metrics.inference.observe(took)
        request_log.note(queue_ms=0.0, model_ms=round(took * 1000, 3), batch_size=1)
        return out

    def _take_batch(self) -> list[_Job]:
        """Moves the next batch from the queue into self._taken (job by job, so that a crash
        midway loses none of them to the supervisor)."""
        jobs: list[_Job] = []
        self._taken, count = jobs, 0
        limit = self.settings.max_batch_size
        while self._jobs and (not jobs or count + len(self._jobs[0].images) <= limit):
            job = self._jobs.popleft()
            self._pending -= len(job.images)
            if job.future.cancelled():  # its caller left (counted where it was seen)
                continue
            if deadline.expired(job.deadline):  # its caller has its 504: no model time
                self._drop(job)
                continue
            job.taken = True
            jobs.append(job)
            count += len(job.images)
        self.metrics.queue_images.set(self._pending)
        return jobs

    def _drop(self, job: _Job) -> None:
        error = deadline.exceeded(self.metrics, "model")
        if not job.future.done():
            job.future.set_exception(error)

    async def _supervise(self) -> None:
        """Runs the batch loop; when it dies of an unexpected error, that batch's and every
        queued caller get a 500, the crash is counted and logged, and the loop starts again.
        Crashing CRASH_LIMIT times within CRASH_WINDOW_S means it cannot recover: the engine
        fails for good (/readyz and /healthz 503) for the orchestrator to replace it."""
        while not self.failed:
            try:
                await self._batch_loop()
            except Exception as e:
                log.exception("the model's batch loop crashed; failing its requests")
                self._fail_all(self._taken + list(self._jobs),
                               ModelFailure(f"the model failed: {type(e).__name__}"))
                self._model_failed()
        self._fail_all(list(self._jobs), NotReady("the model can no longer run; see the "
                                                  "server's log"))

    def _model_failed(self) -> None:
        """Counts a crash of the batch loop or a failed model run (batched or lone): CRASH_LIMIT
        of them within CRASH_WINDOW_S mean the model cannot recover, and the engine fails for
        good: not ready, and not alive, so that a liveness probe restarts the process."""
        self.metrics.model_crashes.inc()
        self._crashes.append(time.monotonic())
        crashes = self._crashes
        if len(crashes) == CRASH_LIMIT and crashes[-1] - crashes[0] < CRASH_WINDOW_S:
            log.error("the model failed %d times in %g s: not ready, not alive", CRASH_LIMIT,
                      CRASH_WINDOW_S)
            self.ready, self.failed = False, True
            self._wake.set()  # the batch loop, if waiting, ends

    def _fail_all(self, jobs: list[_Job], error: ServiceError) -> None:
        self._jobs.clear()
        self._taken = []
        self._pending, self._running = 0, False
        self.metrics.queue_images.set(0)
        for j in jobs:
            if not j.future.done():
                j.future.set_exception(error)

    async def _batch_loop(self) -> None:
        wait = self.settings.max_wait_ms / 1000
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            if self.failed:
                return
            if wait and self._pending < self.settings.max_batch_size:
                await asyncio.sleep(wait)
            self._running = True
            if jobs := self._take_batch():
                await self._run_batch(jobs)
            self._taken, self._running = [], False

    async def _run_batch(self, jobs: list[_Job]) -> None:
        start, start_ns = time.perf_counter(), time.time_ns()
        for j in jobs:
            self.metrics.queue_wait.observe(start - j.enqueued)
        batch = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        self.metrics.batch_size.observe(len(batch))
        size = {"batch.size": len(batch), "batch.requests": len(jobs)}
        try:
            with tracing.batch_span([j.trace for j in jobs],
                                    {**self.attributes, **size}) as batch_trace:
                emb, logits = await asyncio.get_running_loop().run_in_executor(
                    self._model_pool, self._model, batch)
        except Exception as e:  # a model failure fails this batch's callers, not the loop
            log.exception("inference failed")
            self._model_failed()
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(ModelFailure(f"inference failed: {e}"))
            return
        took = time.perf_counter() - start
        self.metrics.inference.observe(took)
        end_ns = time.time_ns()
        for j in jobs:
            tracing.queued_and_run(j.trace, batch_trace, j.enqueued_ns, start_ns, end_ns, size)
            if j.notes is not None:
                j.notes.update(queue_ms=round((start - j.enqueued) * 1000, 3),
                               model_ms=round(took * 1000, 3), batch_size=len(batch))
        offset = 0
        for j in jobs:
            n = len(j.images)
            if not j.future.done():  # the caller may have gone away
                j.future.set_result((emb[offset : offset + n], logits[offset : offset + n]))
            offset += n

"""Work a test runs beside its main line, in a loop until the test's block ends.

The threads are stopped and joined however the block ends and are daemons besides: a failed
assertion once left three non-daemon search loops spinning, and pytest's process, its summary
printed, waited on them until CI's time ran out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType


class Loops:
    """`with Loops(body, n) as loops:` runs `body()` over and over in `n` threads until the block
    ends; `loops.errors` holds what a body raised (each thread stops at its first)."""

    def __init__(self, body: Callable[[], object], n: int) -> None:
        self.body = body
        self.errors: list[BaseException] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.body()
        except BaseException as e:  # reported in the main thread
            self.errors.append(e)

    def __enter__(self) -> Loops:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> list[BaseException]:
        """Stops and joins the loops; what they raised."""
        self.stopped.set()
        for t in self.threads:
            t.join(60)
        return self.errors

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""The supervisor of `simclr-embed serve --workers N`: uvicorn's own, except for SIGHUP.

uvicorn's supervisor answers SIGHUP by restarting every worker, and a worker that fails to
start (a bundle copied in half, or one that fails its checks) makes it stop the whole server.
Here SIGHUP goes on to each worker instead, which swaps its changed bundles in place
(service/models.py): verified beside the serving model, refused if bad, the old model serving
meanwhile, no restart.
"""

from __future__ import annotations

import logging
import os
import signal

from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger(__name__)


class SwappingSupervisor(Multiprocess):
    def handle_hup(self) -> None:
        log.info("SIGHUP: each of the %d workers swaps in its changed bundles",
                 len(self.processes))
        for worker in self.processes:
            if worker.process.pid is not None and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGHUP)

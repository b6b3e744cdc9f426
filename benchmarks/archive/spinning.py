"""How ONNX Runtime's idle threads wait (run / always / off; the service runs "run"), measured
twice, each round interleaving the three settings: the model alone, called from a worker thread
as the service calls it, back to back and after an idle gap; and the service over HTTP, one
client and 32, with its event loop's and its other threads' CPU per request.

    python -m benchmarks.spinning --bundle bundles/default
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.ab import compare
from simclr_embed.benchmarks.harness import hardware, percentiles, write_result
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import SPINNING, make_session

log = logging.getLogger("benchmarks.spinning")


def engine(bundle: Path, threads: int, rounds: int, reps: int) -> list[dict]:
    path = load_bundle(bundle).encoder_path("int8")
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    sessions = {mode: make_session(path, threads, spinning=mode) for mode in SPINNING}
    pool = ThreadPoolExecutor(1)  # the service's model thread
    cases = [(b, gap) for b in (1, 20) for gap in (0.0, 0.1)]
    samples: dict = {(mode, b, gap): [] for mode in sessions for b, gap in cases}
    for s in sessions.values():
        s.run(None, {"pixels": images})
    for _ in range(rounds):
        for b, gap in cases:
            for mode, s in sessions.items():
                for _ in range(reps):
                    time.sleep(gap)
                    t0 = time.perf_counter()
                    pool.submit(s.run, None, {"pixels": images[:b]}).result()
                    samples[(mode, b, gap)].append((time.perf_counter() - t0) * 1000)
    return [{"spinning": mode, "batch": b, "idle_gap_s": gap} | percentiles(v)
            for (mode, b, gap), v in samples.items()]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=8, help="per wrk run")
    p.add_argument("--out", default="benchmarks/results/spinning.json")
    args = p.parse_args()
    rows = engine(args.bundle, args.threads, args.rounds, args.reps)
    served = compare(args.bundle, {mode: ({"SIMCLR_EMBED_PROVIDER": "cpu"}, [f"--spinning={mode}"])
                                  for mode in SPINNING},
                     args.rounds, args.seconds)
    write_result(args.out, {"benchmark": "spinning", "hardware": hardware(),
                            "threads": args.threads, "rows": rows, "http": served})
    for r in rows:
        log.info("%s", r)
    for mode, r in served.items():
        log.info("%s: %s", mode, r)


if __name__ == "__main__":
    main()

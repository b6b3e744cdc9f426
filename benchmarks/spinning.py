"""ONNX Runtime's spinning threads on or off, with the model called from a worker thread as the
service calls it, back to back and after an idle gap: why SIMCLR_EMBED_ORT_SPINNING is on.

    python -m benchmarks.spinning --bundle bundles/default
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.common import hardware, write_result
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import make_session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/spinning.json")
    args = p.parse_args()
    path = load_bundle(args.bundle).encoder_path("int8")
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    sessions = {spin: make_session(path, args.threads, spinning=spin) for spin in (True, False)}
    pool = ThreadPoolExecutor(1)  # the service's model thread
    cases = [(b, gap) for b in (1, 20) for gap in (0.0, 0.1)]
    samples: dict = {(spin, b, gap): [] for spin in sessions for b, gap in cases}
    for s in sessions.values():
        s.run(None, {"pixels": images})
    for _ in range(args.rounds):
        for b, gap in cases:
            for spin, s in sessions.items():
                for _ in range(args.reps):
                    time.sleep(gap)
                    t0 = time.perf_counter()
                    pool.submit(s.run, None, {"pixels": images[:b]}).result()
                    samples[(spin, b, gap)].append((time.perf_counter() - t0) * 1000)
    rows = [{"spinning": spin, "batch": b, "idle_gap_s": gap, "n": len(v),
             "p50_ms": statistics.median(v), "p95_ms": float(np.percentile(v, 95)),
             "p99_ms": float(np.percentile(v, 99))} for (spin, b, gap), v in samples.items()]
    write_result(args.out, {"benchmark": "spinning", "hardware": hardware(),
                            "threads": args.threads, "rows": rows})
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()

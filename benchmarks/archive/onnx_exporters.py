"""Which torch.onnx exporter gives the faster graph under ONNX Runtime: the TorchScript-based one
or the torch.export-based one (dynamo), for the same checkpoint, interleaved over rounds.

    python -m benchmarks.onnx_exporters runs/quick/checkpoint.pt
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.export.onnx_export import EXPORTERS, export_onnx
from simclr_embed.export.report import interleaved_latency
from simclr_embed.service.runtime import make_session
from simclr_embed.training.checkpoint import load_checkpoint

log = logging.getLogger("benchmarks.onnx_exporters")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/onnx_exporters.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    state = load_checkpoint(args.checkpoint)
    size = state["config"]["image_size"]
    images = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), np.uint8)
    sessions, nodes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in EXPORTERS:
            path = export_onnx(state, Path(tmp) / f"{name}.onnx", name)
            sessions[name] = make_session(path, args.threads)
            nodes[name] = len(onnx.load(str(path)).graph.node)
        result = {"benchmark": "onnx_exporters", "hardware": hardware(), "threads": args.threads,
                  "rounds": args.rounds, "reps_per_round": args.reps, "graph_nodes": nodes,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for batch in (1, 64):
            lat = interleaved_latency(sessions, images, batch, args.rounds, args.reps)
            result[f"median_ms_b{batch}"] = lat
            log.info("batch %d: %s", batch, {k: round(v, 2) for k, v in lat.items()})
    out = write_result(args.out, result)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()

"""OpenVINO's own knobs on the bundle's graphs, against ONNX Runtime: PERFORMANCE_HINT (LATENCY,
THROUGHPUT) x INFERENCE_PRECISION_HINT (f32, bf16) for the INT8 and the FP32 graph, each timed
as the engine calls it (one synchronous request at a time) at batch 1 (p50 ms) and batch 64
(images/s), in interleaved rounds; and each one's accuracy against ONNX Runtime FP32 on the
test images: mean cosine of the embeddings and the linear head's top-1 drop.

    python -m benchmarks.openvino_knobs --bundle bundles/default --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.runtime import (
    OpenVinoSession,
    make_session,
    median_run_s,
    run_batches,
)

log = logging.getLogger("openvino_knobs")


def variants(bundle, threads: int) -> dict:
    out = {f"ort_{p}": make_session(bundle.encoder_path(p), threads) for p in ("fp32", "int8")}
    for p in ("int8", "fp32"):
        for hint in ("LATENCY", "THROUGHPUT"):
            for prec in ("f32", "bf16"):
                out[f"ov_{p}_{hint.lower()}_{prec}"] = OpenVinoSession(
                    bundle.encoder_path(p), threads, hint, prec)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/openvino_knobs.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from simclr_embed.training.data import load_dataset

    bundle = load_bundle(args.bundle)
    size = int(bundle.manifest["input"]["size"])
    test = load_dataset(args.data, size)[1]
    sessions = variants(bundle, args.threads)
    ref_emb, ref_logits = run_batches(sessions["ort_fp32"], test.images, desc="ort_fp32")
    ref_top1 = 100 * float((ref_logits.argmax(1) == test.labels).mean())
    accuracy = {}
    for name, s in sessions.items():
        emb, logits = run_batches(s, test.images, desc=name)
        top1 = 100 * float((logits.argmax(1) == test.labels).mean())
        accuracy[name] = {"cosine_mean": float((emb * ref_emb).sum(1).mean()),
                          "linear_top1": top1, "linear_drop_points": ref_top1 - top1}
    rounds: dict[str, dict[str, list[float]]] = {n: {"b1_ms": [], "b64_ms": []} for n in sessions}
    x1, x64 = test.images[:1], test.images[:64]
    for r in range(args.rounds):
        for name, s in sessions.items():
            rounds[name]["b1_ms"].append(median_run_s(s, x1, 50) * 1000)
            rounds[name]["b64_ms"].append(median_run_s(s, x64, 10) * 1000)
        log.info("round %d done", r)
    rows = {}
    for name in sessions:
        b1, b64 = np.median(rounds[name]["b1_ms"]), np.median(rounds[name]["b64_ms"])
        rows[name] = {"b1_p50_ms": round(float(b1), 3), "b64_images_per_s": round(64000 / b64, 1),
                      **{k: round(v, 5) for k, v in accuracy[name].items()}}
        log.info("%-28s b1 %.2f ms  b64 %6.0f img/s  cos %.5f  drop %.2f", name, b1,
                 64000 / b64, accuracy[name]["cosine_mean"], accuracy[name]["linear_drop_points"])
    write_result(args.out, {"benchmark": "openvino_knobs", "hardware": hardware(),
                            "test_images": len(test), "rounds": args.rounds,
                            "threads": args.threads, "results": rows, "raw_ms": rounds})


if __name__ == "__main__":
    main()

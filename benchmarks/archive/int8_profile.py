"""Where the INT8 encoder spends its time, by ONNX Runtime's own profiler: the share of kernel
time per operator type at batch 1 and batch 64 for the FP32 and the INT8 graph, and which nodes
of the INT8 graph still compute in floating point after ORT's graph optimizations.

    python -m benchmarks.int8_profile --bundle bundles/default
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.service.bundle import load_bundle


def profile(path: Path, images: np.ndarray, threads: int, runs: int, workdir: Path) -> dict:
    """Kernel time share per op type, and the op types ORT actually ran (after fusion)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / path.stem)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"pixels": images})
    events = json.loads(Path(session.end_profiling()).read_text())
    time_us: Counter = Counter()
    conv_us: Counter = Counter()  # by ResNet stage: where INT8 gains least
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_us[e["args"]["op_name"]] += e["dur"]
            if "Conv" in e["args"]["op_name"]:
                stage = re.search(r"/(layer\d)/", e["name"])
                conv_us[stage.group(1) if stage else "stem"] += e["dur"] / runs
    total = sum(time_us.values())
    return {"share_by_op": {k: v / total for k, v in time_us.most_common()},
            "kernel_ms_per_run": total / runs / 1000, "conv_us_per_run_by_stage": conv_us}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/int8_profile.json")
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    float_ops = {"Conv", "Add", "GlobalAveragePool", "MatMul", "Gemm", "Relu"}
    by_batch = {}
    for batch in (1, 64):
        images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        runs = args.runs * (64 // batch)  # about the same images either way
        with tempfile.TemporaryDirectory() as tmp:
            res = {p: profile(bundle.encoder_path(p), images, args.threads, runs, Path(tmp))
                   for p in ("fp32", "int8")}
        res["int8"]["float_compute_ops_left"] = sorted(
            k for k in res["int8"]["share_by_op"] if k in float_ops)
        res["int8_vs_fp32_kernel_time"] = (res["fp32"]["kernel_ms_per_run"]
                                           / res["int8"]["kernel_ms_per_run"])
        res["int8_vs_fp32_conv_time_by_stage"] = {
            k: v / res["int8"]["conv_us_per_run_by_stage"][k]
            for k, v in res["fp32"]["conv_us_per_run_by_stage"].items()}
        by_batch[str(batch)] = {"runs": runs, **res}
    write_result(args.out, {"benchmark": "int8_profile", "hardware": hardware(),
                            "threads": args.threads, "batches": by_batch})


if __name__ == "__main__":
    main()

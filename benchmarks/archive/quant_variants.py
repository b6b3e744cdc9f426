"""Which INT8 recipe is fastest under ONNX Runtime on this CPU, beside FP32: static QDQ with
U8S8 (the export default) or S8S8 activations, and dynamic quantization. Same checkpoint, same
calibration images, latency interleaved over rounds, plus the cosine to FP32 embeddings.

    python -m benchmarks.quant_variants runs/quick/checkpoint.pt --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from simclr_embed.benchmarks.harness import hardware, write_result
from simclr_embed.export.onnx_export import export_onnx
from simclr_embed.export.quantize import quantize_int8
from simclr_embed.export.report import interleaved_latency
from simclr_embed.service.runtime import make_session
from simclr_embed.training.checkpoint import load_checkpoint
from simclr_embed.training.data import load_dataset, stratified_subset

log = logging.getLogger("benchmarks.quant_variants")


def build_variants(state: dict, calib: np.ndarray, tmp: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_onnx(state, tmp / "fp32.onnx")
    paths = {"fp32": fp32}
    for name, act in (("static_u8s8", "quint8"), ("static_s8s8", "qint8")):
        paths[name] = quantize_int8(fp32, tmp / f"{name}.onnx", calib, activation_type=act)
    paths["dynamic_u8"] = tmp / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(paths["dynamic_u8"]), weight_type=QuantType.QUInt8)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/quant_variants_cpu.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    state = load_checkpoint(args.checkpoint)
    train, test = load_dataset(args.data)
    calib = stratified_subset(train, 30, seed=1).images
    images = stratified_subset(test, 20, seed=2).images  # (200, 32, 32, 3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_variants(state, calib, Path(tmp))
        sessions = {k: make_session(v, args.threads) for k, v in paths.items()}
        ref = sessions["fp32"].run(None, {"pixels": images})[0]
        result = {"benchmark": "quant_variants", "hardware": hardware(), "threads": args.threads,
                  "rounds": args.rounds, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "variants": {}}
        lat = {b: interleaved_latency(sessions, images, b, args.rounds, 10 if b == 1 else 2)
               for b in (1, 64)}
        for name, s in sessions.items():
            emb = s.run(None, {"pixels": images})[0]
            result["variants"][name] = {
                "median_ms_b1": lat[1][name], "median_ms_b64": lat[64][name],
                "speedup_vs_fp32_b1": lat[1]["fp32"] / lat[1][name],
                "speedup_vs_fp32_b64": lat[64]["fp32"] / lat[64][name],
                "cosine_to_fp32_mean": float((emb * ref).sum(1).mean()),
                "size_mb": paths[name].stat().st_size / 2**20,
            }
            log.info("%-12s %s", name, {k: round(v, 3) for k, v in
                                        result["variants"][name].items()})
    out = write_result(args.out, result)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()

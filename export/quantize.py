"""ONNX FP32 -> INT8 with ONNX Runtime static quantization (QDQ, per-channel weights), calibrated
on a fixed stratified subset of the training split, as torchvision's train_quantization does.

Defaults chosen by measurement on AVX512-VNNI/AMX CPUs (docs/benchmarks.md, "Export"):
activations QUInt8 with weights QInt8 (U8S8) let ORT fuse every conv into an integer kernel;
S8S8 fused fewer and ran no faster than FP32, and dynamic quantization was slower than FP32.

Weights take 7 bits (ORT's reduce_range). Without VNNI (AVX2-only CPUs, e.g. AMD Zen 3), ORT's
U8S8 kernels multiply with vpmaddubsw, whose 16-bit pair sums saturate with 8-bit weights; on a
Zen 3 EPYC a short-trained encoder measured mean cosine to FP32 0.992 and top-10 gallery overlap
0.68 with 8 bits, 0.999 and 0.91 with 7. A bundle is exported once and served on whatever CPU
runs it, so it takes the form that is right on every one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from simclr_embed.errors import ConfigError

log = logging.getLogger(__name__)

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
QuantType = Literal["quint8", "qint8"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
QUANT_TYPES: tuple[str, ...] = get_args(QuantType)


class ArrayReader(CalibrationDataReader):
    """ORT CalibrationDataReader over a uint8 image array, in batches of one size: the largest
    divisor of N up to `batch_size`. ORT's histogram calibrators (entropy, percentile) stack
    every batch's outputs into one array and fail on a shorter last batch (onnxruntime#18792)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        size = max(d for d in range(1, min(batch_size, len(images)) + 1) if len(images) % d == 0)
        self.batches = [images[i : i + size] for i in range(0, len(images), size)]
        self.input_name = input_name
        self.pos = 0

    # ORT annotates get_next as returning dict, yet its own __next__ stops on None.
    def get_next(self) -> dict[str, np.ndarray] | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = 0


def _head_nodes(model_path: Path) -> list[str]:
    """Nodes after global pooling (normalize + linear head) stay FP32: they cost nothing and
    keep the cosine and logits exact up to the encoder's own quantization error."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    names = [n.name for n in graph.node]
    pooling = ("GlobalAveragePool", "ReduceMean")
    pools = [i for i, n in enumerate(graph.node) if n.op_type in pooling]
    return names[pools[-1] + 1 :] if pools else []


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration_images: np.ndarray,
    method: str = "minmax",
    activation_type: str = "quint8",
    weight_type: str = "qint8",
    input_name: str = "pixels",
) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for name, value, valid in (("calibration method", method, CALIBRATION_METHODS),
                               ("activation type", activation_type, QUANT_TYPES),
                               ("weight type", weight_type, QUANT_TYPES)):
        if value not in valid:
            raise ConfigError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    types = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prep = out_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prep), str(out_path), ArrayReader(calibration_images, input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=types[activation_type], weight_type=types[weight_type],
            calibrate_method=methods[method], nodes_to_exclude=_head_nodes(prep),
            reduce_range=True,
        )
    finally:
        prep.unlink(missing_ok=True)
    return out_path

"""Compact embedding outputs: fewer dimensions (the bundle's PCA rotation) and smaller number
formats, as infinity and sentence-transformers name them. Every format but `float` is base64 of
little-endian bytes; sizes for 512 dimensions are in docs/serving.md, "Compact vectors".

    float    JSON numbers (float32 precision)
    base64   float32, 4 bytes a dimension (what the openai client asks for by default)
    float16  2 bytes a dimension
    int8     1 byte a dimension, symmetric: value = byte * scale, `scale` returned per vector
    ubinary  1 bit a dimension, set where the value is > 0, packed 8 per byte, first dimension
             in the highest bit (numpy's packbits)
    binary   the same bytes as int8 (ubinary - 128), as sentence-transformers returns them

The bit formats take their signs in the bundle's PCA coordinates (`output`): the embedding is a
pooled ReLU feature, 65 % of its values above zero and some dimensions always so, and its raw
signs keep little: recall@10 of bit search on the 10,000 CIFAR-10 test images is 0.29 on the
raw signs, 0.37 on the rotated ones (benchmarks/parts/compact_vectors.py).
"""

from __future__ import annotations

import base64
from typing import Literal, get_args

import numpy as np

from simclr_embed.service.errors import InvalidInput

Format = Literal["float", "base64", "float16", "int8", "binary", "ubinary"]
FORMATS: tuple[str, ...] = get_args(Format)
BITS = ("binary", "ubinary")


def check(fmt: str, dimensions: int | None, dim: int, rotation: np.ndarray | None) -> None:
    """422 for an output the request cannot have, before any work is done for it."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown encoding_format {fmt!r}; valid choices: "
                           f"{', '.join(FORMATS)}", param="encoding_format")
    if dimensions is None or dimensions == dim:
        return
    if rotation is None:
        raise InvalidInput(f"dimensions must be {dim} for this bundle: it has no PCA rotation "
                           "(re-export it with this version for fewer dimensions)",
                           param="dimensions")
    if not 1 <= dimensions <= dim:
        raise InvalidInput(f"dimensions must be between 1 and {dim}, got {dimensions}",
                           param="dimensions")


def from_query(params, dim: int, rotation: np.ndarray | None) -> tuple[str, int | None]:
    """encoding_format and dimensions from a query string (the hot path has no FastAPI)."""
    fmt, raw = params.get("encoding_format", "float"), params.get("dimensions")
    try:
        dims = None if raw is None else int(raw)
    except ValueError:
        raise InvalidInput(f"dimensions must be an integer, got {raw!r}",
                           param="dimensions") from None
    check(fmt, dims, dim, rotation)
    return fmt, dims


def reduce(emb: np.ndarray, rotation: np.ndarray | None, dimensions: int | None
           ) -> np.ndarray:
    """(n, D) unit vectors -> (n, dimensions): the first principal components, re-normalized.
    `rotation` (D, D) has the components as rows, largest variance first."""
    check("float", dimensions, emb.shape[1], rotation)
    if dimensions is None or dimensions == emb.shape[1] or rotation is None:  # check()'d
        return emb
    out = emb @ rotation[:dimensions].T  # (n, d)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def output(emb: np.ndarray, rotation: np.ndarray | None, dimensions: int | None, fmt: str
           ) -> tuple[list, list[float] | None]:
    """What a route returns for (n, D) unit vectors: `dimensions` of them in `fmt`."""
    full = dimensions is None or dimensions == emb.shape[1]
    if fmt in BITS and full and rotation is not None:
        emb = emb @ rotation.T  # all D principal coordinates: signs that carry information
    else:
        emb = reduce(emb, rotation, dimensions)
    return encode(emb, fmt)


def encode(emb: np.ndarray, fmt: str) -> tuple[list, list[float] | None]:
    """(n, d) float32 -> (one value per vector, per-vector int8 scales or None)."""
    check(fmt, None, emb.shape[1], None)
    if fmt == "float":
        return list(emb), None
    scales = None
    if fmt == "base64":
        rows = emb.astype("<f4")
    elif fmt == "float16":
        rows = emb.astype("<f2")
    elif fmt == "int8":
        scale = np.maximum(np.abs(emb).max(1), 1e-12) / 127  # (n,)
        rows = np.clip(np.rint(emb / scale[:, None]), -127, 127).astype(np.int8)
        scales = [float(s) for s in scale]
    else:
        rows = np.packbits(emb > 0, axis=1)  # (n, ceil(d / 8)) uint8
        if fmt == "binary":
            rows = (rows.astype(np.int16) - 128).astype(np.int8)
    return [base64.b64encode(r.tobytes()).decode() for r in rows], scales


def decode(values: list, fmt: str, dim: int, scales: list[float] | None = None) -> np.ndarray:
    """The inverse of `encode`, for clients and tests: (n, dim) float32 (+-1 for the bit
    formats)."""
    if fmt == "float":
        return np.asarray(values, np.float32)
    raw = [base64.b64decode(v) for v in values]
    if fmt in ("base64", "float16"):
        dtype = "<f4" if fmt == "base64" else "<f2"
        return np.stack([np.frombuffer(r, dtype) for r in raw]).astype(np.float32)
    if fmt == "int8":
        q = np.stack([np.frombuffer(r, np.int8) for r in raw]).astype(np.float32)
        return q * np.asarray(scales, np.float32)[:, None]
    u = np.stack([np.frombuffer(r, np.uint8) for r in raw])
    if fmt == "binary":  # int8 bytes: the uint8 byte of the same bits is theirs + 128
        u = u ^ np.uint8(0x80)
    bits = np.unpackbits(u, axis=1)[:, :dim]
    return bits.astype(np.float32) * 2 - 1

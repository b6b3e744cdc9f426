"""Input checks the routes and the hot path share: integer query parameters refused in
FastAPI's own words, k within its range, query vectors of the right length, finite and
non-zero."""

from __future__ import annotations

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from simclr_embed.service.errors import InvalidInput

_INT = TypeAdapter(int)


def query_int(params, name: str, default: int) -> int:
    """An integer query parameter, refused in the words FastAPI uses for a route's `int`
    parameter (the hot path has no FastAPI; service/hot_path.py)."""
    raw = params.get(name)
    try:
        return default if raw is None else _INT.validate_python(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", name)}
                                      for err in e.errors()]) from None


def check_k(k: int, limit: int) -> int:
    if not 1 <= k <= limit:
        raise InvalidInput(f"k must be between 1 and {limit}, got {k}")
    return k


def check_vectors(vectors: list[list[float]], dim: int) -> np.ndarray:
    if any(len(v) != dim for v in vectors):  # ragged rows would not even form an array
        raise InvalidInput(f"embeddings must each have {dim} numbers")
    q = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, dim), np.float32)
    if not np.isfinite(q).all():
        raise InvalidInput("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInput("an embedding is all zeros")
    return q / norms

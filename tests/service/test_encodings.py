"""Compact outputs: each encoding_format decodes back to its vectors, `dimensions` is the bundle's
PCA rotation (and the bit formats' signs are taken in its coordinates), on both /v1/embed and
the OpenAI route of a real server."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.encodings import FORMATS, decode, encode, reduce
from simclr_embed.service.errors import InvalidInput
from tests.support.servers import png


def unit(n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_each_format_round_trips_within_its_precision() -> None:
    v = unit(8)
    for fmt, tol in (("float", 0), ("base64", 0), ("float16", 1e-3)):
        values, scales = encode(v, fmt)
        assert scales is None
        assert np.abs(decode(values, fmt, 512) - v).max() <= tol, fmt
    values, scales = encode(v, "int8")
    assert len(base64.b64decode(values[0])) == 512
    err = np.abs(decode(values, "int8", 512, scales) - v).max(1)
    assert (err <= np.asarray(scales) / 2 + 1e-7).all()
    ub, _ = encode(v, "ubinary")
    b, _ = encode(v, "binary")
    raw_ub, raw_b = base64.b64decode(ub[0]), base64.b64decode(b[0])
    assert len(raw_ub) == len(raw_b) == 64  # 512 sign bits
    assert (np.frombuffer(raw_b, np.int8).astype(int) + 128 ==
            np.frombuffer(raw_ub, np.uint8)).all()
    for fmt in ("binary", "ubinary"):
        got = decode(b if fmt == "binary" else ub, fmt, 512)
        assert (got == np.where(v > 0, 1, -1)).all()
    with pytest.raises(InvalidInput, match="valid choices: float, base64"):
        encode(v, "int4")


def test_the_bundles_pca_rotation(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    rot = bundle.pca()
    assert rot.shape == (512, 512)
    assert np.abs(rot @ rot.T - np.eye(512)).max() < 1e-4  # a rotation
    _, _, gallery = bundle.gallery("fp32")
    energy = ((gallery @ rot.T) ** 2).mean(0)  # per component, should fall
    assert (np.diff(energy) <= 1e-6).all()
    full = reduce(gallery[:5], rot, 512)
    assert np.allclose(full, gallery[:5])
    q = reduce(gallery[:5], rot, 64)
    assert q.shape == (5, 64) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    with pytest.raises(InvalidInput, match="no PCA rotation"):
        reduce(gallery[:5], None, 64)
    with pytest.raises(InvalidInput, match="between 1 and 512"):
        reduce(gallery[:5], rot, 600)


def test_formats_and_dimensions_over_http(client, bundle_dir: Path, cifar10) -> None:
    images = cifar10[1].images[:3]
    files = [("files", (f"{n}.png", png(x), "image/png")) for n, x in enumerate(images)]
    ref = np.asarray(client.post("/v1/embed", files=files).json()["embeddings"], np.float32)
    rot = load_bundle(bundle_dir).pca()
    for fmt in FORMATS:
        r = client.post(f"/v1/embed?encoding_format={fmt}&dimensions=128", files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["encoding_format"], body["dimension"]) == (fmt, 128)
        got = decode(body["embeddings"], fmt, 128, body.get("scales"))
        want = reduce(ref, rot, 128)
        if fmt in ("binary", "ubinary"):
            assert (got == np.where(want > 0, 1, -1)).all()
        else:
            assert np.abs(got - want).max() < 0.02, fmt
    full = client.post("/v1/embed?encoding_format=ubinary", files=files).json()
    assert (decode(full["embeddings"], "ubinary", 512) == np.where(ref @ rot.T > 0, 1, -1)).all()
    bad = client.post("/v1/embed?encoding_format=int4", files=files)
    assert bad.status_code == 422 and "valid choices" in bad.json()["error"]["message"]
    bad = client.post("/v1/embed?dimensions=9999", files=files)
    assert bad.status_code == 422 and "between 1 and 512" in bad.json()["error"]["message"]
    uri = "data:image/png;base64," + base64.b64encode(png(images[0])).decode()
    r = client.post("/v1/embeddings", json={"model": "simclr-embed", "input": [uri],
                                            "encoding_format": "int8", "dimensions": 64})
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    got = decode([item["embedding"]], "int8", 64, [item["scale"]])[0]
    assert np.abs(got - reduce(ref[:1], rot, 64)[0]).max() < 0.02

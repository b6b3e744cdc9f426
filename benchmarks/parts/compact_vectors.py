"""What compact vectors cost in retrieval: each `encoding_format` and each `dimensions`, on the
bundle's 50,000-image gallery with the 10,000 CIFAR-10 test images as queries (INT8 encoder).

Formats: recall@10 against float32 search of the same vectors (gallery and queries both in the
format, searched by inner product; the bit formats by matching bits, in the PCA coordinates the
routes take their signs in, and "binary + re-rank"
re-ranks the 100 best by bits with the float vectors), bytes per vector (raw and as base64 in
JSON) and the HTTP response of `POST /v1/embed?encoding_format=...` for 16 images (p50 ms,
bytes). Dimensions (the bundle's PCA rotation): recall@10 against 512-d search, kNN top-1 (k=20)
and linear-probe top-1 (softmax regression on the reduced gallery vectors).

    python -m benchmarks.serving compact --bundle bundles/default
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
from PIL import Image

from simclr_embed.benchmarks.harness import hardware, percentiles, write_result
from simclr_embed.benchmarks.process import ServiceProcess
from simclr_embed.export.report import top_k_ids
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.encodings import FORMATS, decode, output, reduce
from simclr_embed.service.runtime import make_session, run_batches
from simclr_embed.training.data import load_dataset

log = logging.getLogger("compact_vectors")
SHORTLIST = 100


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1]
                          for a, b in zip(ids, truth, strict=True)]))


def in_format(emb: np.ndarray, fmt: str, rotation: np.ndarray | None) -> np.ndarray:
    values, scales = output(emb, rotation, None, fmt)  # as the routes return them
    return decode(values, fmt, emb.shape[1], scales)


def formats_table(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                  rotation: np.ndarray | None) -> dict:
    out = {}
    for fmt in FORMATS:
        g, q = in_format(gallery, fmt, rotation), in_format(queries, fmt, rotation)
        values, _ = output(queries[:1], rotation, None, fmt)
        raw = {"float": 4, "base64": 4, "float16": 2, "int8": 1}.get(fmt, 1 / 8)
        out[fmt] = {"recall_at_10": recall(top_k_ids(q, g), truth),
                    "bytes_per_vector": raw * gallery.shape[1],
                    "json_bytes_per_vector": len(orjson.dumps(
                        values[0], option=orjson.OPT_SERIALIZE_NUMPY))}
        if fmt == "binary":
            short = top_k_ids(q, g, SHORTLIST)  # (Q, 100) by matching bits
            best = []
            for rows in np.array_split(np.arange(len(q)), 20):  # (q, 100, D) a chunk at a time
                scores = np.einsum("qd,qkd->qk", queries[rows], gallery[short[rows]])
                order = np.argsort(-scores, axis=1)[:, :10]
                best.append(np.take_along_axis(short[rows], order, 1))
            out["binary_rerank_100"] = {
                "recall_at_10": recall(np.concatenate(best), truth),
                "bytes_per_vector": gallery.shape[1] / 8, "note": "float vectors kept to re-rank"}
        log.info("%-18s recall@10 %.3f", fmt, out[fmt]["recall_at_10"])
    return out


def linear_top1(train: np.ndarray, y: np.ndarray, test: np.ndarray, ty: np.ndarray,
                classes: int, epochs: int = 200) -> float:
    torch.manual_seed(0)
    x, xt = torch.from_numpy(train), torch.from_numpy(test)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    yt = torch.from_numpy(y)
    for _ in range(epochs):  # full batch: 50,000 x d fits easily
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x * 10), yt).backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * float((head(xt * 10).argmax(1).numpy() == ty).mean())


def knn_top1(gallery: np.ndarray, gy: np.ndarray, queries: np.ndarray, qy: np.ndarray,
             classes: int, k: int = 20) -> float:
    ids = top_k_ids(queries, gallery, k)
    votes = np.stack([np.bincount(gy[row], minlength=classes) for row in ids])
    return 100.0 * float((votes.argmax(1) == qy).mean())


def dimensions_table(bundle, gallery, gy, queries, qy, truth) -> dict:
    rotation, classes = bundle.pca(), len(bundle.classes)
    out = {}
    for d in (32, 64, 128, 256, gallery.shape[1]):
        g, q = reduce(gallery, rotation, d), reduce(queries, rotation, d)
        out[str(d)] = {"recall_at_10": recall(top_k_ids(q, g), truth),
                       "knn_top1": knn_top1(g, gy, q, qy, classes),
                       "linear_top1": linear_top1(g, gy, q, qy, classes),
                       "bytes_float32": 4 * d}
        log.info("d=%-4d %s", d, out[str(d)])
    return out


def http_table(bundle_dir: Path, images: np.ndarray, rounds: int) -> dict:
    files = []
    for img in images[:16]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        files.append(("files", (f"{len(files)}.png", buf.getvalue(), "image/png")))
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServiceProcess(bundle_dir, Path(tmp) / "data", Path(tmp) / "log").start()
        try:
            samples: dict[str, list[float]] = {f: [] for f in FORMATS}
            size = {}
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                for _ in range(rounds):
                    for fmt in FORMATS:
                        t0 = time.perf_counter()
                        r = c.post(f"/v1/embed?encoding_format={fmt}", files=files)
                        samples[fmt].append((time.perf_counter() - t0) * 1000)
                        r.raise_for_status()
                        size[fmt] = len(r.content)
        finally:
            srv.stop()
    return {f: percentiles(v) | {"response_bytes_16_images": size[f]}
            for f, v in samples.items()}


QUICK = {"http_rounds": 2, "queries": 500, "out": "benchmarks/results/quick/compact_vectors.json"}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--http-rounds", type=int, default=30)
    p.add_argument("--queries", type=int, default=None,
                   help="the first N test images as queries (all 10,000 when omitted)")
    p.add_argument("--out", default="benchmarks/results/compact_vectors.json")


def run(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    _, gy, gallery = bundle.gallery("int8")
    test = load_dataset(args.data, int(bundle.manifest["input"]["size"]))[1]
    images, labels = test.images[:args.queries], test.labels[:args.queries]
    queries, _ = run_batches(make_session(bundle.encoder_path("int8")), images)
    truth = top_k_ids(queries, gallery)
    result = {"benchmark": "compact_vectors", "hardware": hardware(),
              "gallery": len(gallery), "queries": len(queries),
              "formats": formats_table(gallery, queries, truth, bundle.pca()),
              "dimensions": dimensions_table(bundle, gallery, gy, queries, labels, truth),
              "http_embed_16_images": http_table(Path(args.bundle), images,
                                                 args.http_rounds)}
    log.info("wrote %s", write_result(args.out, result))

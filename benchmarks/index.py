"""`simclr-embed index` throughput against the raw engine, on this machine.

Per round, interleaved: the raw engine (the same runtime session settings, batches of 64 of
already-decoded pixels: the ceiling), then the indexer on N real CIFAR-10 test JPEGs (32x32),
on the same images as 640x480 JPEGs (decode-bound), and the same 32x32 job on a local Ray
instance (num_cpus = the machine's cores). Each index run writes a fresh embedded gallery.
Reported: images/s of each (the pipeline's own, from the job's report) and as a fraction of the
raw engine measured just before it, plus the whole job's wall time (Ray's start included), so
the cost of Ray on one small machine shows.

    python -m benchmarks.index --bundle bundles/default
"""

from __future__ import annotations

import argparse
import logging
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simclr_embed.benchmarks.harness import hardware, measurement, write_result
from simclr_embed.service.bundle import load_bundle
from simclr_embed.service.indexer import IndexJob, run_index
from simclr_embed.service.preprocess import decode_image
from simclr_embed.service.runtime import open_runtime
from simclr_embed.service.settings import Settings

log = logging.getLogger("index_throughput")


def extract(cifar10: Path, dest: Path, n: int) -> list[Path]:
    out = []
    with tarfile.open(cifar10 / "test.tar.gz") as tar:
        for m in tar:
            if m.isfile() and len(out) < n:
                path = dest / Path(*Path(m.name).parts[1:])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(m).read())
                out.append(path)
    return out


def enlarge(files: list[Path], dest: Path, seed: int = 0) -> None:
    """640x480 JPEGs (quality 90) of the images, with sensor-like noise so they compress (and
    decode) like photos rather than smooth upscales."""
    rng = np.random.default_rng(seed)
    for f in files:
        big = np.asarray(Image.open(f).convert("RGB").resize((640, 480), Image.BICUBIC),
                         np.float32)
        big += rng.normal(0, 6, big.shape)
        path = dest / f.parent.name / f.name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=90)


def raw_engine(settings: Settings, pixels: np.ndarray) -> float:
    """images/s of the bare session on batches of 64 (after one warm-up batch)."""
    bundle = load_bundle(settings.bundle, verify=False)
    s, _ = open_runtime(bundle.encoder_path(settings.precision), bundle.manifest,
                        settings.precision, settings.threads, settings.provider)  # as the indexer
    name = s.get_inputs()[0].name
    s.run(None, {name: pixels[:64]})
    t0 = time.perf_counter()
    for start in range(0, len(pixels), 64):
        s.run(None, {name: pixels[start : start + 64]})
    return len(pixels) / (time.perf_counter() - t0)


def index_once(source: Path, settings: Settings, work: Path, ray: str | None) -> dict:
    data = Path(tempfile.mkdtemp(dir=work))
    s = settings.model_copy(update={"data_dir": data})
    report = run_index(IndexJob(source, report=None, ray=ray), s)
    return {"images_per_s": report["images_per_s"], "job_seconds": report["seconds"],
            "indexed": report["indexed"]}


QUICK = {"images": 300, "large": 20, "rounds": 1, "no_ray": True,
         "out": "benchmarks/results/quick/index_throughput.json"}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--large", type=int, default=2_000, help="640x480 JPEGs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--out", default="benchmarks/results/index_throughput.json")


def run(args: argparse.Namespace) -> None:
    settings = Settings(bundle=Path(args.bundle))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = extract(Path(args.data), work / "small", args.images)
        enlarge(files[: args.large], work / "large")
        size = int(load_bundle(settings.bundle, verify=False).manifest["input"]["size"])
        pixels = np.stack([decode_image(f.read_bytes(), size, 10**8) for f in files])
        variants = {"jpeg_32": (work / "small", None), "jpeg_640x480": (work / "large", None)}
        if not args.no_ray:
            variants["jpeg_32_ray_local"] = (work / "small", "local")
        rounds = []
        for r in range(args.rounds):
            row: dict = {}
            for name, (source, ray) in variants.items():
                engine = raw_engine(settings, pixels)
                run = index_once(source, settings, work, ray)
                row[name] = {**run, "engine_images_per_s": round(engine, 1),
                             "fraction_of_engine": round(run["images_per_s"] / engine, 3)}
                log.info("round %d %s: %.0f img/s = %.2f of the engine (%.0f)", r, name,
                         run["images_per_s"], row[name]["fraction_of_engine"], engine)
            rounds.append(row)
    summary = {name: {key: float(np.median([row[name][key] for row in rounds]))
                      for key in ("images_per_s", "engine_images_per_s", "fraction_of_engine",
                                  "job_seconds")} for name in variants}
    result = {"benchmark": "index_throughput", "hardware": hardware(),
              "settings": {"precision": settings.precision, "provider": settings.provider,
                           "threads": settings.threads, "batch": 64},
              "n_images": {"jpeg_32": args.images, "jpeg_640x480": args.large},
              "rounds": rounds, "median": summary}
    log.info("wrote %s", write_result(args.out, result))




if __name__ == "__main__":
    measurement(__doc__, sys.modules[__name__])

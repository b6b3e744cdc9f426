"""The own-data path as a new user walks it: a folder of 2 classes x 30 drawn shapes, trained,
exported and served on the defaults (only --epochs set), as docs/own-images.md says.
What a folder this small cannot take (a batch of 256, 10 warm-up epochs, k=200, 30 calibration
images per class) is derived with a warning instead of failing."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from simclr_embed.cli import main
from tests.support.servers import Server

pytestmark = pytest.mark.slow


def shapes(root: Path, per_class: int = 30, seed: int = 0, size: int = 32) -> Path:
    """circle/ and square/ PNGs: random colours, sizes and places."""
    rng = np.random.default_rng(seed)
    s = size / 32
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
        for n in range(per_class):
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            r, cx, cy = (int(v * s) for v in (rng.integers(6, 12), *rng.integers(10, 22, 2)))
            box = (cx - r, cy - r, cx + r, cy + r)
            fill = tuple(int(v) for v in rng.integers(120, 256, 3))
            draw = ImageDraw.Draw(img)
            draw.ellipse(box, fill=fill) if shape == "circle" else draw.rectangle(box, fill=fill)
            img.save(root / shape / f"{n:03d}.png")
    return root


def test_train_export_serve_a_small_folder_on_defaults(tmp_path: Path, caplog) -> None:
    data = shapes(tmp_path / "shapes")
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--data", str(data), "--epochs", "2", "--out-dir", str(run)]) == 0
    warned = caplog.text
    for flag, used in (("--batch-size 256", "using 32"), ("--warmup-epochs 10", "using 0"),
                       ("--knn-k 200", "using 54")):
        assert flag in warned and used in warned, warned
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["export", str(run / "checkpoint.pt"), "--out", str(bundle),
                     "--latency-rounds", "1"]) == 0
    assert "fewer than --calibration-per-class 30: taking 27" in caplog.text
    srv = Server(bundle, tmp_path / "data").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            png = (data / "circle/000.png").read_bytes()
            r = c.post("/v1/classify", files={"file": png})  # no k: min(5, classes)
            assert r.status_code == 200, r.text
            assert {x["label"] for x in r.json()["results"][0]} == {"circle", "square"}
            hits = c.post("/v1/search?k=3", files={"file": png}).json()["results"][0]
            assert len(hits) == 3 and hits[0]["label"] in ("circle", "square")
    finally:
        srv.stop()


def test_96px_images_train_with_the_imagenet_stem_and_serve(tmp_path: Path) -> None:
    """From 64 px up the stem is torchvision's (7x7 stride 2 + max-pool), recorded in the
    checkpoint; export and the service take the size and stem from there."""
    import torch

    data = shapes(tmp_path / "shapes", per_class=20, size=96)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--image-size", "96", "--epochs", "1",
                 "--out-dir", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["config"]["model"]["stem"] == "imagenet"
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(bundle),
                 "--latency-rounds", "1"]) == 0
    srv = Server(bundle, tmp_path / "data").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/v1/model").json()["input"]["size"] == 96
            r = c.post("/v1/embed", files={"file": (data / "square/003.png").read_bytes()})
            assert r.status_code == 200, r.text
            assert len(r.json()["embeddings"][0]) == 512
    finally:
        srv.stop()

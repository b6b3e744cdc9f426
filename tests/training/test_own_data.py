"""The own-data path as a new user walks it: a folder of 2 classes x 30 drawn shapes, trained,
exported and served on the defaults (only --epochs set), as docs/own-images.md says.
What a folder this small cannot take (a batch of 256, 10 warm-up epochs, k=200, 30 calibration
images per class) is derived with a warning instead of failing."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

from simclr_embed.cli import main
from tests.service.conftest import Server


def shapes(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    """circle/ and square/ PNGs: random colours, sizes and places."""
    rng = np.random.default_rng(seed)
    for shape in ("circle", "square"):
        (root / shape).mkdir(parents=True)
        for n in range(per_class):
            img = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 80, 3)))
            r, cx, cy = rng.integers(6, 12), *rng.integers(10, 22, 2)
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

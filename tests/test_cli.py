"""The command line's error contract (simclr_embed/errors.py): a user's error is one line and
exit status 2; anything else is a bug and keeps its traceback."""

import argparse
import json
import logging
from pathlib import Path

import httpx
import pytest

from simclr_embed import cli
from simclr_embed.errors import ConfigError
from tests.support.servers import API_KEY, ServiceProcess


def test_a_users_error_is_one_line_and_status_2(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("SIMCLR_EMBED_GALLERY_URL", "postgresql://db/gallery")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["gallery", "backup", str(tmp_path / "copy.sqlite3")]) == 2
    assert caplog.records[-1].getMessage() == ("SIMCLR_EMBED_GALLERY_URL is set: back "
                                               "PostgreSQL up with pg_dump")
    assert caplog.records[-1].exc_info is None


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("a bug")])
def test_a_bug_keeps_its_traceback(monkeypatch, error: Exception) -> None:
    def broken(args: argparse.Namespace) -> None:
        raise error

    monkeypatch.setattr(cli, "parse_args", lambda argv: argparse.Namespace(
        func=broken, verbose=False))
    with pytest.raises(type(error)):
        cli.main([])


def test_config_errors_are_value_errors_for_pydantic() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.fixture(scope="module")
def small_folder(cifar10, tmp_path_factory) -> Path:
    """An image folder with train/ and test/ splits: 13 real CIFAR-10 images per class to train
    on (one batch of 128 for the CPU recipe), 5 to test on."""
    from PIL import Image

    from simclr_embed.training.data import stratified_subset

    root = tmp_path_factory.mktemp("folder")
    for split, data, per_class in (("train", cifar10[0], 13), ("test", cifar10[1], 5)):
        subset = stratified_subset(data, per_class, seed=0)
        for n, (image, label) in enumerate(zip(subset.images, subset.labels, strict=True)):
            path = root / split / subset.classes[label] / f"{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("own", [False, True], ids=["released weights", "--train-own"])
def test_serve_builds_the_bundle_if_missing(small_folder: Path, tmp_path: Path, own: bool) -> None:
    """The README's first command: no bundle yet, so serve exports the released weights (or
    trains its own), then answers over HTTP."""
    bundle = tmp_path / "b"
    command = f"simclr_embed.cli serve --build-if-missing --data {small_folder}"
    srv = ServiceProcess(bundle, tmp_path / "data", tmp_path / "server.log",
                         module=command + (" --train-own" if own else ""),
                         SIMCLR_EMBED_API_KEY=API_KEY)
    try:
        srv.start(timeout=600)
        manifest = json.loads((bundle / "manifest.json").read_text())
        source = "checkpoint.pt" if own else "simclr-resnet18-cifar10.safetensors"
        assert manifest["checkpoint"]["file"] == source
        assert manifest["metrics"]["gallery_images"] == 130
        assert list(manifest["gallery"]["embeddings"]) == ["int8"]
        headers = {"authorization": f"Bearer {API_KEY}", "content-type": "image/png"}
        image = (small_folder / "test/cat/15.png").read_bytes()
        found = httpx.post(srv.url + "/v1/search?k=3", content=image, headers=headers)
        assert found.status_code == 200, found.text
        assert len(found.json()["results"][0]) == 3
    finally:
        srv.stop()

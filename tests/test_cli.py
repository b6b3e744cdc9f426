"""The command line (simclr_embed/cli.py): flags made from the settings and configs they fill,
positionals and options in any order, and the error contract (simclr_embed/errors.py): a
user's error is one line and exit status 2; anything else is a bug and keeps its traceback."""

import json
import logging
import os
import typing
from pathlib import Path
from unittest import mock

import httpx
import pytest
import typer

from simclr_embed import cli
from simclr_embed.errors import ConfigError
from simclr_embed.service import settings as service_settings
from simclr_embed.service.settings import GROUPS, Settings
from tests.support.servers import API_KEY, ServiceProcess


@pytest.fixture
def started(monkeypatch) -> dict[str, Settings]:
    """`serve` up to the point where it would start: the settings it would start with. The
    variables serve exports for its workers are put back afterwards."""
    seen: dict[str, Settings] = {}

    def stop_here(settings: Settings) -> None:
        seen["settings"] = settings
        raise typer.Exit(0)

    monkeypatch.setattr("simclr_embed.service.startup.check_before_workers", stop_here)
    with mock.patch.dict(os.environ):
        yield seen


def test_positionals_and_options_in_any_order(started) -> None:
    assert cli.main(["serve", "A", "--port", "8001", "B", "--precision", "fp32", "C"]) == 0
    s = started["settings"]
    assert (s.bundle, s.more_bundles, s.port, s.precision) == (Path("A"), "B,C", 8001, "fp32")


def test_a_flag_beats_its_variable_and_the_rest_come_from_the_environment(started,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("SIMCLR_EMBED_PORT", "9000")
    monkeypatch.setenv("SIMCLR_EMBED_MAX_K", "7")
    assert cli.main(["serve", "--port", "8001"]) == 0
    assert (started["settings"].port, started["settings"].max_k) == (8001, 7)


def test_serve_offers_every_setting_grouped() -> None:
    serve = typer.main.get_command(cli.build_app("serve")).commands["serve"]  # pyright: ignore
    options = {p.name: p for p in serve.params}
    for group in GROUPS:
        panel = group.__name__.removesuffix("Settings").lower() + " settings"
        for name, field in group.model_fields.items():
            option = options[name]
            assert option.rich_help_panel == panel, name
            if field.default not in (None, ""):
                assert option.show_default == str(field.default), name


def test_help_shows_each_flag_its_choices_and_default(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per option: nothing wrapped
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for name, field in Settings.model_fields.items():
        line = next(x for x in out.splitlines() if f"--{name.replace('_', '-')} " in x)
        assert field.default in (None, "") or str(field.default) in line, line
        if typing.get_origin(field.annotation) is typing.Literal:
            assert "|".join(typing.get_args(field.annotation)) in line, line


def test_a_users_error_is_one_line_and_status_2(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("SIMCLR_EMBED_GALLERY_URL", "postgresql://db/gallery")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["gallery", "backup", str(tmp_path / "copy.sqlite3")]) == 2
    assert caplog.records[-1].getMessage() == ("SIMCLR_EMBED_GALLERY_URL is set: back "
                                               "PostgreSQL up with pg_dump")
    assert caplog.records[-1].exc_info is None


def test_a_bad_variable_is_a_users_error_naming_flag_and_variable(monkeypatch, caplog) -> None:
    monkeypatch.setenv("SIMCLR_EMBED_MAX_K", "many")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["gallery", "backup", "x.sqlite3"]) == 2
    assert caplog.records[-1].getMessage().startswith("--max-k / SIMCLR_EMBED_MAX_K ('many'):")
    with pytest.raises(ConfigError):
        service_settings.load_settings(max_k=0)


def test_a_usage_error_is_status_2(capsys) -> None:
    assert cli.main(["serve", "--precision", "fp16"]) == 2
    assert "'fp16' is not one of" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("a bug")])
def test_a_bug_keeps_its_traceback(monkeypatch, error: Exception) -> None:
    def broken(images: list[str]) -> None:
        raise error

    monkeypatch.setattr("simclr_embed.commands.search.command", broken)
    with pytest.raises(type(error)):
        cli.main(["search", "x.png"])


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

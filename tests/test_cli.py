"""The command line's error contract (simclr_embed/errors.py): a user's error is one line and
exit status 2; anything else is a bug and keeps its traceback."""

import argparse
import logging

import pytest

from simclr_embed import cli
from simclr_embed.errors import ConfigError


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

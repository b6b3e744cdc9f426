"""The settings: the reference page's table is the one `Settings` makes from its own fields
(docs/hooks.py), every field is described and sits in one group, and settings that contradict
each other stop the start naming both."""

from pathlib import Path

import pytest

from simclr_embed.service.settings import GROUPS, Settings, settings_table
from tests.support.servers import Server

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_every_setting_is_described_and_the_reference_shows_the_table() -> None:
    assert all(f.description for f in Settings.model_fields.values())
    assert "<!-- table: settings -->" in REFERENCE.read_text()  # docs/hooks.py fills it in
    assert settings_table().count("| `SIMCLR_EMBED_") == len(Settings.model_fields)


def test_every_setting_is_in_exactly_one_group() -> None:
    grouped = [name for g in GROUPS for name in g.model_fields]
    assert sorted(grouped) == sorted(Settings.model_fields) and len(set(grouped)) == len(grouped)


@pytest.mark.parametrize(("kwargs", "first", "second"), [
    ({"max_queue_images": 2}, "MAX_IMAGES_PER_REQUEST (64)", "MAX_QUEUE_IMAGES (2)"),
    ({"max_batch_size": 8}, "MAX_IMAGES_PER_REQUEST (64)", "MAX_BATCH_SIZE (8)"),
])
def test_contradicting_settings_name_each_other(kwargs, first, second) -> None:
    with pytest.raises(ValueError) as e:
        Settings(**kwargs)
    assert f"SIMCLR_EMBED_{first} is larger than SIMCLR_EMBED_{second}" in str(e.value)
    Settings(**kwargs, max_images_per_request=1)  # consistent again


def test_a_contradiction_stops_the_server_before_it_listens(bundle_dir, tmp_path) -> None:
    srv = Server(bundle_dir, tmp_path / "data", SIMCLR_EMBED_MAX_BATCH_SIZE="4")
    with pytest.raises(RuntimeError, match=r"MAX_IMAGES_PER_REQUEST \(64\) is larger than "
                       r"SIMCLR_EMBED_MAX_BATCH_SIZE \(4\)"):
        srv.start()

"""The README's settings table is the one `Settings` makes from its own fields: a setting
added, renamed or re-described without the README following fails here."""

from pathlib import Path

from simclr_embed.service.settings import Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_made_from_settings() -> None:
    text = README.read_text()
    start = text.index("<!-- settings:")
    block = text[text.index("\n", start) + 1 : text.index("<!-- /settings -->")]
    assert block == settings_table(), "run: python -m simclr_embed.service.settings"
    assert all(f.description for f in Settings.model_fields.values())

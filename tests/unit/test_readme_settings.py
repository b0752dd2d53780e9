"""The README's configuration table names every setting: an operator must not have to read
settings.py to find a knob."""

from __future__ import annotations

from pathlib import Path

from postal.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    variables = [name.upper() for name in Settings.model_fields]
    assert len(variables) > 30  # the list really came from the settings
    missing = [variable for variable in variables if f"`{variable}`" not in readme]
    assert missing == []

"""docs/configuration.md names every setting, and the README's short table only settings that
exist: an operator must not have to read settings.py to find a knob."""

from __future__ import annotations

import re
from pathlib import Path

from postal.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"


def variables() -> list[str]:
    return [name.upper() for name in Settings.model_fields]


def test_every_setting_is_documented_in_the_configuration_page() -> None:
    page = CONFIGURATION.read_text(encoding="utf-8")
    assert len(variables()) > 30  # the list really came from the settings
    missing = [variable for variable in variables() if f"`{variable}`" not in page]
    assert missing == []


def test_the_readme_names_only_real_settings_and_links_the_page() -> None:
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("## The settings people change") :]
    table = table[: table.index("\n## ")]
    named = set(re.findall(r"^\| `([A-Z_]+)`", table, flags=re.MULTILINE))
    named |= set(re.findall(r"/ `([A-Z_]+)`", table))
    assert len(named) >= 10
    assert named <= set(variables())
    assert "docs/configuration.md" in table

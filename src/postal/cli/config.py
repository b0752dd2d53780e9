"""What every command shares: the settings, or a clear refusal."""

from __future__ import annotations

import typer

from postal.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    """The settings, or one line per bad variable on stderr and exit code 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"postal: configuration error: {line}", err=True)
        raise typer.Exit(2) from None

"""The `postal` command: serve, bench."""

from __future__ import annotations

from typing import Annotated

import typer

from postal.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Postal: a posts service on Redis."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table (and JSON).")
app.add_typer(bench_app, name="bench")


def settings_or_exit() -> Settings:
    """The settings, or one line per bad variable on stderr and exit code 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"postal: configuration error: {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: POSTAL_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: POSTAL_PORT]")] = None,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from postal.app import create_app
    from postal.observability.logging import configure_logging

    settings = settings_or_exit()
    configure_logging(settings.postal_log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.postal_host,
        port=port or settings.postal_port,
        log_config=None,
    )


@app.command()
def version() -> None:
    """Print Postal's version."""
    from postal import __version__

    typer.echo(__version__)


def main() -> None:
    app(prog_name="postal")


if __name__ == "__main__":
    main()

"""`postal import FILE.csv`: the command's body, its progress display and its printed report.

`cli/imports.py` keeps the typer options and calls `run_import_command`; the rest is here.

The database and the cache are found as `postal serve` finds them, from the environment:
DATABASE_URL (a PostgreSQL that must be migrated; unset, the embedded SQLite file in
POSTAL_DATA_DIR, migrated on first use) and READ_REDIS_URL / WRITE_REDIS_URL, one of which is
required with a DATABASE_URL (the import must invalidate the Redis the service reads).

With the embedded default (no DATABASE_URL, no Redis URL), the cache is the embedded Redis of a
`postal serve` running on the same data directory: its port and password are in
POSTAL_DATA_DIR/redis.conf (readable by its owner only), and it is used if it answers. If it does
not, no service runs there, and its Redis, which keeps nothing on disk, will start empty: nothing
is cached, nothing needs invalidating. `PostImporter` always runs a cache step, so the command
then gives it a private throwaway Redis (the embedded default's server), stopped when it exits.

Interruption. The first Ctrl-C makes the file reader raise `Interrupted` at its next chunk, inside
the import, whose transaction then rolls back: exit 130, nothing imported. Stopping at the reader,
rather than cancelling the task, keeps the answer certain: the import commits only after the
reader has reached the end of the file, so an interrupted reader means no commit. A Ctrl-C that
comes after the whole file was read lets the import finish (or cuts short the wait for a pending
invalidation); a second Ctrl-C abandons everything at once. A killed process leaves an open
transaction that the database rolls back when the connection drops.

Pending invalidations: if Redis does not take the cache step after the commit, this process's
`Invalidator` retries it in the background, and the command waits up to --cache-wait seconds
(PENDING_RETRY by default) for it to land, then makes one last bounded attempt as it closes. If
it has not landed by then, the service may serve its cached copies of the touched posts until
they expire (POST_CACHE_TTL; list pages LIST_CACHE_TTL): the report says so. The service's own
invalidator cannot help: it never knew of these keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from types import FrameType
from typing import Literal

import typer
from rich.console import Console

from postal.cache import CacheClient, Invalidator, mask_url
from postal.cli.import_display import progress_display, report_lines
from postal.embedded import answers_ping
from postal.imports.importer import (
    ImportConflict,
    ImportOptions,
    ImportProgress,
    ImportReport,
    PostImporter,
)
from postal.settings import Settings

CHUNK_BYTES = 64 * 1024  # read from the file at a time
PENDING_RETRY = 10.0  # default seconds to wait for a pending cache invalidation (--cache-wait)
PENDING_POLL = 0.1  # seconds between looks at the invalidator while waiting
PING_TIMEOUT = 0.5  # seconds for the embedded Redis to answer

EXIT_OK = 0
EXIT_FAILED = 1  # nothing written: bad rows, the database unavailable or not migrated, a deadlock
EXIT_USAGE = 2
# Imported, but Redis did not take the invalidation within --cache-wait: other processes may
# serve their cached copies until the TTLs end. Distinct from 0 so a script can act on it.
EXIT_CACHE_PENDING = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


@dataclass(frozen=True, slots=True)
class ImportCommand:
    path: Path
    options: ImportOptions
    json_path: Path | None = None
    cache_wait: float = PENDING_RETRY  # seconds to wait for a pending invalidation to land


@dataclass(frozen=True, slots=True)
class CacheTarget:
    """The Redis the cache step talks to; `url` None: start a private one (nothing is cached)."""

    read_url: str | None
    write_url: str | None
    note: str = ""

    @property
    def private(self) -> bool:
        return self.write_url is None


@dataclass(frozen=True, slots=True)
class Outcome:
    report: ImportReport
    waited: float = 0.0  # seconds spent waiting for a pending invalidation
    late_interrupt: bool = False  # Ctrl-C came once the whole file was read: it finished


class CommandError(Exception):
    """The command cannot run; the message is its one line, `code` its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """Ctrl-C while the file was being read: raised inside the import, which rolls back."""


class UnreadableFile(Exception):
    """The file could not be read (raised inside the import, which rolls back)."""


class Reading:
    """The file reader's side of Ctrl-C: asked to stop, and whether the file was all read."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.finished = False  # the reader reached the end of the file

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt  # the second Ctrl-C: abandon at once
        self.stop_requested = True

    @contextmanager
    def handling_sigint(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGINT, self.on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


async def read_chunks(
    path: Path, reading: Reading | None = None, size: int = CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """The file, `size` bytes at a time, read in a thread (a slow disk never stalls the loop);
    with `reading`, raises `Interrupted` at the first chunk after Ctrl-C."""
    reading = reading if reading is not None else Reading()
    # An OSError from here would reach the importer's database error mapping, and be called
    # the database's: it leaves as UnreadableFile.
    try:
        file = path.open("rb")
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from exc
    with file:
        while True:
            if reading.stop_requested:
                raise Interrupted
            try:
                chunk = await asyncio.to_thread(file.read, size)
            except OSError as exc:
                raise UnreadableFile(f"{path}: {exc.strerror or exc}") from exc
            if not chunk:
                reading.finished = True
                return
            yield chunk


# -- where the cache is ------------------------------------------------------------------------


def cache_target(settings: Settings) -> CacheTarget:
    """The Redis to invalidate after the import (see the module docstring)."""
    if settings.embedded_redis:
        url = running_embedded_redis(Path(settings.postal_data_dir))
        if url is None:
            note = f"none (no postal serve running on {settings.postal_data_dir}: nothing cached)"
            return CacheTarget(None, None, note)
        return CacheTarget(url, url, " (the embedded Redis of the running postal serve)")
    if settings.read_redis_url is None and settings.write_redis_url is None:
        raise CommandError(
            "configuration error: DATABASE_URL is set but no READ_REDIS_URL or WRITE_REDIS_URL:"
            " the import must invalidate the Redis the service reads",
            EXIT_USAGE,
        )
    return CacheTarget(settings.read_url, settings.write_url)


def running_embedded_redis(data_dir: Path) -> str | None:
    """The URL of the embedded Redis `postal serve` runs on `data_dir`, if it answers."""
    try:
        config = (data_dir / "redis.conf").read_text()
    except OSError:
        return None
    values = dict(line.partition(" ")[::2] for line in config.splitlines())
    port, password = values.get("port", ""), values.get("requirepass", "")
    if not port.isdigit() or not password:
        return None
    if not answers_ping(int(port), password, PING_TIMEOUT):
        return None  # a config file left by a serve that has stopped
    return f"redis://:{password}@127.0.0.1:{port}/0"


@asynccontextmanager
async def standalone_importer(
    settings: Settings,
    read_url: str,
    write_url: str,
    *,
    method: Literal["auto", "copy", "insert"] = "auto",
) -> AsyncIterator[tuple[PostImporter, Invalidator]]:
    """An importer outside the service, as `postal import` (and its benchmark) runs one: its own
    small engine, cache client and invalidator, all closed on the way out."""
    from postal.app import cache_ttls, invalidator_for
    from postal.storage.db import create_engine
    from postal.storage.import_store import SqlImportStore

    async with AsyncExitStack() as stack:
        engine = create_engine(
            settings.database, pool_size=2, timeout=settings.database_timeout,
            idle_in_transaction=settings.database_idle_in_transaction_timeout,
        )  # fmt: skip
        stack.push_async_callback(engine.dispose)
        cache = cli_cache(settings, read_url, write_url)
        stack.push_async_callback(cache.aclose)
        await cache.start()
        invalidator = invalidator_for(cache, settings)
        stack.push_async_callback(invalidator.aclose)
        importer = PostImporter(
            SqlImportStore(engine, method),
            cache,
            invalidator,
            ttls=cache_ttls(settings),
            max_body_bytes=settings.postal_max_body_bytes,
            ttl_jitter=settings.cache_ttl_jitter,
        )
        yield importer, invalidator


def cli_cache(settings: Settings, read_url: str, write_url: str) -> CacheClient:
    """A cache client like the service's, with no idle connections kept warm (one step uses it,
    at the end) and no slow-operation log: the cache step's pipelines are slow by design, and the
    report times them."""
    profile = settings.cache_profile()
    profile = replace(
        profile,
        read_pool=replace(profile.read_pool, min_idle=0),
        write_pool=replace(profile.write_pool, min_idle=0),
    )
    return CacheClient.create(
        read_url=read_url,
        write_url=write_url,
        profile=profile,
        tls=settings.tls(),
        key_prefix=settings.redis_key_prefix,
    )


# -- the import ----------------------------------------------------------------------------------


async def import_file(
    settings: Settings,
    command: ImportCommand,
    urls: tuple[str, str],
    reading: Reading,
    progress: Callable[[ImportProgress], None],
) -> Outcome:
    """Import the file; wait (bounded) for a pending cache invalidation to land."""
    from postal.app import prepare_database

    await prepare_database(settings.database)
    async with standalone_importer(settings, *urls) as (importer, invalidator):
        chunks = read_chunks(command.path, reading)
        report = await importer.run(chunks, command.options, progress)
        late = reading.stop_requested
        if report.cache is None or not report.cache.pending:
            return Outcome(report, late_interrupt=late)
        started = time.monotonic()
        landed = await _wait_for_invalidations(invalidator, reading, command.cache_wait)
        waited = time.monotonic() - started
        cache_step = replace(report.cache, pending=not landed)
        return Outcome(replace(report, cache=cache_step), waited, late)


async def _wait_for_invalidations(
    invalidator: Invalidator, reading: Reading, seconds: float
) -> bool:
    """Whether every pending invalidation landed within `seconds` (Ctrl-C stops the wait, not
    the command: the import has committed)."""
    deadline = time.monotonic() + seconds
    # Polled: the invalidator has no event to await, and a tenth of a second is no matter here.
    while _pending(invalidator) and time.monotonic() < deadline and not reading.stop_requested:  # noqa: ASYNC110
        await asyncio.sleep(PENDING_POLL)
    return not _pending(invalidator)


def _pending(invalidator: Invalidator) -> bool:
    stats = invalidator.stats()
    return stats.pending_keys + stats.pending_generations > 0


# -- the command ---------------------------------------------------------------------------------


def check_json_path(path: Path) -> None:
    """Refuse a --json path that cannot be written before importing anything."""
    parent = path.parent
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise CommandError(f"--json {path}: cannot write a file there", EXIT_USAGE)


def write_report_json(path: Path, report: ImportReport) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def _configure_logging(settings: Settings, target: CacheTarget) -> None:
    """Postal's logging on stderr, masking the Redis password found in redis.conf too."""
    from postal.observability.logging import configure_from_settings

    if target.read_url is not None and settings.embedded_redis:
        settings = settings.model_copy(
            update={"read_redis_url": target.read_url, "write_redis_url": target.write_url}
        )
    configure_from_settings(settings)
    # Warnings and errors only: the report is the command's output, and INFO lines (Alembic's
    # migration notes, say) would only interleave with the progress.
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))


def _urls(stack: ExitStack, target: CacheTarget) -> tuple[str, str]:
    """The cache's read and write URLs; a private Redis, started on `stack`, if none runs."""
    if target.read_url is not None and target.write_url is not None:
        return target.read_url, target.write_url
    from postal.embedded import EmbeddedRedis, EmbeddedRedisError

    directory = stack.enter_context(TemporaryDirectory(prefix="postal-import-"))
    try:
        private = stack.enter_context(EmbeddedRedis(Path(directory)))
    except EmbeddedRedisError as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    return private.url, private.url


def run_import_command(settings: Settings, command: ImportCommand) -> int:
    """Run `postal import`: the exit code, having printed the progress, the report, any error."""
    from postal.app import NotMigrated
    from postal.posts.errors import DatabaseUnavailable

    reading = Reading()
    try:
        if command.json_path is not None:
            check_json_path(command.json_path)
        target = cache_target(settings)
        _configure_logging(settings, target)
        typer.echo(f"database: {mask_url(settings.database)}", err=True)
        shown = target.note if target.write_url is None else mask_url(target.write_url)
        typer.echo(f"cache: {shown}{'' if target.private else target.note}", err=True)
        size = command.path.stat().st_size
        with ExitStack() as stack:
            urls = _urls(stack, target)
            display = stack.enter_context(progress_display(Console(stderr=True), size))
            stack.enter_context(reading.handling_sigint())
            outcome = asyncio.run(import_file(settings, command, urls, reading, display))
    except CommandError as exc:
        typer.echo(f"postal: import: {exc}", err=True)
        return exc.code
    except Interrupted:
        typer.echo("postal: import: interrupted: nothing was imported", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if reading.finished:  # abandoned while finishing: the commit may have been sent
            message = "interrupted while finishing: the import may have committed; check"
        else:
            message = "interrupted: nothing was imported"
        typer.echo(f"postal: import: {message}", err=True)
        return EXIT_INTERRUPTED
    except (NotMigrated, DatabaseUnavailable) as exc:
        typer.echo(f"postal: import: {mask_url(settings.database)}: {exc}", err=True)
        return EXIT_FAILED
    except UnreadableFile as exc:
        typer.echo(f"postal: import: {exc}; nothing was imported", err=True)
        return EXIT_FAILED
    except ImportConflict as exc:
        typer.echo(f"postal: import: {exc}", err=True)
        return EXIT_FAILED
    except OSError as exc:  # the file went away before the import began
        typer.echo(f"postal: import: {command.path}: {exc.strerror or exc}", err=True)
        return EXIT_USAGE
    report = outcome.report
    for line in report_lines(report, outcome.waited, settings, private_cache=target.private):
        typer.echo(line)
    if outcome.late_interrupt:
        typer.echo("(Ctrl-C came after the whole file was read: the import finished)")
    if command.json_path is not None:
        write_report_json(command.json_path, report)
        typer.echo(f"report written to {command.json_path}")
    if not report.committed:
        typer.echo("postal: import: rejected: nothing was imported", err=True)
        return EXIT_FAILED
    if report.cache is not None and report.cache.pending:
        return EXIT_CACHE_PENDING
    return EXIT_OK

"""`postal cache warm | invalidate`: the commands' bodies, their progress and their reports.

`cli/cache.py` keeps the typer options; the rest is here. The work itself is the posts'
`CacheAdmin` (`posts/cache_admin.py`), run on a service of the command's own: its own engine,
cache client, `Invalidator` and `ReadThrough`, built as `postal serve` builds them.

The database and the cache are found as `postal import` finds them (`import_run.cache_target`):
DATABASE_URL, READ_REDIS_URL and WRITE_REDIS_URL; with the embedded default, the Redis of the
`postal serve` running on POSTAL_DATA_DIR. When none runs there, nothing is cached: there is
nothing to invalidate (exit 0), and nothing to warm into (exit 1).

Exit codes: 0 done; 1 the database or the cache could not be used (unavailable, not
migrated); 2 bad usage (an id that is not one, a file that cannot be read), nothing done; 3 Redis
did not take all of it: posts left unwarmed, or an invalidation still pending after
--cache-wait (the rest not sent); 130 interrupted (what was done by then is done).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from postal.api.routes.reads import post_id_or_none
from postal.cache import mask_url
from postal.cli.import_run import cache_target, cli_cache
from postal.posts.cache_admin import (
    INVALIDATE_BATCH,
    WARM_BATCH,
    CacheAdmin,
    InvalidationReport,
    WarmReport,
)
from postal.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CACHE = 3
EXIT_INTERRUPTED = 130
PLAIN_PROGRESS_EVERY = 2.0  # seconds between progress lines when stderr is not a terminal
MAX_LINE = 64  # characters of an id file's line: an id is at most 19 digits

T = TypeVar("T")


class CommandError(Exception):
    """The command cannot run; the message is its one line, `code` its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- which posts ---------------------------------------------------------------------------------


def parse_ids(texts: list[str]) -> list[int]:
    """The post ids given on the command line; CommandError (usage) at the first bad one."""
    ids = []
    for text in texts:
        post_id = post_id_or_none(text.strip())
        if post_id is None:
            raise CommandError(f"{text!r} is not a post id (a whole number from 1)", EXIT_USAGE)
        ids.append(post_id)
    return ids


def _id_lines(path: Path) -> Iterator[tuple[int, int]]:
    """(line number, id) of each id in the file: one a line; blank lines and `#` comments are
    skipped. CommandError (usage) at the first line that is not an id."""
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                if len(raw) > MAX_LINE:
                    raise CommandError(f"{path}:{number}: not a post id (too long)", EXIT_USAGE)
                text = raw.decode("ascii", errors="replace").strip()
                if not text or text.startswith("#"):
                    continue
                post_id = post_id_or_none(text)
                if post_id is None:
                    raise CommandError(f"{path}:{number}: {text!r} is not a post id", EXIT_USAGE)
                yield number, post_id
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}", EXIT_USAGE) from None


def count_file_ids(path: Path) -> int:
    """How many ids the file holds, every line checked first: a bad file changes nothing."""
    return sum(1 for _ in _id_lines(path))


async def file_ids(path: Path) -> AsyncIterator[int]:
    """The file's ids, read as they are used (the file was checked by `count_file_ids`)."""
    for _, post_id in _id_lines(path):
        yield post_id


async def listed(ids: list[int]) -> AsyncIterator[int]:
    for post_id in ids:
        yield post_id


# -- the service the command runs on -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where the cache is: `urls` None when no `postal serve` runs the embedded Redis."""

    urls: tuple[str, str] | None
    shown: str


def find_cache(settings: Settings) -> Target:
    from postal.cli.import_run import CommandError as ImportCommandError

    try:
        target = cache_target(settings)
    except ImportCommandError as exc:
        raise CommandError(str(exc), exc.code) from None
    if target.read_url is None or target.write_url is None:
        return Target(None, target.note)
    return Target((target.read_url, target.write_url), mask_url(target.write_url) + target.note)


@asynccontextmanager
async def standalone_admin(
    settings: Settings, urls: tuple[str, str], *, invalidate_batch: int = INVALIDATE_BATCH
) -> AsyncIterator[CacheAdmin]:
    """A `CacheAdmin` on a service of the command's own; everything closed on the way out."""
    from postal.app import cache_ttls, invalidator_for, prepare_database
    from postal.cache import ReadThrough
    from postal.posts.cursors import Cursors
    from postal.posts.service import PostService
    from postal.storage.db import create_engine
    from postal.storage.deployment_keys import CURSOR_KEY, deployment_key
    from postal.storage.repository import SqlPostRepository

    await prepare_database(settings.database)
    async with AsyncExitStack() as stack:
        engine = create_engine(settings.database, pool_size=4, timeout=settings.database_timeout)
        stack.push_async_callback(engine.dispose)
        cache = cli_cache(settings, *urls)
        stack.push_async_callback(cache.aclose)
        await cache.start()
        invalidator = invalidator_for(cache, settings)
        stack.push_async_callback(invalidator.aclose)
        reads = ReadThrough(
            cache,
            max_pending_fills=WARM_BATCH,  # a batch's fills, all of them: none is skipped
            ttl_jitter=settings.cache_ttl_jitter,
            bypass=invalidator.is_pending,
            local_writes=invalidator.begun,
        )
        stack.push_async_callback(reads.drain, 5.0)
        repository = SqlPostRepository(engine)
        # The deployment's cursor key, as the service has it (the service signs pages' cursors
        # with it; warming reads posts only).
        cursors = Cursors(await deployment_key(engine, CURSOR_KEY))
        service = PostService(
            repository, reads, invalidator, cache_ttls(settings),
            cursors=cursors, max_page_bytes=settings.postal_max_page_bytes,
        )  # fmt: skip
        yield CacheAdmin(
            service, reads, repository, cache, invalidator, invalidate_batch=invalidate_batch
        )


# -- progress ------------------------------------------------------------------------------------


@contextmanager
def progress_display(console: Console, label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A callback taking how many are done: a rich bar on a terminal, else a plain line every
    PLAIN_PROGRESS_EVERY seconds (a log collecting stderr gets lines, not control codes)."""
    if not console.is_terminal:
        import time

        last = [time.monotonic()]

        def plain(done: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PLAIN_PROGRESS_EVERY:
                last[0] = now
                typer.echo(f"{label}: {done:,} of {total:,}", err=True)

        yield plain
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=max(total, 1))
        yield lambda done: bar.update(task, completed=done)


# -- the commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarmCommand:
    top: int | None
    file: Path | None
    json_output: bool


@dataclass(frozen=True, slots=True)
class InvalidateCommand:
    ids: list[int]
    everything: bool
    cache_wait: float
    json_output: bool


async def _warm(
    settings: Settings, urls: tuple[str, str], command: WarmCommand, in_file: int
) -> WarmReport:
    console = Console(stderr=True)
    async with standalone_admin(settings, urls) as admin:
        if command.file is not None:
            total, ids = in_file, file_ids(command.file)
        else:
            top = command.top or 0
            total, ids = min(top, await admin.count()), admin.newest(top)
        with progress_display(console, "warming", total) as progress:
            return await admin.warm(ids, progress)


async def _invalidate(
    settings: Settings, urls: tuple[str, str], command: InvalidateCommand
) -> InvalidationReport:
    console = Console(stderr=True)
    async with standalone_admin(settings, urls) as admin:
        total = await admin.count() if command.everything else len(command.ids)
        with progress_display(console, "invalidating", total) as progress:
            if command.everything:
                return await admin.invalidate_all(progress, wait=command.cache_wait)
            return await admin.invalidate(listed(command.ids), progress, wait=command.cache_wait)


def _configure_logging(settings: Settings) -> None:
    """Postal's logging on stderr, warnings and errors only: the report is the output."""
    import logging

    from postal.observability.logging import configure_from_settings

    configure_from_settings(settings)
    root = logging.getLogger()
    root.setLevel(max(root.level, logging.WARNING))


def _run(settings: Settings, work: Callable[[tuple[str, str]], Coroutine[Any, Any, T]]) -> T | None:
    """Find the cache, run `work` on its URLs (None: no cache runs); CommandError for what
    stops the command."""
    from postal.app import NotMigrated
    from postal.posts.errors import DatabaseUnavailable

    _configure_logging(settings)
    target = find_cache(settings)
    typer.echo(f"database: {mask_url(settings.database)}", err=True)
    typer.echo(f"cache: {target.shown}", err=True)
    if target.urls is None:
        return None
    try:
        return asyncio.run(work(target.urls))
    except (NotMigrated, DatabaseUnavailable) as exc:
        raise CommandError(f"{mask_url(settings.database)}: {exc}", EXIT_FAILED) from None


def run_warm(settings: Settings, command: WarmCommand) -> int:
    """`postal cache warm`: the exit code, having printed the report or the error."""
    try:
        # A bad file stops the command before anything is read or written.
        in_file = 0 if command.file is None else count_file_ids(command.file)
        report = _run(settings, lambda urls: _warm(settings, urls, command, in_file))
    except CommandError as exc:
        typer.echo(f"postal: cache warm: {exc}", err=True)
        return exc.code
    except KeyboardInterrupt:
        typer.echo("postal: cache warm: interrupted (what was warmed stays warm)", err=True)
        return EXIT_INTERRUPTED
    if report is None:
        typer.echo(
            f"postal: cache warm: no postal serve runs on {settings.postal_data_dir}:"
            " its Redis starts empty, there is nothing to warm",
            err=True,
        )
        return EXIT_FAILED
    _print_warm(report, command.json_output)
    if report.database_error is not None:
        typer.echo(f"postal: cache warm: stopped: {report.database_error}", err=True)
        return EXIT_FAILED
    return EXIT_CACHE if report.not_filled else EXIT_OK


def _print_warm(report: WarmReport, json_output: bool) -> None:
    if json_output:
        typer.echo(json.dumps(report.to_json()))
        return
    typer.echo(f"warmed {report.requested:,} posts")
    typer.echo(f"  already cached: {report.cached:,}")
    typer.echo(f"  filled from the database: {report.filled:,}")
    if report.not_found:
        typer.echo(f"  no such post: {report.not_found:,} (cached as such for NOT_FOUND_CACHE_TTL)")
    if report.stale:
        typer.echo(f"  not filled, a write came in meanwhile: {report.stale:,} (correctly)")
    if report.not_filled:
        typer.echo(
            f"  not filled, Redis did not take them: {report.not_filled:,}"
            " (they are read from the database and filled on their next read)"
        )


def run_invalidate(settings: Settings, command: InvalidateCommand) -> int:
    """`postal cache invalidate`: the exit code, having printed the report or the error."""
    try:
        report = _run(settings, lambda urls: _invalidate(settings, urls, command))
    except CommandError as exc:
        typer.echo(f"postal: cache invalidate: {exc}", err=True)
        return exc.code
    except KeyboardInterrupt:
        typer.echo(
            "postal: cache invalidate: interrupted (the batches sent by then are invalidated)",
            err=True,
        )
        return EXIT_INTERRUPTED
    if report is None:
        typer.echo(
            f"nothing to invalidate: no postal serve runs on {settings.postal_data_dir},"
            " so nothing is cached"
        )
        return EXIT_OK
    _print_invalidation(report, settings, command.json_output)
    return EXIT_CACHE if report.pending else EXIT_OK


def _print_invalidation(report: InvalidationReport, settings: Settings, json_output: bool) -> None:
    if json_output:
        typer.echo(json.dumps(report.to_json()))
        return
    pages = " and every list page" if report.list_pages else ""
    typer.echo(f"invalidated {report.invalidated:,} posts{pages} in {report.batches:,} batches")
    if report.pending:
        expiry = settings.post_cache_ttl * (1 + settings.cache_ttl_jitter)
        typer.echo(
            f"  stopped: Redis did not take a batch of {report.pending:,} keys within"
            " --cache-wait, and the rest was not sent: cached copies of those posts expire"
            f" within {expiry:.0f}s (POST_CACHE_TTL); run the command again when Redis is back"
        )

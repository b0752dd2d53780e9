"""One import of `postal bench import`, in a process of its own so its peak RSS is its own.

    echo '{"file": ..., "database_url": ..., ...}' | python -m postal_bench.imports.child

Its settings (`ChildConfig`) come as one JSON line on stdin, not on the command line, where a
password in a URL would show in `ps`.

Built as `postal import` builds its import (settings defaults for the TTLs, the body limit and
the cache profile; the file read in 64 KiB chunks in a thread), with the write method chosen by
the bench and a longer database timeout, so a busy shared machine does not fail a run.

It speaks JSON lines on stdout: `{"progress": {...}}` at most every PROGRESS_INTERVAL seconds,
then one `{"result": {...}}`: the importer's report, the seconds `PostImporter.run` took (wall
time, cache step included; start-up and connecting not), the process's peak RSS (`ru_maxrss`)
at the end, and its resident set just before the import began. Logs go to stderr. Exit code 0
once the result is printed, whatever the import decided (the bench judges it); non-zero when it
could not run.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from postal.cli.import_run import read_chunks, standalone_importer
from postal.imports.importer import ImportOptions, ImportProgress
from postal.settings import load_settings

PROGRESS_INTERVAL = 0.1  # seconds between progress lines
DATABASE_TIMEOUT = "60s"  # per statement (Postal's default is 5)
RSS_UNIT = 1024  # ru_maxrss is in KiB on Linux


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT


def current_rss() -> int:
    """This process's resident set size now, in bytes (Linux); elsewhere its peak so far."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss()
    return resident_pages * resource.getpagesize()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True, slots=True)
class ChildConfig:
    file: str
    database_url: str
    redis_url: str
    key_prefix: str
    method: Literal["auto", "copy", "insert"] = "auto"
    batch_size: int = 1000  # rows per database batch
    cache_batch_size: int = 1000  # keys per Redis pipeline

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: str) -> ChildConfig:
        return cls(**json.loads(line))


async def run(config: ChildConfig) -> dict[str, Any]:
    settings = load_settings(
        {
            "DATABASE_URL": config.database_url,
            "READ_REDIS_URL": config.redis_url,
            "WRITE_REDIS_URL": config.redis_url,
            "REDIS_KEY_PREFIX": config.key_prefix,
            "DATABASE_TIMEOUT": DATABASE_TIMEOUT,
        }
    )
    options = ImportOptions(batch_size=config.batch_size, cache_batch_size=config.cache_batch_size)
    last = 0.0

    def progress(update: ImportProgress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL:
            last = now
            emit({"progress": {"bytes_read": update.bytes_read, "rows_read": update.rows_read}})

    urls = (settings.read_url, settings.write_url)
    async with standalone_importer(settings, *urls, method=config.method) as (importer, _):
        rss_before = current_rss()
        started = time.perf_counter()
        report = await importer.run(read_chunks(Path(config.file)), options, progress)
        seconds = time.perf_counter() - started
        return {
            "method": str(importer.method),
            "seconds": seconds,
            "rss_before": rss_before,
            "peak_rss": peak_rss(),
            "report": report.to_json(),
        }


def main() -> None:
    config = ChildConfig.from_line(sys.stdin.readline())
    emit({"result": asyncio.run(run(config))})


if __name__ == "__main__":
    main()

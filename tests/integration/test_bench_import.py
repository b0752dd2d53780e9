"""`postal bench import` for a few thousand rows against the test PostgreSQL and Redis."""

import csv
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from postal.cli import app
from postal_bench.errors import BenchError, NotLoopback
from postal_bench.imports.bench import (
    ImportBench,
    ImportBenchOptions,
    no_progress,
    run_import_bench,
)
from postal_bench.imports.csv_gen import generate_csv
from postal_bench.imports.database import BenchDatabase
from postal_bench.redis_topologies import delete_prefix
from tests.support.database import HOST, PORT, USER

ROWS = 2_000


def tiny(database_url: str | None, redis_url: str, **changes: Any) -> ImportBenchOptions:
    options: dict[str, Any] = {"rows": ROWS, "runs": 1, "database_url": database_url}
    return ImportBenchOptions(redis_url=redis_url, **(options | changes))


async def keys_under(redis_url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        await client.aclose()


async def test_a_small_run_imports_every_row_with_both_methods_and_its_report_adds_up(
    clean_database: str, redis_url: str
) -> None:
    seen: set[str] = set()
    options = tiny(clean_database, redis_url, rss_rows=3_000)

    report = await run_import_bench(options, lambda label, *_: seen.add(label.split(" ")[0]))

    assert [summary.name for summary in report.methods] == ["copy", "insert"]
    assert {"generating", "copy", "insert"} <= seen
    for summary in report.methods:
        (run,) = summary.runs
        assert run.method == summary.name  # the child used the method asked for
        assert run.committed
        assert run.invalid == 0
        # Counted in the database by the bench after the import: every row and its version 1.
        assert run.rows_read == run.created == run.posts == run.versions == ROWS
        assert run.rows_per_s == pytest.approx(ROWS / run.seconds)
        assert summary.rows_per_s == run.rows_per_s
        assert run.peak_rss >= run.rss_before > 0
        assert (run.cache_keys, run.cache_pipelines, run.cache_pending) == (ROWS, 2, False)
    (comparison,) = report.cache
    assert (comparison.keys, comparison.batch) == (ROWS, 1000)
    assert comparison.one_per_key > 0
    assert comparison.pipelined > 0
    assert comparison.speedup == comparison.one_per_key / comparison.pipelined
    assert report.cache_speedup == comparison.speedup
    assert report.rss_run is not None
    assert report.rss_csv is not None
    assert report.rss_run.rows_read == report.rss_run.posts == report.rss_csv.rows == 3_000
    assert report.rss_ratio == report.rss_run.peak_rss / report.methods[0].runs[0].peak_rss
    small, large = report.methods[0].runs[0], report.rss_run
    assert report.rss_growth_ratio == (large.peak_rss - large.rss_before) / (
        small.peak_rss - small.rss_before
    )

    document = json.loads(json.dumps(report.to_json()))
    assert document["benchmark"] == "import"
    assert document["file"]["rows"] == ROWS
    assert [method["method"] for method in document["methods"]] == ["copy", "insert"]
    assert document["methods"][0]["runs"][0]["rows_in_database"] == {
        "posts": ROWS,
        "post_versions": ROWS,
    }
    assert set(document["targets"]) == {"rows_per_s", "cache_speedup", "rss_ratio"}
    assert document["targets"]["cache_speedup"]["value"] == comparison.speedup
    # Clean-up: the user's database is left empty, the bench's keys are gone.
    assert await BenchDatabase(clean_database, scratch=False).counts() == (0, 0)
    assert await keys_under(redis_url, str(document["settings"]["key_prefix"])) == []


async def test_one_import_writes_the_generated_file_as_it_is(
    clean_database: str, redis_url: str, postgres_engine: AsyncEngine, tmp_path: Path
) -> None:
    options = tiny(clean_database, redis_url, rows=300)
    file = generate_csv(tmp_path / "posts.csv", 300, seed=3)
    with file.path.open(encoding="utf-8", newline="") as handle:
        expected = list(csv.DictReader(handle))
    state = ImportBench(options, BenchDatabase(clean_database, scratch=False), tmp_path)

    try:
        run = await state.import_once(file, "insert", "test", no_progress)
    finally:
        await delete_prefix(redis_url, state.key_prefix)  # what the import's cache step wrote

    async with postgres_engine.connect() as connection:
        rows = (await connection.execute(text("SELECT title, body FROM posts ORDER BY id"))).all()
    assert run.method == "insert"
    assert [(row.title, row.body) for row in rows] == [(e["title"], e["body"]) for e in expected]
    assert any("\n" in row.body for row in rows)  # the quoted newlines survived
    await state.database.empty()


async def test_the_scratch_database_is_created_and_dropped(redis_url: str) -> None:
    report = await run_import_bench(tiny(None, redis_url, rows=200, methods=("copy",)))

    assert report.scratch_database
    assert report.methods[0].runs[0].posts == 200
    name = report.database.rpartition("/")[2]
    assert name.startswith("postal_bench_")
    connection = await asyncpg.connect(host=HOST, port=PORT, user=USER, database="postgres")
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", name
        )
    finally:
        await connection.close()
    assert found == 0


async def test_a_database_holding_posts_is_refused_and_left_as_it_was(
    clean_database: str, redis_url: str, postgres_engine: AsyncEngine
) -> None:
    async with postgres_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO posts (title, body, author, tags, version, created_at, updated_at)"
                " VALUES ('kept', 'b', 'a', '[]', 1, now(), now())"
            )
        )

    with pytest.raises(BenchError, match="holds posts"):
        await run_import_bench(tiny(clean_database, redis_url))

    assert (await BenchDatabase(clean_database, scratch=False).counts())[0] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"database_url": "postgresql+asyncpg://postgres@192.0.2.1:5432/postal"},
        {"redis_url": "redis://192.0.2.1:6379/0"},
        {"redis_url": "redis://127.0.0.1:6379/0,redis://192.0.2.1:6379/0"},  # a second host
    ],
)
def test_targets_off_this_machine_are_refused(redis_url: str, changes: dict[str, str]) -> None:
    options = ImportBenchOptions(**({"redis_url": redis_url} | changes))

    with pytest.raises(NotLoopback):
        options.check()


def test_the_command_prints_the_tables_and_writes_json(
    clean_database: str, redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "import.json"
    arguments = [
        "bench", "import", "--rows", "500", "--runs", "1", "--method", "copy",
        "--database-url", clean_database, "--redis-url", redis_url, "--json", str(path),
    ]  # fmt: skip

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    assert "postal bench import: 500 rows" in result.output
    assert "one key per round trip" in result.output
    assert "target: >= 20,000 rows/s" in result.output
    document = json.loads(path.read_text())
    assert [method["method"] for method in document["methods"]] == ["copy"]
    assert document["methods"][0]["runs"][0]["created"] == 500


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "upsert"], "expected copy, insert or both"),
        (["--database-url", "postgresql+asyncpg://postgres@192.0.2.1/x"], "refusing"),
        (["--database-url", "sqlite+aiosqlite:///x.db"], "expected postgresql+asyncpg"),
    ],
)
def test_bad_options_exit_2_with_one_line(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "import", *arguments])

    assert result.exit_code == 2
    assert message in result.output

"""`python -m postal_bench.guarded_read`, run for a few hundred reads against the test Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from postal_bench.errors import NotLoopback
from postal_bench.guarded_read import main, render, run


async def test_each_measure_has_both_sides_and_the_key_is_gone_afterwards(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    rows = await run(redis_url, reads=100, runs=2, prefix=key_prefix)
    assert [row.measure for row in rows] == [
        "parse",
        "check alone",
        "memory hit",
        "memory hit, last seconds",
        "redis hit",
    ]
    for row in rows:
        assert len(row.before.runs) == len(row.after.runs) == 2
        assert min(row.before.runs + row.after.runs) > 0
    table = render(rows).splitlines()
    assert len(table) == 1 + len(rows)
    assert table[0].split()[:2] == ["measure", "sides"]
    assert [key async for key in raw_redis.scan_iter(match=f"{key_prefix}*")] == []


def test_a_redis_elsewhere_is_refused_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", "redis://10.1.1.1:6379/0", "--reads", "10"])
    assert exit_info.value.code == 2
    assert "only target loopback" in capsys.readouterr().err


async def test_run_refuses_a_redis_elsewhere_before_any_io() -> None:
    with pytest.raises(NotLoopback):
        await run("redis://192.0.2.1:6379/0", reads=10, runs=1)

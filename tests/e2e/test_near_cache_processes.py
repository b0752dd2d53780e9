"""Chase reads across processes with the near cache on: two `postal serve` processes on one
PostgreSQL database and one Redis. After each of 1,000 updates through one of them, every read
through the other returns the new version, whichever of the two took the write; and reads
really are served from each process's memory in between."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.test_serve import serving

UPDATES = 1000


def test_every_read_after_a_write_through_the_other_process_is_fresh(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    environ = {
        "DATABASE_URL": database_url,
        "READ_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "POSTAL_LOG_LEVEL": "WARNING",
        "NEAR_CACHE_ENABLED": "true",
    }
    with (
        serving(tmp_path, **environ) as one,
        serving(tmp_path, **environ) as other,
        httpx.Client(timeout=10) as client,
    ):
        created = client.post(
            f"{one.base}/api/v1/posts", json={"title": "v1", "body": "b", "author": "a"}
        )
        assert created.status_code == 201
        path = created.headers["location"]
        for version in range(2, UPDATES + 2):
            writer, reader = (one, other) if version % 2 else (other, one)
            content = {"title": f"v{version}", "body": "b", "author": "a"}
            assert client.put(f"{writer.base}{path}", json=content).status_code == 200
            # A miss (the write deleted the entry), a Redis hit stored in memory, a memory hit.
            for _ in range(3):
                got = client.get(f"{reader.base}{path}").json()
                assert (got["version"], got["title"]) == (version, f"v{version}")
        near = [client.get(f"{served.base}/readyz").json()["cache"]["near"] for served in
                (one, other)]  # fmt: skip
    for stats in near:
        assert stats["live"] is True
        assert stats["invalidations"] >= UPDATES  # every write was pushed to both
        assert stats["hits"] >= UPDATES // 4  # hundreds of reads answered from memory

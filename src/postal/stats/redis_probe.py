"""The Redis half of `postal stats`: `INFO clients` and `redis-cli --latency`, as one probe.

Which servers: `/status` names the read and write servers, with their passwords masked. The
command finds the real URLs in its own environment (READ_REDIS_URL, WRITE_REDIS_URL, as the
service has them) or in `--redis-url`, and pairs them with the service's by host, port, database
and user (`redis_targets`, pure). A server whose password it does not have is reported as such,
and the rest is still printed; one URL serving both roles is probed once.

The probe dials through Postal's own `Connector` (the same TLS settings, DNS handling and
handshake as the service: a TLS or ACL setup that works for the service works here), on one
connection named `postal-stats`: it counts in `connected_clients`, as redis-cli's would. Then
`INFO clients`, `INFO stats` and `INFO server`, `CONFIG GET maxclients` when `INFO` does not
say (older servers; a server that forbids CONFIG leaves it unknown), and N sequential PINGs timed
one by one, as `redis-cli --latency` does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from postal.cache import (
    CLUSTER_SCHEME,
    NO_TLS,
    SENTINEL_SCHEME,
    Connector,
    DnsCache,
    PoolConfig,
    PostalConnection,
    RedisEndpoint,
    TlsConfig,
    mask_url,
)
from postal.observability.redaction import Redactor, url_secrets

PROBE_TIMEOUT = 2.0  # seconds for the dial and for each reply
DEFAULT_PINGS = 100


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """One server to probe: the roles it serves, its URL as shown, and the URL to dial (None
    when the password is not known here: `problem` says so)."""

    roles: tuple[str, ...]
    shown: str
    url: str | None
    problem: str | None = None


def _identity(url: str) -> tuple[str, int, int, str | None] | None:
    try:
        endpoint = RedisEndpoint.from_url(url)
    except ValueError:
        return None
    return endpoint.host.lower(), endpoint.port, endpoint.db, endpoint.username


def server_urls(url: str) -> list[str]:
    """A role's URL as one `redis://` URL per server to probe (pure; credentials kept):
    each of a comma-separated list, each seed node of a cluster; none for Sentinel (which
    servers it names is known only by asking it)."""
    url = url.strip()
    scheme, _, rest = url.partition("://")
    if scheme == SENTINEL_SCHEME:
        return []
    if scheme == CLUSTER_SCHEME:
        userinfo, at, hosts = rest.rpartition("@")
        return [f"redis://{userinfo}{at}{host.strip()}/0" for host in hosts.split(",") if host]
    return [part.strip() for part in url.split(",") if part.strip()]


def with_password(url: str, password: str) -> str:
    """`url` with `password` in each server's user information that has none (`redis://host`
    -> `redis://:pw@host`, `redis://user@host` -> `redis://user:pw@host`); percent-encoded."""
    encoded = quote(password, safe="")
    servers = []
    for server in url.split(","):
        scheme, separator, rest = server.partition("://")
        userinfo, at, location = rest.rpartition("@")
        if separator and not at:
            server = f"{scheme}://:{encoded}@{rest}"
        elif separator and ":" not in userinfo:
            server = f"{scheme}://{userinfo}:{encoded}@{location}"
        servers.append(server)
    return ",".join(servers)


def redis_targets(service_urls: Mapping[str, str], candidates: Sequence[str]) -> list[RedisTarget]:
    """Pair the service's (masked) URLs by role with the real ones given here, server by
    server (`server_urls`: replicas and cluster seeds are probed one by one).

    A service URL with no password needs none; one with a masked password takes the first
    candidate naming the same host, port, database and user. Candidates that match no role are
    probed too, as "other". A Sentinel URL is reported, not probed: pass its servers' URLs.
    """
    candidates = [server for url in candidates for server in server_urls(url)]
    paired: list[tuple[list[str], str, str | None]] = []  # roles, shown, url
    sentinel_problems: list[RedisTarget] = []
    used: set[str] = set()
    servers = []
    for role, role_url in service_urls.items():
        parts = server_urls(role_url)
        if not parts:
            unknown = "a Sentinel service: pass its servers' URLs with --redis-url to probe them"
            sentinel_problems.append(RedisTarget((role,), role_url, None, unknown))
        servers += [(role, part) for part in parts]
    for role, shown in servers:
        identity = _identity(shown)
        url = next((c for c in candidates if _identity(c) == identity), None)
        if url is not None:
            used.add(url)
        elif "***" not in shown:
            url = shown  # no password to mask: the URL as shown is the URL
        same = next((entry for entry in paired if entry[1:] == (shown, url)), None)
        if same is None:
            paired.append(([role], shown, url))
        else:
            same[0].append(role)
    targets: list[RedisTarget] = []
    for roles, shown, url in paired:
        problem = None
        if url is None:
            variables = " or ".join(f"{role.upper()}_REDIS_URL" for role in roles)
            problem = f"its password is not known here: set {variables}, or pass --redis-url"
        targets.append(RedisTarget(tuple(roles), shown, url, problem))
    targets += sentinel_problems
    probed = {target.url for target in targets}
    for candidate in candidates:
        if candidate not in used and candidate not in probed and _identity(candidate) is not None:
            probed.add(candidate)
            targets.append(RedisTarget(("other",), mask_url(candidate), candidate))
    return targets


def parse_info(text: str) -> dict[str, str]:
    """`INFO`'s `key:value` lines (sections and blank lines skipped)."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            found[key.strip()] = value.strip()
    return found


@dataclass(frozen=True, slots=True)
class Latency:
    """Round trips of sequential PINGs, in milliseconds."""

    samples: int
    min_ms: float
    avg_ms: float
    max_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency | None:
        if not seconds:
            return None
        ordered = sorted(seconds)
        rank = max(math.ceil(0.99 * len(ordered)) - 1, 0)  # nearest rank
        return cls(
            samples=len(ordered),
            min_ms=round(ordered[0] * 1000, 3),
            avg_ms=round(math.fsum(ordered) / len(ordered) * 1000, 3),
            max_ms=round(ordered[-1] * 1000, 3),
            p99_ms=round(ordered[rank] * 1000, 3),
        )


@dataclass(frozen=True, slots=True)
class RedisReport:
    roles: tuple[str, ...]
    url: str  # masked
    error: str | None = None
    version: str | None = None
    connected_clients: int | None = None  # this probe's connection included
    blocked_clients: int | None = None
    maxclients: int | None = None
    rejected_connections: int | None = None
    latency: Latency | None = None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(reply: Any) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


async def _command(connection: PostalConnection, *args: str) -> Any:
    await connection.send_command(*args)
    return await connection.read_response()


async def probe_redis(
    target: RedisTarget, *, tls: TlsConfig = NO_TLS, pings: int = DEFAULT_PINGS
) -> RedisReport:
    """INFO and latency of one server; a failure is reported in the result, never raised."""
    if target.url is None:
        return RedisReport(target.roles, target.shown, error=target.problem)
    try:
        endpoint = RedisEndpoint.from_url(target.url, force_tls=tls.enabled)
        config = PoolConfig(
            max_size=1, min_idle=0, max_idle=0, pool_timeout=PROBE_TIMEOUT,
            dial_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT, write_timeout=PROBE_TIMEOUT,
        )  # fmt: skip
        connector = Connector(
            endpoint, config, dns=DnsCache(ttl=0), tls=tls, client_name="postal-stats"
        )
        connection = await connector.open()
    except Exception as exc:  # any failure is the report: unreachable, refused, bad password
        return RedisReport(target.roles, target.shown, error=_describe(exc, target.url))
    try:
        clients = parse_info(_text(await _command(connection, "INFO", "clients")))
        stats = parse_info(_text(await _command(connection, "INFO", "stats")))
        server = parse_info(_text(await _command(connection, "INFO", "server")))
        maxclients = _int(clients.get("maxclients"))
        if maxclients is None:
            maxclients = await _config_maxclients(connection)
        round_trips = []
        for _ in range(pings):
            started = time.perf_counter()
            await _command(connection, "PING")
            round_trips.append(time.perf_counter() - started)
    except Exception as exc:
        return RedisReport(target.roles, target.shown, error=_describe(exc, target.url))
    finally:
        await connection.disconnect()
    return RedisReport(
        roles=target.roles,
        url=target.shown,
        version=server.get("redis_version") or server.get("valkey_version"),
        connected_clients=_int(clients.get("connected_clients")),
        blocked_clients=_int(clients.get("blocked_clients")),
        maxclients=maxclients,
        rejected_connections=_int(stats.get("rejected_connections")),
        latency=Latency.of(round_trips),
    )


async def _config_maxclients(connection: PostalConnection) -> int | None:
    try:
        reply = await _command(connection, "CONFIG", "GET", "maxclients")
    except Exception:  # CONFIG forbidden (ACL, managed Redis): unknown, not a failure
        return None
    if isinstance(reply, dict):
        values: Iterable[Any] = reply.values()
    elif isinstance(reply, list):
        values = reply[1::2]
    else:
        return None
    return next((_int(_text(value)) for value in values), None)


def _describe(exc: BaseException, url: str) -> str:
    """One line naming the failure; never the password (the URL's, scrubbed as a known one)."""
    text = str(exc).strip() or type(exc).__name__
    return Redactor(url_secrets(url)).scrub(text.splitlines()[0])

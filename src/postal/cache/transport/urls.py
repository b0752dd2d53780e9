"""Redis endpoint URLs: parsing, and showing them without their password.

Parsing is redis-py's (`parse_url`), so every URL form it accepts works here; what Postal adds is
a value object whose repr and str never contain the password, and `mask_url` for any message that
must name an address.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace

from redis.asyncio.connection import SSLConnection, parse_url

MASK = "***"
EXAMPLE_URL = "redis://[user:password@]host:6379/0"


# A query parameter that holds a secret: redis-py and SQLAlchemy (asyncpg, psycopg) log in with
# `?password=`, libpq has `sslpassword`; the name is matched case-insensitively, the value is
# everything up to the next `&` or `#`.
SECRET_QUERY_PARAMETER = re.compile(
    r"(?P<name>[?&][^=&#]*(?:password|passwd|secret|token)[^=&#]*=)(?P<value>[^&#]*)",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """`redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`; never raises.

    Works on text, not on a parsed URL, so that a malformed URL (a bad port, a password with an
    unescaped `/`, `?` or `#`) is masked too: everything between `://` and the last `@` is the
    user information, and whatever follows its first `:` is replaced. A password given as a
    query parameter (`?password=secret`) is replaced too.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    userinfo, at, location = rest.rpartition("@")
    username, has_password, _ = userinfo.partition(":")
    if has_password:
        rest = f"{username}:{MASK}{at}{location}"
    # Over all of the rest: a query password with an unescaped `@` looks like user information.
    return f"{scheme}://{SECRET_QUERY_PARAMETER.sub(_masked_parameter, rest)}"


def _masked_parameter(match: re.Match[str]) -> str:
    return match["name"] + MASK


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """Where one role's Redis is and how to log in; `str()` is the masked URL."""

    host: str
    port: int
    db: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    masked_url: str = ""

    def same_server(self, other: RedisEndpoint) -> bool:
        """Whether both name the same server (and database), whoever logs in."""
        return (self.host, self.port, self.db) == (other.host, other.port, other.db)

    @classmethod
    def from_url(cls, url: str, *, force_tls: bool = False) -> RedisEndpoint:
        """Parse `redis://` or `rediss://`; `force_tls` is ENABLE_REDIS_TLS_MODE=true."""
        scheme, _, rest = url.partition("://")
        if scheme not in ("redis", "rediss"):
            raise ValueError("expected a redis:// or rediss:// URL")
        database = rest.rpartition("@")[2].partition("?")[0].partition("/")[2]
        if database and not database.isdigit():  # redis-py would quietly use database 0
            raise ValueError(f"expected a database number after the host, as in {EXAMPLE_URL}")
        try:
            kwargs = parse_url(url)
        except ValueError:  # redis-py's message may quote part of the password: not ours to show
            raise ValueError(f"expected a URL such as {EXAMPLE_URL}") from None
        host = kwargs.get("host")
        if not host:
            raise ValueError("expected a URL with a host, such as redis://127.0.0.1:6379/0")
        tls = force_tls or kwargs.get("connection_class") is SSLConnection
        return cls(
            host=str(host),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0)),
            tls=tls,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            masked_url=mask_url(url),
        )

    def __str__(self) -> str:
        return self.masked_url or f"redis://{self.host}:{self.port}/{self.db}"


SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SENTINEL_EXAMPLE = "redis+sentinel://[user:password@]host:26379[,host:26379]/service[?role=replica]"
CLUSTER_EXAMPLE = "redis+cluster://[user:password@]host:6379[,host:6379]"


class Kind(enum.StrEnum):
    """What a role's URL names: how the client finds the server for a key."""

    SERVER = "server"  # one Redis, or several replicas of one primary (comma-separated)
    SENTINEL = "sentinel"  # whoever the Sentinels say is the primary (or its replicas)
    CLUSTER = "cluster"  # a Redis Cluster: the node that owns the key's hash slot


@dataclass(frozen=True, slots=True)
class Topology:
    """A role's URL, parsed: its kind, its endpoints, and for Sentinel the service and role.

    - SERVER: `endpoints` are the servers; more than one (comma-separated `redis://` URLs) are
      replicas of one primary, reads spread over them;
    - SENTINEL: `endpoints` are the Sentinels, which are asked where `service`'s primary (or,
      with `replicas`, its replicas) are; credentials and TLS apply to the data servers;
    - CLUSTER: `endpoints` are seed nodes; the cluster itself says which node owns which slot.
    """

    kind: Kind
    endpoints: tuple[RedisEndpoint, ...]
    service: str | None = None
    replicas: bool = False  # Sentinel: read from the service's replicas, not its primary
    masked_url: str = ""

    @classmethod
    def from_url(cls, url: str, *, force_tls: bool = False) -> Topology:
        url = url.strip()
        scheme = url.partition("://")[0]
        if scheme in (SENTINEL_SCHEME, CLUSTER_SCHEME):
            return cls._from_seed_list(url, force_tls=force_tls)
        parts = [part.strip() for part in url.split(",")]
        if any(not part for part in parts):
            raise ValueError("expected comma-separated redis:// URLs, with nothing empty between")
        endpoints = tuple(RedisEndpoint.from_url(part, force_tls=force_tls) for part in parts)
        return cls(Kind.SERVER, endpoints, masked_url=", ".join(str(e) for e in endpoints))

    @classmethod
    def _from_seed_list(cls, url: str, *, force_tls: bool) -> Topology:
        """`scheme://[user:password@]host:port[,host:port...][/service][?role=replica]`."""
        scheme, _, rest = url.partition("://")
        sentinel = scheme == SENTINEL_SCHEME
        example = SENTINEL_EXAMPLE if sentinel else CLUSTER_EXAMPLE
        userinfo, _, location = rest.rpartition("@")
        location, _, query = location.partition("?")
        hosts, _, path = location.partition("/")
        service = path.strip("/")
        if sentinel and not service:
            raise ValueError(f"expected the Sentinel service name after the hosts, as in {example}")
        if not sentinel and service:
            raise ValueError(
                f"a cluster URL has no path (a cluster has database 0 only): {example}"
            )
        replicas = False
        for parameter in filter(None, query.split("&")):
            name, _, value = parameter.partition("=")
            if sentinel and name == "role" and value in ("primary", "master", "replica"):
                replicas = value == "replica"
            else:
                raise ValueError(f"unexpected query parameter {name!r}: expected {example}")
        credentials = f"{userinfo}@" if userinfo else ""
        endpoints = []
        for host in hosts.split(","):
            if not host.strip():
                raise ValueError(f"expected host:port pairs separated by commas, as in {example}")
            try:
                endpoint = RedisEndpoint.from_url(f"redis://{credentials}{host.strip()}/0")
            except ValueError:
                raise ValueError(f"{host.strip()!r}: expected host:port, as in {example}") from None
            endpoints.append(replace(endpoint, tls=force_tls, masked_url=""))
        return cls(
            Kind.SENTINEL if sentinel else Kind.CLUSTER,
            tuple(endpoints),
            service=service or None,
            replicas=replicas,
            masked_url=mask_url(url),
        )

    def same_servers(self, other: Topology) -> bool:
        """Whether both name the same data servers (so reads see writes with no replication)."""
        if self.kind is not other.kind or self.kind is not Kind.SERVER:
            # Sentinel: the same service's primary unless reads ask for replicas; Cluster: reads
            # go to the slot's primary, as writes do.
            return self.kind is other.kind and not (self.replicas or other.replicas)
        return len(self.endpoints) == len(other.endpoints) == 1 and self.endpoints[0].same_server(
            other.endpoints[0]
        )

    def __str__(self) -> str:
        return self.masked_url

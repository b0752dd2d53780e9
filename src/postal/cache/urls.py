"""Redis endpoint URLs: parsing, and showing them without their password.

Parsing is redis-py's (`parse_url`), so every URL form it accepts works here; what Postal adds is
a value object whose repr and str never contain the password, and `mask_url` for any message that
must name an address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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

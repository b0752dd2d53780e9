"""Redis endpoint URLs: parsing, and showing them without their password.

Parsing is redis-py's (`parse_url`), so every URL form it accepts works here; what Postal adds is
a value object whose repr and str never contain the password, and `mask_url` for any message that
must name an address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.connection import SSLConnection, parse_url

MASK = "***"


def mask_url(url: str) -> str:
    """`redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:{MASK}"
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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

    @classmethod
    def from_url(cls, url: str, *, force_tls: bool = False) -> RedisEndpoint:
        """Parse `redis://` or `rediss://`; `force_tls` is ENABLE_REDIS_TLS_MODE=true."""
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError("expected a redis:// or rediss:// URL")
        kwargs = parse_url(url)
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

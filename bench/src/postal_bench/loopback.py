"""The loopback guard: load generators send traffic to this machine only."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from postal.cache import mask_url
from postal_bench.errors import NotLoopback


def is_loopback_host(host: str) -> bool:
    """Whether `host` is this machine: `localhost`, or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may resolve anywhere
        return False


def require_loopback(url: str, schemes: Sequence[str] = ("redis", "rediss")) -> None:
    """Raise NotLoopback unless `url` has one of `schemes` and a loopback host."""
    refusal = (
        f"refusing to send load to {mask_url(url)}: benchmarks only target loopback"
        f" ({'/'.join(schemes)} URLs on 127.0.0.0/8, ::1 or localhost)"
    )
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise NotLoopback(refusal) from None
    if parts.scheme not in schemes or not host or not is_loopback_host(host):
        raise NotLoopback(refusal)

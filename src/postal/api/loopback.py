"""Loopback-only mode: with no API token, the app answers this machine's clients and no one else.

Without a token nothing tells a writer from anyone else, so the only safe audience is the
machine itself. `postal serve` binds loopback then, but the app may be run by any ASGI server
(`uvicorn postal.app:app_from_environment --factory --host 0.0.0.0`), so the rule is enforced
here, in the app, on every request:

- the connection must be a TCP connection over loopback at both ends (the client's address
  and the address it reached: `scope["client"]` and `scope["server"]`, which the server takes
  from the socket, not from anything the client sent). A Unix socket does not qualify: a
  reverse proxy in front of one would be serving the network;
- the Host header must name the loopback (`localhost`, `127.0.0.1` or `[::1]`, any port). A web
  page whose name an attacker re-points at 127.0.0.1 (DNS rebinding) makes the browser send
  its own name as the Host, and is refused, as is a local proxy passing on a public name.

Anything else gets 403 `loopback_only`, saying to set POSTAL_API_TOKEN. The check runs before
everything else (the cached-read fast lane included), and is not installed at all when a token
is set: it costs a production deployment nothing. Starlette's `TrustedHostMiddleware` checks
the Host only, and answers in plain text; the addresses are the half that matters when the
server is bound to every interface.
"""

from __future__ import annotations

import ipaddress
import json

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
MESSAGE = (
    "no POSTAL_API_TOKEN is set, so this server answers loopback clients (Host localhost,"
    " 127.0.0.1 or [::1]) only: set a token to serve anyone else"
)


def is_loopback_address(host: object) -> bool:
    """Whether `host` (an address as ASGI gives it) is a loopback IP address, IPv4-mapped too."""
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_host_header(value: bytes | None) -> bool:
    """Whether a Host header names the loopback: one of `LOOPBACK_NAMES`, with or without a
    port, in any case. An absent or malformed header does not."""
    if value is None:
        return False
    try:
        host = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if host.startswith("["):  # an IPv6 literal: [::1] or [::1]:8000
        end = host.find("]")
        if end == -1:
            return False
        name, rest = host[: end + 1], host[end + 1 :]
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return False
    return name in LOOPBACK_NAMES


class LoopbackOnly:
    """Refuses every HTTP request that does not come over loopback with a loopback Host."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allows(scope):
            await _refuse(send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def allows(scope: Scope) -> bool:
        client, server = scope.get("client"), scope.get("server")
        if not (client and server and is_loopback_address(client[0])):
            return False
        if not is_loopback_address(server[0]):
            return False
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        return is_loopback_host_header(host)


async def _refuse(send: Send) -> None:
    body = json.dumps({"error": {"code": "loopback_only", "message": MESSAGE}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})

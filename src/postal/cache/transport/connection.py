"""One Redis connection, and the connector that dials it for a pool.

redis-py keeps doing the protocol: handshake (HELLO, AUTH, SELECT, CLIENT SETINFO), command
packing, reply parsing. Three things are changed, each through a narrow override (the redis-py
internals they touch are listed in `cache/redis_internals.py`):

- where it dials: the address comes from the shared DNS cache, while TLS still verifies the
  certificate against the host *name* (`_connection_arguments`);
- socket timeouts: redis-py uses its read timeout for writes too, and wraps every write in
  `asyncio.wait_for`, which on Python 3.11 creates a task per command; Postal bounds the write with
  its own `write_timeout` through `asyncio.timeout`, with the same error handling
  (`send_packed_command`); and when the operation's deadline is sooner than a socket timeout,
  that socket timer is not set at all (`read_response` too), since it could never fire first;
- bookkeeping the pool needs: when the connection was opened, when it must retire, since when it
  is idle, and whether the server has closed it while it sat idle (`is_usable`).

redis-py closes the socket whenever a read or write ends abnormally (cancelled, timed out, reset),
so a connection interrupted by a deadline can never keep a late reply for its next user; the pool
drops every connection that comes back closed.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from postal.cache.transport.config import NO_TLS, PoolConfig, TlsConfig
from postal.cache.transport.deadline import current_operation
from postal.cache.transport.dns import DnsCache, DnsLookupError
from postal.cache.transport.redis_internals import new_command_packer
from postal.cache.transport.urls import RedisEndpoint

# Where a server is right now, as (host, port) places to try in order: Sentinel's answer.
Locate = Callable[[], Awaitable[list[tuple[str, int]]]]

_PACKER = new_command_packer()


class PostalConnection(Connection):
    """A redis-py connection that dials a pre-resolved address and knows its age."""

    def __init__(
        self,
        *,
        dial_address: str,
        write_timeout: float,
        ssl_context: ssl.SSLContext | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dial_address = dial_address
        self.write_timeout = write_timeout
        self._ssl_context = ssl_context
        self.opened_at = 0.0
        self.retire_at: float | None = None  # max lifetime, with jitter; None: never
        self.idle_since = 0.0

    @property
    def is_usable(self) -> bool:
        """Connected, and the peer has not closed or reset it while we were idle.

        Redis restarting, its `timeout` setting or a proxy dropping idle connections leave an
        EOF or an error on the stream; checking costs no system call and saves a request a
        failed command.
        """
        return self.is_connected and self._reader is not None and not self.closed_by_peer

    @property
    def closed_by_peer(self) -> bool:
        """Still open on our side, with an EOF or an error from the server waiting on it: the
        server closed or reset it (a restart, its `timeout`), not we (a deadline disconnects)."""
        reader = self._reader
        if not self.is_connected or reader is None:
            return False
        return reader.at_eof() or reader.exception() is not None

    def pack_command(self, *args: Any) -> list[bytes]:
        """hiredis packs the command: redis-py's asyncio connection packs in Python (a fifth
        of a cache hit's CPU in a profile), while its sync one already uses this packer."""
        packed: list[bytes] = _PACKER.pack(*args)
        return packed

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments: dict[str, Any] = {"host": self.dial_address, "port": self.port}
        if self._ssl_context is not None:
            arguments["ssl"] = self._ssl_context
            arguments["server_hostname"] = self.host  # verify the name, not the IP we dialled
        return arguments

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            # redis-py would reconnect here, behind the pool's back (and its accounting): the
            # pool hands out only connected connections, so this one was closed under its user.
            raise RedisConnectionError(f"Connection to {self._host_error()} is closed")
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        writer = self._writer
        assert writer is not None
        try:
            writer.writelines(command)
            if self._deadline_comes_first(self.write_timeout):
                await writer.drain()
            else:
                async with asyncio.timeout(self.write_timeout):
                    await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            where = self._host_error()
            raise RedisConnectionError(f"Error while writing to {where}: {exc}") from exc
        except BaseException:
            # Cancelled mid-write: part of a command may be on the wire. Never reuse it.
            await self.disconnect(nowait=True)
            raise

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        if timeout is None and self._deadline_comes_first(self.socket_timeout):
            timeout = math.inf  # redis-py's spelling of "no read timer": the deadline bounds it
        return await super().read_response(
            disable_decoding,
            timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )

    def _deadline_comes_first(self, socket_timeout: float | None) -> bool:
        """Whether the current operation's deadline expires before `socket_timeout` would.

        Then a socket-level timer can never fire first and is skipped: each timer is a heap
        entry on the event loop, and an operation would otherwise set three.
        """
        operation = current_operation.get()
        if operation is None or operation.deadline is None or socket_timeout is None:
            return False
        return operation.deadline <= asyncio.get_running_loop().time() + socket_timeout

    def _host_error(self) -> str:
        if self.dial_address != self.host:
            return f"{self.host}({self.dial_address}):{self.port}"
        return f"{self.host}:{self.port}"


def build_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """Certificate and host name verification on, against `ca_file` or the system store."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class Connector:
    """Opens fully initialised connections to one endpoint, with one pool's timeouts."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        config: PoolConfig,
        *,
        dns: DnsCache,
        tls: TlsConfig = NO_TLS,
        client_name: str | None = None,
        locate: Locate | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._locate = locate  # Sentinel: where the server is now; None: the endpoint's address
        self._client_name = client_name  # shown by CLIENT LIST, so operators can tell roles apart
        self._config = config
        self._dns = dns
        use_tls = endpoint.tls or tls.enabled
        self._ssl_context = build_ssl_context(tls) if use_tls else None

    async def open(self) -> PostalConnection:
        """Locate, resolve, then connect and handshake to each address in turn until one works.

        Each attempt's TCP (and TLS) connect is bounded by the dial timeout and the handshake's
        replies by the read timeout; so are locating (asking Sentinel) and name resolution, by
        the dial timeout. If every address fails, the names are forgotten so the next dial
        re-resolves (Redis may have moved), and the last error is raised. Nothing is left open.
        """
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self._config.dial_timeout):
                targets = await self._targets()
        except TimeoutError:
            too_slow = f"locating or resolving {endpoint.host} took longer than the dial timeout"
            raise DnsLookupError(too_slow) from None
        connection: PostalConnection | None = None
        for attempt, (host, port, address) in enumerate(targets, start=1):
            connection = self._new_connection(host, port, address)
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
                break
            except (OSError, RedisConnectionError, RedisTimeoutError):
                await connection.disconnect(nowait=True)
                if attempt == len(targets):
                    for name in {target[0] for target in targets}:
                        self._dns.forget(name)
                    raise
            except BaseException:
                await connection.disconnect(nowait=True)
                raise
        assert connection is not None  # _targets never returns an empty list
        now = asyncio.get_running_loop().time()
        connection.opened_at = now
        connection.idle_since = now
        if self._config.max_lifetime is not None:
            jitter = 1 - self._config.lifetime_jitter * random.random()
            connection.retire_at = now + self._config.max_lifetime * jitter
        return connection

    async def dial_protocol(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """A connection of one's own to the same server, driven by `factory`'s protocol rather
        than redis-py's: located, resolved and TLS-verified as `open()` does, within the dial
        timeout, each address in turn. For a connection read in its receive callback (the
        tracking connection of `cache.transport.tracking`)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._config.dial_timeout):
            targets = await self._targets()
            error: OSError | None = None
            for host, port, address in targets:
                tls: dict[str, Any] = {}
                if self._ssl_context is not None:
                    tls = {"ssl": self._ssl_context, "server_hostname": host}
                try:
                    transport, protocol = await loop.create_connection(
                        factory, address, port, **tls
                    )
                except OSError as exc:
                    error = exc
                    continue
                return transport, protocol  # uvloop's: not a subclass, but the same methods
        for name in {target[0] for target in targets}:
            self._dns.forget(name)
        assert error is not None
        raise error

    async def _targets(self) -> list[tuple[str, int, str]]:
        """(host, port, address to dial) for each place to try, in order."""
        if self._locate is None:
            places = [(self.endpoint.host, self.endpoint.port)]
        else:
            places = await self._locate()
        targets = []
        for host, port in places:
            try:
                addresses = await self._dns.resolve(host, port)
            except DnsLookupError:
                if len(places) == 1:
                    raise
                continue  # one replica's name not resolving: try the others
            targets += [(host, port, address) for address in addresses]
        if not targets:
            raise DnsLookupError(f"none of {len(places)} located servers could be resolved")
        return targets

    def _new_connection(self, host: str, port: int, address: str) -> PostalConnection:
        endpoint = self.endpoint
        return PostalConnection(
            host=host,
            port=port,
            db=endpoint.db,
            username=endpoint.username,
            password=endpoint.password,
            dial_address=address,
            ssl_context=self._ssl_context,
            socket_connect_timeout=self._config.dial_timeout,
            socket_timeout=self._config.read_timeout,
            write_timeout=self._config.write_timeout,
            client_name=self._client_name,
            retry=Retry(NoBackoff(), 0),  # the deadline is ours to spend; no hidden retries
            protocol=3,
            driver_info=_driver_info(),
        )


@functools.cache
def _driver_info() -> DriverInfo:
    """What CLIENT SETINFO reports, built once: left to redis-py, every new connection reads the
    installed package metadata for its version, which measured 7.5% of a busy server's CPU."""
    return DriverInfo()

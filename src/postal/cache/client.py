"""CacheClient: read and write roles, per-operation deadlines, one place for redis-py's errors.

Each operation runs under a deadline (GET 100 ms and SET 200 ms by default, settable per call with
`timeout=`; `None` disables it) that bounds all of it: the wait for a pooled connection, the dial
if one is needed, the write and the read. When the deadline expires the caller gets
`CacheTimeout` (or `PoolTimeout` if no connection was free) at once; redis-py closes the
interrupted connection and the pool drops it, so a late reply can never reach another caller.

redis-py does the protocol: the handshake, packing commands, parsing replies (hiredis), and
pipelines through its `Pipeline` on the managed pool. Single-key commands are sent on a pooled
connection directly (`_command`), without `Redis.execute_command`'s retry and telemetry wrappers.

Each role has its own circuit breaker (unless the profile has none): while it is open, operations
fail at once with `CircuitOpen`. Timeouts, pool timeouts and unreachable Redis count as failures;
any completed operation, a miss or an error reply included, counts as a success (Redis answered).

Generation-guarded values (`get_guarded`, `fill_guarded`, `invalidate`, and the batch forms
`fill_guarded_many` and `invalidate_many`) close the stale-fill race; they are in `cache.guard`,
run through the same roles, deadlines, breakers and events.

This module is the only importer of `redis.exceptions`: everything redis-py raises becomes one of
`cache.errors` here. Every operation emits a `CacheEvent` to the subscribed listeners, one refused
by an open breaker too (outcome `circuit_open`, no I/O done).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Self, TypeVar

import redis.asyncio as redis
import redis.exceptions as redis_exc

from postal.cache.breaker import BreakerState, CircuitBreaker
from postal.cache.config import NO_TLS, TUNED, Profile, TlsConfig
from postal.cache.connection import Connector
from postal.cache.deadline import Operation, current_operation
from postal.cache.dns import DnsCache
from postal.cache.durations import format_duration
from postal.cache.errors import CacheError, CacheTimeout, CacheUnavailable, CircuitOpen, PoolTimeout
from postal.cache.events import CacheEvent, CacheListener, Outcome
from postal.cache.guard import Guarded, GuardedFill, GuardedOps, Script
from postal.cache.keys import GuardedKey
from postal.cache.loop_lag import LoopLag
from postal.cache.pool import ManagedPool, PoolStats
from postal.cache.replicas import ReplicaWait
from postal.cache.urls import RedisEndpoint

T = TypeVar("T")

# A deadline that expired while the event loop ran this late (or half the deadline, if more)
# is no verdict on Redis: see `cache.loop_lag`.
LATE_LOOP_FLOOR = 0.020  # seconds


class UseDefault(enum.Enum):
    """`timeout=USE_DEFAULT` takes the role's configured deadline; `timeout=None` means none."""

    USE_DEFAULT = enum.auto()


USE_DEFAULT: Final = UseDefault.USE_DEFAULT
Timeout = float | None | UseDefault
Value = bytes | str | int | float


@dataclass(slots=True)
class _Role:
    name: str
    pool: ManagedPool
    redis: redis.Redis
    endpoint: RedisEndpoint
    breaker: CircuitBreaker | None


def _build_role(
    name: str, endpoint: RedisEndpoint, profile: Profile, dns: DnsCache, tls: TlsConfig
) -> _Role:
    config = profile.read_pool if name == "read" else profile.write_pool
    connector = Connector(endpoint, config, dns=dns, tls=tls, client_name=f"postal-{name}")
    pool = ManagedPool(name, connector, config)
    breaker = None
    if profile.breaker is not None:
        breaker = CircuitBreaker(
            profile.breaker.failure_threshold,
            profile.breaker.cooldown,
            failure_window=profile.breaker.failure_window,
            name=name,
        )
    # ManagedPool implements redis-py's ConnectionPoolInterface, which is all Redis uses.
    client = redis.Redis(connection_pool=pool)  # type: ignore[arg-type]
    return _Role(name, pool, client, endpoint, breaker)


class CacheClient:
    """Redis behind two roles: `read` (may be a replica) and `write` (the primary).

    Keys are namespaced with `key_prefix`, so several services, or several test runs, can share
    one Redis. Build with `CacheClient.create(...)`, then `await start()` (warms the pools), and
    `await aclose()` on shutdown; or use it as an async context manager.
    """

    def __init__(
        self,
        *,
        read: _Role,
        write: _Role,
        profile: Profile,
        dns: DnsCache,
        key_prefix: str = "",
        wait_for_replicas: bool = False,
    ) -> None:
        self._read = read
        self._write = write
        self._profile = profile
        self._dns = dns
        self._prefix = key_prefix
        self._listeners: list[CacheListener] = []
        self._guard = GuardedOps(self)
        self._replica_wait = ReplicaWait(
            partial(_command, write.pool, "INFO", "replication"), enabled=wait_for_replicas
        )
        self._loop_lag = LoopLag()
        self._excused_timeouts = 0

    @classmethod
    def create(
        cls,
        *,
        read_url: str,
        write_url: str | None = None,
        profile: Profile = TUNED,
        tls: TlsConfig = NO_TLS,
        dns: DnsCache | None = None,
        key_prefix: str = "",
    ) -> CacheClient:
        """Build both roles; nothing connects until `start()`.

        When the roles reach different servers (reads from a replica) and the profile says so,
        invalidations wait for the replicas (`cache.replicas`)."""
        dns = dns if dns is not None else DnsCache(ttl=profile.dns_ttl)
        read_endpoint = RedisEndpoint.from_url(read_url, force_tls=tls.enabled)
        write_endpoint = RedisEndpoint.from_url(write_url or read_url, force_tls=tls.enabled)
        return cls(
            read=_build_role("read", read_endpoint, profile, dns, tls),
            write=_build_role("write", write_endpoint, profile, dns, tls),
            profile=profile,
            dns=dns,
            key_prefix=key_prefix,
            wait_for_replicas=profile.wait_for_replicas
            and not read_endpoint.same_server(write_endpoint),
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_lag.start()
        await asyncio.gather(self._read.pool.start(), self._write.pool.start())

    async def aclose(self) -> None:
        self._loop_lag.stop()
        self._replica_wait.close()
        await asyncio.gather(self._read.pool.aclose(), self._write.pool.aclose())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- observability -----------------------------------------------------------------------

    def subscribe(self, listener: CacheListener) -> None:
        """Call `listener` with a `CacheEvent` after every operation (it must not block)."""
        self._listeners.append(listener)

    def stats(self) -> dict[str, PoolStats]:
        return {"read": self._read.pool.stats(), "write": self._write.pool.stats()}

    @property
    def dns(self) -> DnsCache:
        return self._dns

    @property
    def excused_timeouts(self) -> int:
        """Timeouts the breaker took no verdict from: the event loop stalled through them."""
        return self._excused_timeouts

    @property
    def replica_wait(self) -> ReplicaWait:
        """Whether invalidations wait for replicas, how many, and how those waits went."""
        return self._replica_wait

    @property
    def profile(self) -> Profile:
        return self._profile

    def pool(self, role: str) -> ManagedPool:
        return self._read.pool if role == "read" else self._write.pool

    def breaker(self, role: str) -> CircuitBreaker | None:
        """The role's breaker (to subscribe to its changes); None if the profile has none."""
        return self._read.breaker if role == "read" else self._write.breaker

    def breaker_state(self, role: str) -> BreakerState:
        """For /readyz and metrics; a role without a breaker is always CLOSED."""
        breaker = self.breaker(role)
        return BreakerState.CLOSED if breaker is None else breaker.state

    def __repr__(self) -> str:
        return (
            f"<CacheClient read={self._read.endpoint} write={self._write.endpoint}"
            f" prefix={self._prefix!r}>"
        )

    # -- operations --------------------------------------------------------------------------

    def key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str, *, timeout: Timeout = USE_DEFAULT) -> bytes | None:
        """The value of `key`, or None on a miss; read role, GET deadline."""
        full_key = self.key(key)
        call = partial(_command, self._read.pool, "GET", full_key)
        value: bytes | None = await self._read_op("GET", key, timeout, call, is_hit=_is_not_none)
        return value

    async def mget(
        self, keys: Sequence[str], *, timeout: Timeout = USE_DEFAULT
    ) -> list[bytes | None]:
        """The values of `keys`, None for each miss; one round trip on the read role."""
        if not keys:
            return []
        full_keys = [self.key(key) for key in keys]
        call = partial(_command, self._read.pool, "MGET", *full_keys)
        values: list[bytes | None] = await self._read_op("MGET", keys[0], timeout, call)
        return values

    async def set(
        self, key: str, value: Value, *, ttl: float | None = None, timeout: Timeout = USE_DEFAULT
    ) -> None:
        """Store `value` under `key`, expiring after `ttl` seconds (None: never); write role."""
        full_key = self.key(key)
        call = partial(_command, self._write.pool, "SET", full_key, value, *_px(ttl))
        await self._write_op("SET", key, timeout, call)

    async def delete(self, *keys: str, timeout: Timeout = USE_DEFAULT) -> int:
        """Delete `keys`; the number that existed. Write role, SET deadline."""
        if not keys:
            return 0
        full_keys = [self.key(key) for key in keys]
        call = partial(_command, self._write.pool, "DEL", *full_keys)
        deleted: int = await self._write_op("DEL", keys[0], timeout, call)
        return deleted

    # -- generation-guarded values: the I/O is in cache.guard ----------------------------------

    async def get_guarded(self, key: GuardedKey, *, timeout: Timeout = USE_DEFAULT) -> Guarded:
        """Value (if stamped with the current generation) and generation: one MGET, read role,
        GET deadline; the event says "GET", hit or miss. See `GuardedOps.get`."""
        return await self._guard.get(key, timeout)

    async def fill_guarded(
        self,
        key: GuardedKey,
        generation: int,
        payload: bytes,
        *,
        ttl: float,
        timeout: Timeout = USE_DEFAULT,
    ) -> bool:
        """Store `payload` for `ttl` s if the generation is still `generation`; False if not.
        Write role, SET deadline. See `GuardedOps.fill`."""
        return await self._guard.fill(key, generation, payload, ttl, timeout)

    async def invalidate(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str] = (),
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> None:
        """Bump the generations of `keys` and delete them; bump the bare counters `generations`.
        One pipeline, write role, SET deadline. See `GuardedOps.invalidate`."""
        await self._guard.invalidate(keys, generations, timeout)

    # Batch forms, for many keys at once (a bulk import): one script call, one round trip, a
    # batch. Write role, SET deadline: a batch of thousands of keys may need a longer `timeout`.

    async def invalidate_many(
        self,
        keys: Sequence[GuardedKey],
        generations: Sequence[str] = (),
        *,
        timeout: Timeout = USE_DEFAULT,
    ) -> list[int]:
        """As `invalidate`; the new generation of each of `keys`, which a fill of its new value
        quotes. See `GuardedOps.invalidate_many`."""
        return await self._guard.invalidate_many(keys, generations, timeout)

    async def fill_guarded_many(
        self, fills: Sequence[GuardedFill], *, timeout: Timeout = USE_DEFAULT
    ) -> int:
        """`fill_guarded` for each of `fills`; how many were written. See
        `GuardedOps.fill_many`."""
        return await self._guard.fill_many(fills, timeout)

    def pipeline(self, *, transaction: bool = False) -> CachePipeline:
        """Queue commands for the write role and send them in one round trip with `execute()`."""
        return CachePipeline(self, self._write.redis.pipeline(transaction=transaction))

    # -- the one place deadlines, breakers, errors and events meet ----------------------------
    # (`_read_op`, `_write_op` and the three wire helpers below are also used by cache.guard)

    def _read_op(
        self,
        command: str,
        key: str | None,
        timeout: Timeout,
        call: Callable[[], Awaitable[T]],
        *,
        is_hit: Callable[[T], bool] | None = None,
    ) -> Awaitable[T]:
        """`_run` on the read role with the GET deadline."""
        default = self._profile.timeouts.get
        return self._run(self._read, command, key, default, timeout, call, is_hit=is_hit)

    def _write_op(
        self, command: str, key: str | None, timeout: Timeout, call: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        """`_run` on the write role with the SET deadline."""
        return self._run(self._write, command, key, self._profile.timeouts.set, timeout, call)

    def _read_command(self, *args: Value) -> Awaitable[Any]:
        """One command on a read-role connection; no deadline nor event (`_read_op` adds them)."""
        return _command(self._read.pool, *args)

    def _write_script(
        self,
        script: Script,
        keys: Sequence[str],
        arguments: Sequence[Value],
        *,
        then: Sequence[Value] = (),
    ) -> Awaitable[Any]:
        """`script` on a write-role connection, by SHA (EVAL after a NOSCRIPT); no deadline.
        With `then`, that command follows on the same connection, and the reply is the pair."""
        return _script(self._write.pool, script, keys, arguments, then)

    def _write_limit(self, timeout: Timeout) -> float | None:
        """The deadline a write-role operation called with `timeout` runs under."""
        return self._profile.timeouts.set if isinstance(timeout, UseDefault) else timeout

    def _write_pipeline(self) -> Any:
        """A redis-py pipeline (not a transaction) on the write role."""
        return self._write.redis.pipeline(transaction=False)

    async def _run(
        self,
        role: _Role,
        command: str,
        key: str | None,
        default_timeout: float | None,
        timeout: Timeout,
        call: Callable[[], Awaitable[T]],
        *,
        is_hit: Callable[[T], bool] | None = None,
    ) -> T:
        """Run `call` under the deadline, through the role's breaker; map errors; emit the event.

        `is_hit`: for reads, tells a hit from a miss for the event's outcome.
        """
        breaker = role.breaker
        started = time.perf_counter()
        if breaker is not None and not breaker.allow():
            refused = CircuitOpen(
                f"{command} on {role.name} ({role.endpoint}): circuit breaker open after"
                f" repeated failures; next probe in {format_duration(breaker.retry_in())}"
            )
            self._emit(role, command, key, started, Outcome.CIRCUIT_OPEN, str(refused))
            raise refused
        limit = default_timeout if isinstance(timeout, UseDefault) else timeout
        loop = asyncio.get_running_loop()
        operation = Operation(deadline=None if limit is None else loop.time() + limit)
        token = current_operation.set(operation)
        try:
            async with asyncio.timeout_at(operation.deadline):
                result = await call()
        except (redis_exc.RedisError, OSError, TimeoutError, CacheError) as exc:
            current_operation.reset(token)  # listeners run outside the operation
            error = _map_error(exc, role, command, limit, operation)
            if breaker is not None:
                if isinstance(exc, TimeoutError) and self._loop_ran_late(operation, limit):
                    breaker.record_cancelled()  # no verdict on Redis: see _loop_ran_late
                elif isinstance(error, (CacheTimeout, CacheUnavailable)):
                    breaker.record_failure()
                else:
                    breaker.record_success()  # an error reply: Redis is there and answering
            self._emit(role, command, key, started, _outcome_of(error), str(error))
            raise error from exc
        except BaseException:
            current_operation.reset(token)
            if breaker is not None:
                breaker.record_cancelled()
            raise
        current_operation.reset(token)
        if breaker is not None:
            breaker.record_success()
        if self._listeners:
            outcome = Outcome.OK
            if is_hit is not None:
                outcome = Outcome.HIT if is_hit(result) else Outcome.MISS
            self._emit(role, command, key, started, outcome, None)
        return result

    def _loop_ran_late(self, operation: Operation, limit: float | None) -> bool:
        """Whether this process's own event loop, not Redis, let a deadline of `limit` expire:
        it was behind for `max(20 ms, limit / 2)` or more of the operation (`cache.loop_lag`).
        Half: a loop that late explains a timeout by itself, while everyday hiccups of a few
        tens of milliseconds do not excuse a black-holed Redis.
        Such a timeout is still a timeout to the caller and in the metrics, but the breaker
        takes no verdict from it; a black-holed Redis on a healthy process still opens it."""
        if limit is None or operation.deadline is None:
            return False
        started = operation.deadline - limit
        if self._loop_lag.behind_since(started) < max(LATE_LOOP_FLOOR, limit / 2):
            return False
        self._excused_timeouts += 1
        return True

    def _emit(
        self,
        role: _Role,
        command: str,
        key: str | None,
        started: float,
        outcome: Outcome,
        error: str | None,
    ) -> None:
        if not self._listeners:
            return
        event = CacheEvent(
            role=role.name,
            command=command,
            key=key,
            duration=time.perf_counter() - started,
            outcome=outcome,
            in_use=role.pool.in_use,
            idle=role.pool.idle,
            error=error,
        )
        for listener in self._listeners:
            listener(event)


class CachePipeline:
    """Commands queued for one round trip on the write role; `execute()` runs them."""

    def __init__(self, client: CacheClient, pipeline: Any) -> None:
        self._client = client
        self._pipeline = pipeline

    def __len__(self) -> int:
        return len(self._pipeline)

    def set(self, key: str, value: Value, *, ttl: float | None = None) -> Self:
        self._pipeline.execute_command("SET", self._client.key(key), value, *_px(ttl))
        return self

    def delete(self, *keys: str) -> Self:
        self._pipeline.delete(*(self._client.key(key) for key in keys))
        return self

    def get(self, key: str) -> Self:
        self._pipeline.get(self._client.key(key))
        return self

    async def execute(self, *, timeout: Timeout = USE_DEFAULT) -> list[Any]:
        """Send everything queued; one result per command. SET deadline unless given."""
        call = self._pipeline.execute
        results: list[Any] = await self._client._write_op("PIPELINE", None, timeout, call)
        return results

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._pipeline.reset()


async def _command(pool: ManagedPool, *args: Value) -> Any:
    """One command on a pooled connection; redis-py's connection packs it and parses the reply.

    Single commands skip `redis.asyncio.Redis.execute_command`: its retry and telemetry wrappers
    are what Postal's deadlines and events replace, and they cost about a sixth of a GET's CPU
    time (measured with `postal bench cache`: tuned went from 30.6k to 36.7k GETs/s). A command
    interrupted mid-way leaves its connection closed (redis-py disconnects on any abnormal end of
    a read or write), and the pool drops it on release.
    """
    connection = await pool.get_connection()
    try:
        await connection.send_command(*args)
        return await connection.read_response()
    finally:
        await pool.release(connection)


async def _script(
    pool: ManagedPool,
    script: Script,
    keys: Sequence[str],
    arguments: Sequence[Value],
    then: Sequence[Value] = (),
) -> Any:
    """Run `script` by its SHA; on NOSCRIPT (a fresh, restarted or failed-over Redis) send it
    whole once, on the same connection, which also caches it there for the next EVALSHA.
    With `then` (a WAIT, which must follow the writes on their connection), that command runs
    next on the same connection and the reply is (the script's, then's)."""
    connection = await pool.get_connection()
    try:
        try:
            await connection.send_command("EVALSHA", script.sha, len(keys), *keys, *arguments)
            result = await connection.read_response()
        except redis_exc.NoScriptError:
            await connection.send_command("EVAL", script.source, len(keys), *keys, *arguments)
            result = await connection.read_response()
        if not then:
            return result
        await connection.send_command(*then)
        return result, await connection.read_response()
    finally:
        await pool.release(connection)


def _px(ttl: float | None) -> tuple[str, int] | tuple[()]:
    """SET's expiry arguments: milliseconds, at least 1; none for no expiry."""
    return () if ttl is None else ("PX", max(1, round(ttl * 1000)))


def _is_not_none(value: object) -> bool:
    return value is not None


def _map_error(
    exc: BaseException, role: _Role, command: str, limit: float | None, operation: Operation
) -> CacheError:
    """The most specific cache error for what redis-py, asyncio or the pool raised."""
    where = f"{command} on {role.name} ({role.endpoint})"
    if isinstance(exc, CacheError):
        return type(exc)(f"{where}: {exc}")
    if isinstance(exc, TimeoutError):  # our deadline, from asyncio.timeout
        if limit is None:
            return CacheTimeout(f"{where}: timed out")
        if operation.acquired:
            return CacheTimeout(f"{where}: deadline of {format_duration(limit)} expired")
        if operation.dialing:
            return CacheTimeout(
                f"{where}: deadline of {format_duration(limit)} expired while connecting"
            )
        return PoolTimeout(
            f"{where}: no pooled connection within the {format_duration(limit)} deadline"
        )
    if isinstance(exc, redis_exc.TimeoutError):
        return CacheTimeout(f"{where}: socket timeout: {exc}")
    if isinstance(exc, (redis_exc.ConnectionError, OSError)):
        return CacheUnavailable(f"{where}: {exc}")
    return CacheError(f"{where}: {exc}")


def _outcome_of(error: CacheError) -> Outcome:
    if isinstance(error, PoolTimeout):
        return Outcome.POOL_TIMEOUT
    if isinstance(error, CacheTimeout):
        return Outcome.TIMEOUT
    if isinstance(error, CacheUnavailable):
        return Outcome.CONNECTION_ERROR
    return Outcome.ERROR

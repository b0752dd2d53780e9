"""The wire: one command, a pipeline, or a script, on a pooled connection of the node an operation
was routed to. `RedisClient.run_read` and `run_write` add the deadline, breaker, error mapping and
event around these; a `call` is one of them with its arguments bound, waiting for its node.

A `Script` is sent as EVALSHA, and as EVAL after a NOSCRIPT (a new, restarted or failed-over
Redis), which caches it there again: its SHA is computed here once, never loaded up front.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.exceptions as redis_exc

from postal.cache.transport.deadline import current_operation

if TYPE_CHECKING:
    from postal.cache.transport.nodes import Node

Value = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str  # what EVALSHA quotes; computed here once, so the script is never loaded up front

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


async def _command(args: Sequence[Value], node: Node) -> Any:
    """One command on a pooled connection of `node`; redis-py's connection packs it and parses
    the reply.

    Single commands skip `redis.asyncio.Redis.execute_command`: its retry and telemetry wrappers
    are what Postal's deadlines and events replace, and they cost about a sixth of a GET's CPU
    time (measured with `postal bench cache`: tuned went from 30.6k to 36.7k GETs/s). A command
    interrupted mid-way leaves its connection closed (redis-py disconnects on any abnormal end of
    a read or write), and the pool drops it on release.
    """
    pool = node.pool
    connection = await pool.get_connection()
    try:
        await connection.send_command(*args)
        return await connection.read_response()
    finally:
        await pool.release(connection)


async def _read(args: Sequence[Value], node: Node) -> Any:
    """A read (GET, MGET) on `node`'s read pipeline (`autopipeline`), sharing a write and a read
    with the reads around it; on a pooled connection when the node has none, or when it refuses
    the read (down, full, a stale head)."""
    pipeline = node.pipeline
    if pipeline is not None:
        reply = pipeline.submit(args)
        if reply is not None:
            operation = current_operation.get()
            if operation is not None:
                operation.acquired = True  # on the wire: a timeout now is the command's
            return await reply
    return await _command(args, node)


async def _pipeline(commands: Sequence[Sequence[Value]], node: Node) -> list[Any]:
    """`commands` pipelined (not a transaction) on one connection of `node`: one write, then
    the replies, as Redis sends them (no redis-py reply callbacks: SET's is b"OK"); the first
    error reply is raised once all replies are read, so the connection stays in step and
    goes back to the pool."""
    pool = node.pool
    connection = await pool.get_connection()
    try:
        replies = await _each(connection, commands)
    finally:
        await pool.release(connection)
    for reply in replies:
        if isinstance(reply, redis_exc.ResponseError):
            raise reply
    return replies


async def _script(
    script: Script,
    keys: Sequence[str],
    arguments: Sequence[Value],
    then: Sequence[Sequence[Value]],
    node: Node,
) -> Any:
    """Run `script` by its SHA on `node`; on NOSCRIPT (a fresh, restarted or failed-over Redis)
    send it whole once, on the same connection, which also caches it there for the next EVALSHA.
    With `then` (WAIT and INFO, which must follow the writes on their connection), those
    commands run next on the same connection and the reply is (the script's, then's replies)."""
    pool = node.pool
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
        return result, await _each(connection, then)
    finally:
        await pool.release(connection)


async def _scripts(
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Value]]],
    then: Sequence[Sequence[Value]],
    node: Node,
) -> tuple[list[Any], list[Any] | None]:
    """`script` once per (keys, arguments) of `calls`, pipelined on one connection of `node`,
    by SHA; when the node does not have it (NOSCRIPT), SCRIPT LOAD once and those calls again.
    Error replies come back in their places (a MOVED or ASK for a slot that moved meanwhile, a
    TRYAGAIN). With `then` (WAIT and INFO), those follow on the same connection, so that WAIT
    counts these writes; the reply is (the scripts' replies, then's replies or None)."""
    commands = [("EVALSHA", script.sha, len(keys), *keys, *arguments) for keys, arguments in calls]
    pool = node.pool
    connection = await pool.get_connection()
    try:
        replies = await _each(connection, commands)
        missing = [
            i for i, reply in enumerate(replies) if isinstance(reply, redis_exc.NoScriptError)
        ]
        if missing:
            await connection.send_command("SCRIPT", "LOAD", script.source)
            await connection.read_response()
            again = await _each(connection, [commands[i] for i in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        if not then:
            return replies, None
        return replies, await _each(connection, then)
    finally:
        await pool.release(connection)


async def _each(connection: Any, commands: Sequence[Sequence[Value]]) -> list[Any]:
    """`commands` sent in one write, their replies read in order; an error reply (which
    redis-py raises once read whole, the connection still in step) is kept in its place."""
    await connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except redis_exc.ResponseError as error:
            replies.append(error)
    return replies


def scripts_call(
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Value]]],
    *,
    then: Sequence[Sequence[Value]] = (),
) -> Callable[[Node], Awaitable[tuple[list[Any], list[Any] | None]]]:
    """A `call` for `_write_op`: `script` for each of `calls`, pipelined (see `_scripts`)."""
    return partial(_scripts, script, calls, then)


def script_call(
    script: Script,
    keys: Sequence[str],
    arguments: Sequence[Value],
    *,
    then: Sequence[Sequence[Value]] = (),
) -> Callable[[Node], Awaitable[Any]]:
    """A `call` for `_write_op`: `script` by SHA on the node it is routed to (see `_script`)."""
    return partial(_script, script, keys, arguments, then)


def command_call(*args: Value) -> Callable[[Node], Awaitable[Any]]:
    """A `call` for `_read_op`/`_write_op`: one command on the node it is routed to."""
    return partial(_command, args)


def read_call(*args: Value) -> Callable[[Node], Awaitable[Any]]:
    """A `call` for `run_read`: one read-only command (GET, MGET), pipelined with the
    concurrent reads to its node when the profile says so (see `_read`)."""
    return partial(_read, args)


def pipeline_call(commands: Sequence[Sequence[Value]]) -> Callable[[Node], Awaitable[list[Any]]]:
    """A `call` for `_write_op`: `commands` pipelined on the node it is routed to."""
    return partial(_pipeline, commands)


async def all_of(calls: Iterable[Awaitable[None]]) -> None:
    """Await `calls` concurrently; the first failure is raised once all have finished (a
    batch's parts are independent: one slot failing must not cancel the others mid-write)."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome

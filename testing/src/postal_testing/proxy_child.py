"""The fault proxy in a process of its own, and the handle the bench keeps on it.

`postal bench seed` puts network latency between Postal and Redis with `FaultProxy`. Run in the
bench's own event loop, the proxy would share one core with the load generator: at a few
thousand Redis round trips a second, each a read, a timer and a write in each direction, the two
slow each other down and the measurement says more about the bench than about Postal. In a child
process (on uvloop when installed) the proxy gets its own scheduling, and its CPU time is
reported so the bench can say whether it was a bottleneck.

The child speaks lines of JSON: it prints `{"port": N}` once it listens, then answers each
`stats` line on its stdin with `{"accepted": ..., "open": ..., "cpu_s": ...}`. It stops when its
stdin closes (the bench ended, or died: nothing is left behind either way).

    python -m postal_testing.proxy_child --upstream-port 6379 --latency 0.001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postal_testing import RigError
from postal_testing.proxy import FaultProxy

START_TIMEOUT = 10.0  # s for the child to import, listen and say its port
ANSWER_TIMEOUT = 5.0  # s for an answer to `stats`
STOP_TIMEOUT = 5.0  # s after its stdin closes, then it is killed


@dataclass(frozen=True, slots=True)
class ProxyStats:
    accepted: int  # connections accepted since the proxy started
    open: int  # connections open now
    cpu_s: float  # CPU seconds the proxy process has used


class ProxyProcess:
    """A `FaultProxy` with latency in a child process: started, asked for stats, stopped."""

    def __init__(
        self, upstream_host: str, upstream_port: int, latency: float, log: Path | None = None
    ) -> None:
        self._log = log  # where its stderr goes (a file, never a pipe nobody reads mid-run)
        self._arguments = [
            "--upstream-host", upstream_host,
            "--upstream-port", str(upstream_port),
            "--latency", repr(latency),
        ]  # fmt: skip
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        # A session of its own: a Ctrl-C reaches the bench, which stops the proxy in order.
        # Opening a local file for the child's stderr does not block in any way that matters.
        with open(self._log or os.devnull, "wb") as stderr:  # noqa: ASYNC230
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "postal_testing.proxy_child", *self._arguments,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=stderr, start_new_session=True,
            )  # fmt: skip
        try:
            self.port = int((await self._read(START_TIMEOUT))["port"])
        except RigError:
            await self.stop()
            raise

    async def stats(self) -> ProxyStats:
        process = self._running()
        assert process.stdin is not None
        process.stdin.write(b"stats\n")
        await process.stdin.drain()
        answer = await self._read(ANSWER_TIMEOUT)
        return ProxyStats(int(answer["accepted"]), int(answer["open"]), float(answer["cpu_s"]))

    async def stop(self) -> None:
        """Close its stdin (it closes every connection and exits); kill it if it does not."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    def _running(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            raise RigError("the latency proxy is not running")
        return self._process

    async def _read(self, timeout: float) -> dict[str, Any]:
        process = self._running()
        assert process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await process.stdout.readline()
        except TimeoutError:
            raise RigError(f"the latency proxy did not answer within {timeout:g}s") from None
        if not line:
            await process.wait()
            error = ""
            if self._log is not None:
                error = self._log.read_text(errors="replace").strip()[-500:]
            raise RigError(f"the latency proxy exited ({process.returncode}): {error}")
        answer: dict[str, Any] = json.loads(line)
        return answer


# -- the child's side ------------------------------------------------------------------------


def _say(document: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def serve(upstream_host: str, upstream_port: int, latency: float) -> None:
    """Proxy until stdin closes, answering `stats` lines."""
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with FaultProxy(upstream_port, upstream_host) as proxy:
        if latency > 0:
            await proxy.add_latency(latency)
        _say({"port": proxy.port})
        while line := await commands.readline():
            if line.strip() == b"stats":
                _say(
                    {
                        "accepted": proxy.connections_accepted,
                        "open": proxy.open_connections,
                        "cpu_s": time.process_time(),
                    }
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds, each direction")
    arguments = parser.parse_args(argv)
    run = serve(arguments.upstream_host, arguments.upstream_port, arguments.latency)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:
            asyncio.run(run)
        else:
            uvloop.run(run)


if __name__ == "__main__":
    main()

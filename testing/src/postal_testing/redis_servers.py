"""Child redis-server processes on free loopback ports, for the tests and benchmarks that need a
server to themselves (a replica, a TLS Redis, a Redis to kill or to move).

Each server keeps nothing on disk (no RDB, no AOF), lives in its own temporary directory, and is
stopped (SIGTERM, then SIGKILL) when the test is done. `restart()` stops and starts it again on the
same port, for the "Redis restarted mid-load" faults.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0  # seconds


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
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
    """One redis-server child process on `host`:`port` (a loopback address: any of 127.0.0.0/8,
    so two servers can share a port number, as a Redis that moved to a new address does).

    `config`: the text of a config file, written once into the server's own directory and given
    to redis-server as its config file; a Sentinel rewrites that file as it learns the topology,
    so it must be a file of the server's own that outlives restarts.
    """

    def __init__(
        self,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        config: str | None = None,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"child Redis servers bind loopback addresses only, not {host!r}")
        self.host = host
        self.port = port or free_port(host)
        self._extra_args = list(extra_args)
        self._dir = Path(tempfile.mkdtemp(prefix="postal-redis-"))
        self._config_file: Path | None = None
        if config is not None:
            self._config_file = self._dir / "redis.conf"
            self._config_file.write_text(config)
        self._process: subprocess.Popen[bytes] | None = None
        self.ready_port = self.port  # the port to PING for readiness (TLS servers override it)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def directory(self) -> Path:
        """The server's own temporary directory (its --dir), removed by `cleanup()`."""
        return self._dir

    @property
    def pid(self) -> int | None:
        """The child's process id from start() until stop() or kill(); None otherwise."""
        return None if self._process is None else self._process.pid

    def log_text(self) -> str:
        """What the server has logged so far, for a failure message ("" before it logs)."""
        try:
            return (self._dir / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        # redis-server reads a config file only as its first argument.
        config_file = [] if self._config_file is None else [str(self._config_file)]
        args = [
            REDIS_SERVER,
            *config_file,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            # A primary otherwise waits 5 s for more replicas before a (diskless) first sync.
            "--repl-diskless-sync-delay", "0",
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

    def replicate(self, primary: RedisServer, *, via_port: int | None = None) -> None:
        """Become a replica of `primary` (REPLICAOF), and return once the first sync is done;
        `via_port`: reach it on that port of its host instead (a proxy in front of it)."""
        port = primary.port if via_port is None else via_port
        with socket.create_connection((self.host, self.ready_port), timeout=2) as sock:
            sock.sendall(b"REPLICAOF %s %d\r\n" % (primary.host.encode(), port))
            if not sock.recv(64).startswith(b"+OK"):
                raise RuntimeError(f"REPLICAOF refused by the Redis on port {self.port}")
        # Synced on both sides: the replica's link is up, and the primary has it online (it
        # counts for WAIT only then).
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            mine, theirs = self.info(b"replication"), primary.info(b"replication")
            if b"master_link_status:up" in mine and b"state=online" in theirs:
                return
            time.sleep(0.02)
        # Where it stopped, so that a failure says more than that it did (seen once in CI).
        raise RuntimeError(
            f"replica on port {self.port} did not sync in {START_TIMEOUT}s; replica:"
            f" {_replication_state(mine)}; primary on port {primary.port}:"
            f" {_replication_state(theirs)}"
        )

    def info(self, section: bytes) -> bytes:
        """The text of INFO `section` (a bulk string reply: `$<length>` CRLF, text, CRLF)."""
        with socket.create_connection((self.host, self.ready_port), timeout=2) as sock:
            sock.sendall(b"INFO " + section + b"\r\n")
            with sock.makefile("rb") as reply:
                head = reply.readline()
                if not head.startswith(b"$"):
                    raise RuntimeError(f"INFO refused by the Redis on port {self.port}: {head!r}")
                return reply.read(int(head[1:]))

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing its connections cleanly."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=5)
            if process.stderr:
                process.stderr.close()

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


def _replication_state(info: bytes) -> str:
    """The lines of an INFO replication text that say how far a sync got."""
    wanted = (
        b"role:",
        b"master_link_status:",
        b"master_sync_in_progress:",
        b"master_last_io_seconds_ago:",
        b"master_link_down_since_seconds:",
        b"connected_slaves:",
        b"slave0:",
    )
    lines = [line.strip() for line in info.splitlines() if line.startswith(wanted)]
    return ", ".join(line.decode(errors="replace") for line in lines)

"""The directory of prometheus_client's multiprocess mode, for `postal serve --workers N`.

With N worker processes, `/metrics` is answered by whichever worker the connection lands on, yet
must report all of them: each worker's values live in files in one directory
(`PROMETHEUS_MULTIPROC_DIR`) and the answering worker merges them. `postal serve` prepares that
directory before anything imports prometheus_client (which reads the variable once, at import):

- the operator's `PROMETHEUS_MULTIPROC_DIR` when set (in Kubernetes, an emptyDir), emptied of the
  previous run's files at start and of this run's at exit. One `postal serve` at a time: it holds
  a lock on the directory (`flock`, released by the kernel however the process ends), and a second
  one is refused (`MetricsDirectoryInUse`), since emptying the directory would drop the first's
  counts, and sharing it would sum the two servers' metrics in both;
- else a fresh temporary directory, removed at exit.

With one worker the variable is not used (it is removed from the environment): the metrics are
collected in the process, which is cheaper (a file-backed value costs about three times an
in-memory one on every update).

This module must not import prometheus_client: it runs before the variable is set.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Container, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FILE_PATTERN = "*.db"  # prometheus_client's files: counter_<pid>.db, gauge_livesum_<pid>.db, ...
LIVE_GAUGE_PREFIX = "gauge_live"  # files of the gauges a dead process must leave
LOCK_FILE = ".postal-serve.lock"  # held by the `postal serve` using the operator's directory


class MetricsDirectoryInUse(RuntimeError):
    """Another running `postal serve` uses this `PROMETHEUS_MULTIPROC_DIR`; str() is one line."""


@contextmanager
def metrics_directory(
    workers: int,
    environ: MutableMapping[str, str] | None = None,
    *,
    imported: Container[str] = sys.modules,
) -> Iterator[Path | None]:
    """Set up `PROMETHEUS_MULTIPROC_DIR` for `workers` processes; yields the directory, or None
    for a single worker (in-process metrics). Cleans up on exit. `imported`: the modules
    already imported (tests pass their own)."""
    env = os.environ if environ is None else environ
    if "prometheus_client" in imported:  # a developer's mistake: fail loudly, not silently
        raise RuntimeError("prometheus_client was imported before the metrics directory was set up")
    if workers <= 1:
        env.pop(MULTIPROC_ENV, None)
        yield None
        return
    configured = env.get(MULTIPROC_ENV)
    lock = None
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        _remove_files(path)  # counters of a previous run must not be summed into this one's
    else:
        path = Path(tempfile.mkdtemp(prefix="postal-metrics-"))
        env[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if lock is None:
            shutil.rmtree(path, ignore_errors=True)
            env.pop(MULTIPROC_ENV, None)
        else:
            _remove_files(path)
            os.close(lock)  # the lock goes with it


def _lock(path: Path) -> int:
    """An open descriptor holding the directory's lock (not inherited by the workers: they
    need none, and a worker outliving its server must not keep the directory taken)."""
    descriptor = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise MetricsDirectoryInUse(
            f"{MULTIPROC_ENV}={path} is in use by another running postal serve: give each"
            " its own directory"
        ) from None
    return descriptor


def _remove_files(path: Path) -> None:
    """Only prometheus_client's files: a misconfigured variable must not empty a whole folder."""
    for file in path.glob(FILE_PATTERN):
        file.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as someone else
        return True
    return True


def dead_worker_pids(path: Path, is_alive: Callable[[int], bool] = pid_alive) -> list[int]:
    """Processes that left live-gauge files but no longer run (a worker that crashed, which
    uvicorn replaced): their pool connections must not count in the sums any more."""
    pids = set()
    for file in path.glob(f"{LIVE_GAUGE_PREFIX}*.db"):
        pid_text = file.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit():
            pids.add(int(pid_text))
    return sorted(pid for pid in pids if pid != os.getpid() and not is_alive(pid))

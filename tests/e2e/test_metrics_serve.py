"""/metrics under `postal serve --workers N`: whichever worker answers reports them all.

Each worker keeps its values in files of the multiprocess directory; these tests look at those
files only to see that both workers served, and otherwise at /metrics as Prometheus would. (An
operator's PROMETHEUS_MULTIPROC_DIR, emptied at start and exit, is unit-tested.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from postal.embedded import free_loopback_port
from tests.e2e.test_serve import SCRUBBED, serving
from tests.support.metrics_text import Scrape

HTTP_COUNT = "postal_http_request_duration_seconds_count"
PATIENCE = 15.0  # seconds: workers refresh their shared values every second


def scrape(base: str) -> Scrape:
    response = httpx.get(f"{base}/metrics", timeout=5)
    assert response.status_code == 200
    return Scrape.parse(response.text)


def healthz_counts_by_worker(directory: Path) -> dict[str, float]:
    """GET /healthz requests each worker has recorded, from its own histogram file."""
    counts = {}
    for file in directory.glob("histogram_*.db"):
        total = 0.0
        for metric in MultiProcessCollector.merge([str(file)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == HTTP_COUNT and sample.labels.get("route") == "/healthz":
                    total += sample.value
        counts[file.stem.rsplit("_", 1)[1]] = total
    return counts


def node_of(redis_url: str) -> str:
    """The `node` label of the one Redis a URL names: its "host:port"."""
    return redis_url.removeprefix("redis://").split("/")[0].rsplit("@", 1)[-1]


def backend(database_url: str, redis_url: str, key_prefix: str, tmp_path: Path) -> dict[str, str]:
    temporary = tmp_path / "tmp"
    temporary.mkdir(exist_ok=True)
    return {
        "DATABASE_URL": database_url,
        "READ_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "TMPDIR": str(temporary),  # where `postal serve` makes its metrics directory
    }


def test_two_workers_sum_their_metrics_and_leave_no_files(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    env = backend(database_url, redis_url, key_prefix, tmp_path)
    with serving(tmp_path, "--workers", "2", **env) as served:
        [directory] = Path(env["TMPDIR"]).glob("postal-metrics-*")
        sent = 0
        deadline = time.monotonic() + PATIENCE
        # New connections until both workers have answered some (the kernel picks the worker).
        while True:
            for _ in range(20):
                assert httpx.get(f"{served.base}/healthz").status_code == 200
                sent += 1
            time.sleep(1.2)  # a refresh
            by_worker = healthz_counts_by_worker(directory)
            if len(by_worker) == 2 and all(by_worker.values()):
                break
            assert time.monotonic() < deadline, f"one worker answered all: {by_worker}"
        # Whichever worker answers the scrape, it counts every request, once.
        counted = scrape(served.base).total(HTTP_COUNT, route="/healthz")
        while counted != sent and time.monotonic() < deadline:
            time.sleep(0.2)
            counted = scrape(served.base).total(HTTP_COUNT, route="/healthz")
        assert counted == sent
        metrics = scrape(served.base)
        # Summed over the workers, per node; the breaker is the worst worker's.
        node = node_of(redis_url)
        assert metrics.value("postal_pool_max_connections", role="read", node=node) == 2 * 50
        assert metrics.value("postal_cache_breaker_state", role="read", node=node) == 0
        assert directory.is_dir()
    assert served.returncode == 0, served.output
    assert f"metrics: all workers' /metrics files in {directory}" in served.output
    assert not directory.exists()
    assert not list(Path(env["TMPDIR"]).glob("postal-metrics-*"))


def test_one_worker_collects_in_process(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = backend(database_url, redis_url, key_prefix, tmp_path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    with serving(tmp_path, **env) as served:
        for _ in range(3):
            assert httpx.get(f"{served.base}/healthz").status_code == 200
        metrics = scrape(served.base)
    assert metrics.value(HTTP_COUNT, method="GET", route="/healthz", status="200") == 3
    assert metrics.value("postal_pool_max_connections", role="read", node=node_of(redis_url)) == 50
    assert list(directory.iterdir()) == []  # the variable was not used
    assert "metrics:" not in served.output


def test_a_second_serve_on_the_same_directory_is_refused_and_the_first_keeps_its_counts(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """One PROMETHEUS_MULTIPROC_DIR for two `postal serve`s: the second must neither empty the
    first's files nor have its counts summed into the first's /metrics."""
    directory = tmp_path / "prometheus"
    env = backend(database_url, redis_url, key_prefix, tmp_path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    with serving(tmp_path, "--workers", "2", **env) as served:
        for _ in range(5):
            assert httpx.get(f"{served.base}/healthz").status_code == 200
        deadline = time.monotonic() + PATIENCE
        while scrape(served.base).total(HTTP_COUNT, route="/healthz") != 5:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED} | env
        port = str(free_loopback_port())
        second = subprocess.Popen(
            [sys.executable, "-m", "postal.cli", "serve", "--port", port, "--workers", "2"],
            cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            output, _ = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            second.terminate()
            output, _ = second.communicate(timeout=15)
            raise AssertionError(f"the second postal serve started: {output}") from None
        assert second.returncode == 2, output
        assert f"PROMETHEUS_MULTIPROC_DIR={directory} is in use by another" in output
        time.sleep(1.2)  # a refresh: the first's workers write their files again
        assert scrape(served.base).total(HTTP_COUNT, route="/healthz") == 5
    assert served.returncode == 0, served.output
    assert not list(directory.glob("*.db"))

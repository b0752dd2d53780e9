"""The no-token rule on real server processes (issue 17): whatever server runs the app, with no
POSTAL_API_TOKEN it answers loopback clients with a loopback Host only.

The docs' own `uvicorn postal.app:app_from_environment --factory --host 0.0.0.0` used to take
anonymous writes from anyone; `postal serve` bound loopback but took any Host, so a web page
whose name an attacker re-points at 127.0.0.1 (DNS rebinding) could write through the visitor's
browser. Requests go to 127.0.0.1 only: a rebinding page reaches the server exactly so, with
its own name in the Host header.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from postal.embedded import free_loopback_port
from tests.e2e.test_serve import SCRUBBED, serving

POST = {"title": "t", "body": "b", "author": "a"}
REBOUND = "attacker.example"


@contextmanager
def uvicorn_on_every_interface(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[str]:
    """The app as the docs' uvicorn line runs it, bound to 0.0.0.0: its base URL on 127.0.0.1."""
    port = free_loopback_port()
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    environ.update(
        READ_REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'postal.db'}",
    )
    command = [
        sys.executable, "-m", "uvicorn", "postal.app:app_from_environment", "--factory",
        "--host", "0.0.0.0", "--port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "uvicorn exited before it was ready"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not become ready in 30 s"
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            print(process.communicate(timeout=15)[0])
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def attempts(base: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
    """A rebinding page's write, its read of a post, and its look at /status."""
    headers = {"Host": REBOUND}
    write = httpx.post(f"{base}/api/v1/posts", json=POST, headers=headers)
    read = httpx.get(f"{base}/api/v1/posts/1", headers=headers)
    status = httpx.get(f"{base}/status", headers=headers)
    return write, read, status


def assert_refused(*responses: httpx.Response) -> None:
    for response in responses:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "loopback_only"


def test_uvicorn_on_every_interface_without_a_token_refuses_a_rebound_host(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    with uvicorn_on_every_interface(tmp_path, redis_url, key_prefix) as base:
        assert_refused(*attempts(base))
        listed = httpx.get(f"{base}/api/v1/posts")  # this machine's own client
        created = httpx.post(f"{base}/api/v1/posts", json=POST, headers={"Host": "localhost"})
    assert listed.json()["items"] == []  # the refused write wrote nothing
    assert created.status_code == 201


def test_postal_serve_without_a_token_refuses_a_rebound_host(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        assert_refused(*attempts(served.base))
        assert httpx.get(f"{served.base}/api/v1/posts").json()["items"] == []
    assert "answering loopback clients only" in served.output

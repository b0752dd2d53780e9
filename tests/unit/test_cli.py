import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import postal
from postal.cli import app
from postal.cli.serve import worker_count
from postal.settings import load_settings


def test_a_bad_setting_stops_serve_with_one_line_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_GET_DEADLINE", "100")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "postal: configuration error: REDIS_GET_DEADLINE='100': expected a duration such as"
        " 100ms, 2s, 5m or 1m30s"
    ]


def pyproject_version() -> str:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


def test_the_version_is_pyprojects_as_installed() -> None:
    assert postal.__version__ == pyproject_version()
    assert postal.__version__ == importlib.metadata.version("postal")


def test_version_command_prints_the_bare_number() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == pyproject_version()


def test_version_option_names_the_program() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"postal {pyproject_version()}"


@pytest.mark.parametrize(
    ("option", "environment", "expected"),
    [
        (None, {}, 1),  # neither: one worker
        (None, {"WEB_CONCURRENCY": "3"}, 3),  # the platform's variable, read
        (2, {"WEB_CONCURRENCY": "3"}, 2),  # an explicit --workers wins
        (1, {}, 1),
    ],
)
def test_the_worker_count_is_workers_else_web_concurrency_else_one(
    option: int | None, environment: dict[str, str], expected: int
) -> None:
    assert worker_count(option, load_settings(environment)) == expected


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_web_concurrency_stops_serve_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", value)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"postal: configuration error: WEB_CONCURRENCY={value!r}: expected a whole number >= 1"
    )

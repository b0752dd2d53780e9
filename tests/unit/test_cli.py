import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import postal
from postal.cli import app


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

import pytest
from typer.testing import CliRunner

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


def test_version() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == "0.1.0"

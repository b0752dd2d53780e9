"""`python -m postal_bench.tracing` runs Postal's outermost layer with tracing off and on."""

import json

import pytest

from postal_bench.tracing import main


def test_it_measures_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "200", "--runs", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"off", "on", "added"}
    assert figures["off"] > 0
    assert figures["on"] > 0


def test_off_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "200", "--runs", "1", "--only", "off", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"off"}


def test_it_refuses_a_run_of_nothing() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--requests", "0"])
    assert exited.value.code == 2

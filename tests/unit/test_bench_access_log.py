"""`python -m postal_bench.access_log` runs Postal's outermost layer with the log off and on."""

import json
import logging

import pytest

from postal_bench.access_log import main


def test_it_measures_both_and_leaves_logging_as_it_found_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handlers = logging.getLogger().handlers[:]
    assert main(["--requests", "200", "--runs", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"off", "on", "added"}
    assert figures["off"] > 0
    assert figures["on"] > 0
    assert logging.getLogger().handlers == handlers  # its /dev/null handler is gone


def test_it_refuses_a_run_of_nothing() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--requests", "0"])
    assert exited.value.code == 2

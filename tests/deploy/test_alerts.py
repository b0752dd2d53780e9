"""deploy/prometheus/alerts.yaml: the seed's thresholds, over metrics that exist.

Two layers. promtool (Prometheus's own checker) runs `check rules` and the unit tests in
alerts.test.yaml, which feed scenarios and assert which alerts fire when: `make test` installs it
(scripts/ensure-promtool), and CI fails without it. The layer that runs everywhere parses every
expression (tests/deploy/promql.py: metric, label and value names) and checks each threshold
and the rules' shape.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from postal.observability.metrics import BREAKER_OPEN, KEY_EXPRESSIONS
from tests.deploy import promql

PROMETHEUS_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yaml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yaml"
SEVERITIES = {"warning", "critical"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")  # Prometheus's duration syntax


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


RULES = load_rules()
ALERT_NAMES = [rule["alert"] for rule in RULES]


def comparisons(expression: str) -> list[tuple[str, str, float]]:
    """(normalized left side, operator, number) for each comparison with a number on its right."""
    found: list[tuple[str, str, float]] = []

    def visit(node: promql_parser.Expr) -> None:
        if not isinstance(node, promql_parser.BinaryExpr):
            return
        operator = str(node.op)
        if operator not in {"<", ">", "<=", ">=", "==", "!="}:
            return
        if not isinstance(node.rhs, promql_parser.NumberLiteral):
            return
        left = node.lhs
        while isinstance(left, promql_parser.ParenExpr):
            left = left.expr
        found.append((str(left), operator, node.rhs.val))

    promql_parser.walk(promql.parse(expression), visit)
    return found


def alert_comparisons() -> list[tuple[str, str, str, float]]:
    return [
        (rule["alert"], left, operator, number)
        for rule in RULES
        for left, operator, number in comparisons(rule["expr"])
    ]


def test_every_rule_is_an_alert_with_for_severity_and_a_runbook() -> None:
    assert len(RULES) >= 5
    assert len(set(ALERT_NAMES)) == len(ALERT_NAMES), "alert names must be unique"
    for rule in RULES:
        name = rule.get("alert")
        assert name, f"a rule that is not an alert: {rule}"
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: a `for:` duration"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["labels"]["service"] == "postal", name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert "postal stats" in annotations["runbook"], f"{name}: the runbook names postal stats"


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_expression_names_only_postal_metrics(name: str) -> None:
    (rule,) = [rule for rule in RULES if rule["alert"] == name]
    assert promql.problems(rule["expr"]) == []


@pytest.mark.parametrize(
    ("key", "operator", "threshold"),
    [
        ("hit_rate", "<", 0.8),  # the seed: hit rate below 80%
        ("p99_latency", ">", 0.010),  # p99 above 10 ms
        ("error_rate", ">", 0.001),  # error rate above 0.1%
        ("pool_usage", ">", 0.9),  # not the seed's: pools nearly exhausted
    ],
)
def test_the_thresholds_apply_to_the_key_expressions(
    key: str, operator: str, threshold: float
) -> None:
    """The very expression of KEY_EXPRESSIONS (as docs/operations.md and the dashboard show it)
    is the one compared, with the seed's threshold."""
    wanted = (promql.normalized(KEY_EXPRESSIONS[key]), operator, threshold)
    found = [(left, op, number) for _, left, op, number in alert_comparisons()]
    assert wanted in found


def test_pool_timeouts_above_zero_alert() -> None:
    found = [
        (left, op, number)
        for _, left, op, number in alert_comparisons()
        if "postal_pool_timeouts_total" in left
    ]
    timeouts = promql.normalized("sum by (role) (increase(postal_pool_timeouts_total[5m]))")
    assert found == [(timeouts, ">", 0.0)]


def test_an_open_breaker_alerts() -> None:
    found = [
        (op, number)
        for _, left, op, number in alert_comparisons()
        if "postal_cache_breaker_state" in left
    ]
    assert found == [("==", float(BREAKER_OPEN))]


def test_the_promtool_tests_cover_every_alert() -> None:
    """Each alert has a scenario in which it fires (exp_alerts not empty)."""
    document = yaml.safe_load(ALERT_TESTS.read_text())
    assert document["rule_files"] == [ALERTS.name]
    firing = {
        case["alertname"]
        for test in document["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == set(ALERT_NAMES)


def promtool() -> str:
    """promtool's path: next to this Python (where scripts/ensure-promtool puts it) or on PATH.
    Missing: a skip on a developer's machine (`make test` installs it), a failure in CI, where
    the validation must not quietly go away."""
    beside_python = Path(sys.executable).parent / "promtool"
    found = str(beside_python) if beside_python.is_file() else shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (scripts/ensure-promtool installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


def test_promtool_runs_the_alert_unit_tests() -> None:
    result = run_promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_catches_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: with the hit-rate threshold at 40%, the 50% scenario stops
    firing and promtool says so."""
    (tmp_path / ALERTS.name).write_text(ALERTS.read_text().replace("< 0.8", "< 0.4"))
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    result = subprocess.run(
        [promtool(), "test", "rules", ALERT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "PostalCacheHitRateLow" in result.stdout + result.stderr

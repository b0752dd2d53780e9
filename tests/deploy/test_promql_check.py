"""The PromQL checker that the dashboard and alert tests rely on: it must accept Postal's key
expressions and refuse each kind of mistake it claims to catch."""

from __future__ import annotations

import pytest

from postal.observability.metrics import KEY_EXPRESSIONS, METRIC_NAMES
from tests.deploy import promql


def test_it_knows_the_labels_of_exactly_the_modules_metrics() -> None:
    assert set(promql.METRIC_LABELS) == set(METRIC_NAMES)


@pytest.mark.parametrize("name", sorted(KEY_EXPRESSIONS))
def test_the_key_expressions_pass(name: str) -> None:
    assert promql.problems(KEY_EXPRESSIONS[name]) == []


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("sum(rate(postal_cache_operations_total[5m])", "does not parse"),
        ("rates(postal_cache_operations_total[5m])", "does not parse"),
        ("sum(rate(postal_cache_operation_total[5m]))", "is not one of Postal's series"),
        ("rate(postal_cache_operation_seconds[5m])", "select a histogram's _bucket"),
        ("sum(rate(postal_http_request_duration_seconds_total[5m]))", "is not one of"),
        ('postal_cache_operations_total{outcome="hits"}', "outcome='hits'"),
        ('postal_cache_operations_total{outcome=~"hit|timeouts"}', "outcome='timeouts'"),
        ('postal_cache_operations_total{outcome=~"time.*"}', "not a plain alternation"),
        ('postal_cache_fills_total{role="read"}', "has no label 'role'"),
        ('postal_pool_connections{state="busy"}', "state='busy'"),
        ('postal_pool_connections_closed_total{reason="idle"}', "reason='idle'"),
        ('postal_cache_breaker_state{role="replica"}', "role='replica'"),
        # Operation metrics are by role only (a node label would multiply their series).
        ('postal_cache_operations_total{node="10.0.0.1:6379"}', "has no label 'node'"),
        ("sum by (node) (rate(postal_cache_operation_seconds_count[5m]))", "label 'node'"),
        ("sum by (roles) (postal_pool_connections)", "no metric below has the label 'roles'"),
        ("sum without (stat) (postal_pool_connections)", "label 'stat'"),
        (
            "postal_pool_connections / on (rol) postal_pool_max_connections",
            "no metric below has the label 'rol'",
        ),
        ('{__name__=~"postal_.*"}', "without a metric name"),
    ],
)
def test_each_kind_of_mistake_is_refused(expression: str, complaint: str) -> None:
    found = promql.problems(expression)
    assert any(complaint in problem for problem in found), found


def test_target_labels_and_histogram_series_are_allowed() -> None:
    expression = (
        "histogram_quantile(0.99, sum by (le, instance) "
        '(rate(postal_http_request_duration_seconds_bucket{job="postal",route="/api/v1/posts/{id}"}[5m])))'
    )
    assert promql.problems(expression) == []


def test_legends_name_only_labels_the_expression_returns() -> None:
    by_role = "sum by (role) (postal_pool_connections)"
    assert promql.legend_problems(by_role, "{{role}}") == []
    assert promql.legend_problems(by_role, "{{role}} {{state}}") != []
    assert promql.legend_problems(by_role, "{{role}} {{node}}") != []
    by_node = 'max by (role, node) (postal_cache_breaker_state{node="10.0.0.1:6379"})'
    assert promql.problems(by_node) == []
    assert promql.legend_problems(by_node, "{{role}} {{node}}") == []
    assert promql.legend_problems("sum(rate(postal_cache_fills_total[5m]))", "{{outcome}}") != []
    quantile = (
        "histogram_quantile(0.99, sum by (le, role, command) "
        "(rate(postal_cache_operation_seconds_bucket[5m])))"
    )
    assert promql.legend_problems(quantile, "{{role}} {{command}}") == []


def test_normalized_ignores_spacing_and_line_breaks() -> None:
    assert promql.normalized("sum( rate(postal_pool_timeouts_total [5m]) )") == promql.normalized(
        "sum(rate(postal_pool_timeouts_total[5m]))"
    )
    nested = f"({KEY_EXPRESSIONS['hit_rate']}) < 0.8"
    assert promql.normalized(KEY_EXPRESSIONS["hit_rate"]) in promql.subexpressions(nested)

"""deploy/grafana/postal-dashboard.json: a Grafana dashboard that imports, over metrics that exist.

No Grafana here, so its shape is checked as Grafana reads it (schema version, panels with
targets on a datasource variable, unique ids, a 24-column grid without overlaps), and every
query goes through tests/deploy/promql.py; the five key metrics are the very expressions of
postal.observability.metrics.KEY_EXPRESSIONS, as the alerts use them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from postal.observability.metrics import KEY_EXPRESSIONS
from tests.deploy import promql

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "postal-dashboard.json"
GRID_COLUMNS = 24
DATA_PANEL_TYPES = {"timeseries", "stat", "state-timeline", "gauge", "bargauge", "table"}
# Labelled by node as well as role (a pool and a breaker per server of a role).
PER_NODE_METRICS = {name for name, labels in promql.METRIC_LABELS.items() if "node" in labels}


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def targets() -> list[tuple[str, str, str]]:
    """(panel title, expression, legend) of every query."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in data_panels(load())
        for target in panel["targets"]
    ]


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = load()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert len(dashboard["uid"]) <= 40  # Grafana's limit on uids
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # an id would clash on import
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in data_panels(dashboard):
        assert panel["type"] in DATA_PANEL_TYPES, panel["title"]
        assert panel["title"], panel
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_uses_the_datasource_variable() -> None:
    dashboard = load()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in data_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in load()["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] >= 1
        assert grid["h"] >= 1
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (grid["x"] + column, grid["y"] + row)
            for column in range(grid["w"])
            for row in range(grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize(
    ("title", "expression", "legend"), targets(), ids=[title for title, _, _ in targets()]
)
def test_every_query_names_only_postal_metrics(title: str, expression: str, legend: str) -> None:
    assert promql.problems(expression) == []
    assert promql.legend_problems(expression, legend) == []


@pytest.mark.parametrize("key", sorted(KEY_EXPRESSIONS))
def test_the_key_metrics_are_the_modules_expressions(key: str) -> None:
    """Each of the five key metrics has a stat panel showing exactly its KEY_EXPRESSIONS entry."""
    wanted = promql.normalized(KEY_EXPRESSIONS[key])
    stats = [
        promql.normalized(target["expr"])
        for panel in data_panels(load())
        if panel["type"] == "stat"
        for target in panel["targets"]
    ]
    assert wanted in stats


def test_it_shows_what_the_issue_asks_for() -> None:
    """Hit rate, latency percentiles of cache GETs and HTTP, pool usage per role, errors by
    outcome, breaker state, fills and invalidations: each selected by some query."""
    expressions = " ".join(promql.normalized(expression) for _, expression, _ in targets())
    for needed in (
        "histogram_quantile(0.5, sum by (le) (rate(postal_cache_operation_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(postal_cache_operation_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(postal_http_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(postal_http_request_duration_seconds_bucket",
        "sum by (role, outcome) (rate(postal_cache_operations_total",
        "postal_cache_breaker_state",
        "postal_pool_connections",
        "postal_pool_timeouts_total",
        "postal_cache_fills_total",
        "postal_cache_invalidations_total",
    ):
        assert needed.replace(" (", "(") in expressions.replace(" (", "("), needed


def test_it_shows_the_near_cache() -> None:
    """Reads from memory next to Redis's GETs in one panel, invalidations received, flushes,
    evictions by reason, bytes and entries, and whether tracking is live."""
    panels = {
        panel["title"]: {promql.normalized(target["expr"]) for target in panel["targets"]}
        for panel in data_panels(load())
    }
    hits = promql.normalized('sum(rate(postal_near_cache_reads_total{outcome="hit"}[5m]))')
    gets = promql.normalized(
        'sum(rate(postal_cache_operations_total{role="read",command="GET"}[5m]))'
    )
    assert any({hits, gets} <= expressions for expressions in panels.values())
    shown = set().union(*panels.values())
    for needed in (
        "sum(rate(postal_near_cache_invalidations_received_total[5m]))",
        "sum(rate(postal_near_cache_flushes_total[5m]))",
        "sum by (reason) (rate(postal_near_cache_evictions_total[5m]))",
        "sum(postal_near_cache_bytes)",
        "sum(postal_near_cache_entries)",
        "min by (instance) (postal_near_cache_tracking_live)",
    ):
        assert promql.normalized(needed) in shown, needed


def test_the_pool_and_breaker_graphs_show_each_node() -> None:
    """Every graph of a per-node metric keeps the node and names it in its legend; only the key
    metrics' stat panels sum a role's nodes (pool usage is the role's, as the alert has it)."""
    graphed = 0
    for panel in data_panels(load()):
        if panel["type"] == "stat":
            continue
        for target in panel["targets"]:
            expression = target["expr"]
            selected = {
                re.sub(r"_(bucket|sum|count)$", "", name)
                for name in re.findall(r"postal_[a-z_]+", expression)
            }
            if not selected & PER_NODE_METRICS:
                continue
            graphed += 1
            assert "node" in promql.returned_labels(expression), (panel["title"], expression)
            assert "{{node}}" in target.get("legendFormat", ""), panel["title"]
    assert graphed >= 8  # breaker, pool usage, connections, caps, waits, timeouts, dials, closes

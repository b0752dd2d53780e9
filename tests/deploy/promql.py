"""Checks a PromQL expression against Postal's metrics, with no Prometheus at hand.

The expression is parsed by promql-parser (the Rust parser of GreptimeDB's, used by their
database: a syntax error or an unknown function is refused there), then every part that names
something is looked at:

- each series selected is one of Postal's (`postal.observability.metrics.SERIES_NAMES`);
- each label matched on exists on that metric, and when the label has a fixed set of values
  (outcome, role, state, reason) the value matched is one of them, regex alternations included;
- each label an aggregation keeps (`by`) or drops (`without`), or a binary operation matches on
  (`on`, `ignoring`), exists on a metric below it;
- each `{{label}}` of a Grafana legend is one the expression can return.

The labels of each metric are those the issue fixed (it is the interface); `METRIC_LABELS` must
list exactly the module's `METRIC_NAMES` (a test checks it), and the value sets come from the
code's own enums, so a renamed outcome fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import promql_parser

from postal.cache import CloseReason, FillOutcome, Outcome, RefreshOutcome
from postal.observability.metrics import (
    DNS_OUTCOMES,
    HISTOGRAM_SUFFIXES,
    HISTOGRAMS,
    INVALIDATION_OUTCOMES,
    READ_PIPELINE_EVENT_NAMES,
    REPLICA_WAIT_OUTCOMES,
    SERIES_NAMES,
)

ROLES = frozenset({"read", "write"})
COMMANDS = frozenset({"GET", "MGET", "SET", "DEL", "PIPELINE", "EVALSHA"})

# label -> its values, or None when any value may appear (routes, methods, statuses, le, and
# node: each Redis server of a role, "host:port", on the pool metrics and the breaker only)
Labels = Mapping[str, frozenset[str] | None]

METRIC_LABELS: Mapping[str, Labels] = {
    "postal_cache_operations_total": {
        "role": ROLES,
        "command": COMMANDS,
        "outcome": frozenset(outcome.value for outcome in Outcome),
    },
    "postal_cache_operation_seconds": {"role": ROLES, "command": COMMANDS},
    "postal_pool_connections": {
        "role": ROLES,
        "node": None,
        "state": frozenset({"in_use", "idle"}),
    },
    "postal_pool_max_connections": {"role": ROLES, "node": None},
    "postal_pool_wait_seconds": {"role": ROLES, "node": None},
    "postal_pool_timeouts_total": {"role": ROLES, "node": None},
    "postal_pool_connections_opened_total": {"role": ROLES, "node": None},
    "postal_pool_connections_closed_total": {
        "role": ROLES,
        "node": None,
        "reason": frozenset(reason.value for reason in CloseReason),
    },
    "postal_read_pipeline_events_total": {
        "role": ROLES,
        "node": None,
        "event": frozenset(READ_PIPELINE_EVENT_NAMES),
    },
    "postal_read_pipeline_in_flight": {"role": ROLES, "node": None},
    "postal_cache_fills_total": {"outcome": frozenset(outcome.value for outcome in FillOutcome)},
    "postal_cache_early_refreshes_total": {
        "outcome": frozenset(outcome.value for outcome in RefreshOutcome)
    },
    "postal_cache_invalidations_total": {"outcome": frozenset(INVALIDATION_OUTCOMES)},
    "postal_cache_breaker_state": {"role": ROLES, "node": None},
    "postal_dns_lookups_total": {"outcome": frozenset(DNS_OUTCOMES)},
    "postal_replica_waits_total": {"outcome": frozenset(REPLICA_WAIT_OUTCOMES)},
    "postal_http_request_duration_seconds": {"method": None, "route": None, "status": None},
    "postal_http_requests_refused_total": {},
    "postal_http_requests_deferred_total": {},
    "postal_near_cache_reads_total": {"outcome": frozenset({"hit", "miss"})},
    "postal_near_cache_evictions_total": {"reason": frozenset({"size", "ttl", "invalidated"})},
    "postal_near_cache_flushes_total": {},
    "postal_near_cache_invalidations_received_total": {},
    "postal_near_cache_bytes": {},
    "postal_near_cache_entries": {},
    "postal_near_cache_tracking_live": {},
}

# Labels Prometheus itself attaches to every scraped series (target labels), which a rule or
# panel may match on or aggregate by.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service"})

_LITERAL_ALTERNATION = re.compile(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$")
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def parse(expression: str) -> promql_parser.Expr:
    """The syntax tree; ValueError for a syntax error or an unknown function."""
    return promql_parser.parse(expression)


def normalized(expression: str) -> str:
    """One spelling per expression (spaces, quotes and line breaks do not matter)."""
    return str(parse(expression))


def subexpressions(expression: str) -> set[str]:
    """The normalized text of every node of the expression, itself included."""
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        found.add(str(node))

    promql_parser.walk(parse(expression), visit)
    return found


def series_labels(series: str) -> Labels | None:
    """The labels a series of Postal's carries, or None for a series that is not Postal's (a
    histogram's own name included: Prometheus stores only its _bucket, _sum and _count)."""
    if series not in SERIES_NAMES or series in HISTOGRAMS:
        return None
    for histogram in HISTOGRAMS:
        for suffix in HISTOGRAM_SUFFIXES:
            if series == histogram + suffix:
                labels = dict(METRIC_LABELS[histogram])
                if suffix == "_bucket":
                    labels["le"] = None
                return labels
    return METRIC_LABELS.get(series)


def problems(expression: str) -> list[str]:
    """Everything wrong with `expression` as a query over Postal's metrics; [] when nothing."""
    try:
        tree = parse(expression)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    found: list[str] = []
    selected = _check_selectors(tree, found)
    if not selected:
        found.append("selects no series")
    _check_grouping(tree, found)
    return found


def returned_labels(expression: str) -> set[str]:
    """Labels the expression's series can carry: those of the metrics it selects, narrowed by
    the outermost aggregation's `by` when there is one."""
    tree = parse(expression)
    labels = _labels_below(tree)
    outer = _outermost_aggregation(tree)
    if outer is not None and outer.modifier is not None:
        kept = set(outer.modifier.labels)
        if outer.modifier.type == promql_parser.AggModifierType.By:
            return labels & kept
        return labels - kept
    if outer is not None:  # sum(...) with no modifier: no labels left
        return set()
    return labels


def legend_problems(expression: str, legend: str) -> list[str]:
    """Labels named in a Grafana legend (`{{role}}`) that the expression cannot return."""
    available = returned_labels(expression)
    return [
        f"legend {legend!r} names {name!r}, which {expression!r} does not return"
        for name in _LEGEND_LABEL.findall(legend)
        if name not in available
    ]


def _check_selectors(tree: promql_parser.Expr, found: list[str]) -> list[str]:
    selected: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if not isinstance(node, promql_parser.VectorSelector):
            return
        name = node.name
        if name is None:
            found.append(f"a selector without a metric name: {node}")
            return
        selected.append(name)
        labels = series_labels(name)
        if labels is None:
            kind = " (select a histogram's _bucket, _sum or _count)" if name in HISTOGRAMS else ""
            found.append(f"{name} is not one of Postal's series{kind}")
            return
        for matcher in node.matchers.matchers:
            found.extend(_matcher_problems(name, labels, matcher))

    promql_parser.walk(tree, visit)
    return selected


def _matcher_problems(series: str, labels: Labels, matcher: promql_parser.Matcher) -> list[str]:
    label = matcher.name
    if label in TARGET_LABELS:
        return []
    if label not in labels:
        return [f"{series} has no label {label!r}"]
    allowed = labels[label]
    if allowed is None:
        return []
    if matcher.op in (promql_parser.MatchOp.Re, promql_parser.MatchOp.NotRe):
        if not _LITERAL_ALTERNATION.match(matcher.value):
            return [f"{series}: regex {matcher.value!r} on {label} is not a plain alternation"]
        values: Iterable[str] = matcher.value.split("|")
    else:
        values = [matcher.value]
    return [
        f"{series}: {label}={value!r} is not one of {sorted(allowed)}"
        for value in values
        if value not in allowed
    ]


def _labels_below(tree: promql_parser.Expr) -> set[str]:
    labels: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name is not None:
            labels.update(series_labels(node.name) or {})

    promql_parser.walk(tree, visit)
    return labels | TARGET_LABELS


def _check_grouping(tree: promql_parser.Expr, found: list[str]) -> None:
    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping = node.modifier.labels
            where = f"{node.op} {node.modifier}"
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is None:
                return
            grouping = matching.labels
            where = f"{matching}"
        else:
            return
        available = _labels_below(node)
        found.extend(
            f"{where}: no metric below has the label {label!r}"
            for label in grouping
            if label not in available
        )

    promql_parser.walk(tree, visit)


def _outermost_aggregation(tree: promql_parser.Expr) -> promql_parser.AggregateExpr | None:
    """The aggregation that decides the result's labels, looking through functions and
    parentheses (histogram_quantile(0.99, sum by (le) (...)) keeps what `by` keeps, less le)."""
    node: promql_parser.Expr = tree
    while True:
        if isinstance(node, promql_parser.AggregateExpr):
            return node
        if isinstance(node, promql_parser.ParenExpr):
            node = node.expr
        elif isinstance(node, promql_parser.Call):
            vectors = [arg for arg in node.args if not isinstance(arg, promql_parser.NumberLiteral)]
            if len(vectors) != 1:
                return None
            node = vectors[0]
        elif isinstance(node, promql_parser.BinaryExpr):
            lhs = node.lhs
            node = lhs if not isinstance(lhs, promql_parser.NumberLiteral) else node.rhs
        else:
            return None

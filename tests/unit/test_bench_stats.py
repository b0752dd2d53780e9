import pytest

from postal_bench.stats import (
    COLUMNS,
    RunResult,
    median,
    parse_redis_benchmark,
    percentile,
    percentiles,
    ratio,
    summarize_profile,
    summarize_run,
    table_rows,
    target_line,
    target_met,
)

ONE_TO_HUNDRED = [float(value) for value in range(1, 101)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (1, 1.0), (50, 50.0), (90, 90.0), (99, 99.0), (99.9, 100.0), (100, 100.0)],
)
def test_percentile_is_nearest_rank_on_one_to_a_hundred(q: float, expected: float) -> None:
    assert percentile(ONE_TO_HUNDRED, q) == expected


def test_percentile_does_not_need_sorted_input_and_returns_a_measured_value() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 99) == 5.0
    assert percentile([7.0], 99.9) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0  # nearest rank: no interpolation


def test_percentiles_match_percentile() -> None:
    values = [0.3, 0.1, 0.2, 0.9, 0.5] * 300
    qs = (50, 99, 99.9)
    assert percentiles(values, qs) == [percentile(values, q) for q in qs]


@pytest.mark.parametrize("q", [-1, 100.1])
def test_percentile_refuses_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="percentile must be in"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_median_of_runs() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([7.0]) == 7.0


def test_median_is_unknown_when_any_run_is() -> None:
    assert median([]) is None
    assert median([1.0, None, 3.0]) is None


def test_ratio() -> None:
    assert ratio(150.0, 100.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None


def test_summarize_run_counts_failures_as_errors_but_keeps_their_latency() -> None:
    latencies = [0.001] * 98 + [0.5, 0.9]
    run = summarize_run(latencies, errors=2, elapsed=2.0, first_error="CacheTimeout: late")
    assert run.ops == 98
    assert run.errors == 2
    assert run.ops_per_s == 49.0
    assert run.p50 == 0.001
    assert run.p99 == 0.5
    assert run.p999 == 0.9
    assert run.worst == 0.9
    assert run.first_error == "CacheTimeout: late"


def test_summarize_run_with_no_operations() -> None:
    run = summarize_run([], errors=0, elapsed=1.0)
    assert (run.ops, run.ops_per_s, run.p50, run.p99, run.p999) == (0, 0.0, None, None, None)


def _run(ops_per_s: float, p99: float) -> RunResult:
    return RunResult(
        ops=round(ops_per_s), errors=0, elapsed=1.0, p50=p99 / 2, p99=p99, p999=p99, worst=2 * p99
    )


def test_profile_takes_medians_and_pairs_ratios_run_by_run() -> None:
    reference = [_run(1000, 0.010), _run(500, 0.020), _run(1000, 0.010)]
    # Each run does 10% more than the reference run beside it; runs drift by 2x between them.
    tuned = [_run(1100, 0.011), _run(550, 0.022), _run(1100, 0.011)]
    summary = summarize_profile("tuned", tuned, reference)
    assert summary.ops_per_s == 1100
    assert summary.p99 == pytest.approx(0.011)
    assert summary.ops_ratio == pytest.approx(1.1)
    assert summary.p99_ratio == pytest.approx(1.1)
    assert summary.errors == 0


def test_profile_sums_errors_over_runs() -> None:
    reference = [_run(100, 0.01)] * 3
    runs = [RunResult(90, errors, 1.0, 0.001, 0.01, 0.02) for errors in (0, 2, 3)]
    assert summarize_profile("before", runs, reference).errors == 5


def test_profile_without_runs_keeps_its_note() -> None:
    summary = summarize_profile("redis-benchmark", [], [_run(100, 0.01)], note="not installed")
    assert summary.ops_per_s is None
    assert summary.ops_ratio is None
    assert summary.note == "not installed"
    assert table_rows([summary]) == [("redis-benchmark", *("-" for _ in COLUMNS[1:]))]


def test_profile_runs_must_pair_with_the_reference() -> None:
    with pytest.raises(ValueError, match="2 runs but the reference has 3"):
        summarize_profile("tuned", [_run(1, 1.0)] * 2, [_run(1, 1.0)] * 3)


def test_table_rows_format_milliseconds_and_ratios() -> None:
    reference = [_run(20000, 0.004)]
    summary = summarize_profile("tuned", [_run(21000, 0.0044)], reference)
    [row] = table_rows([summary])
    assert len(row) == len(COLUMNS)
    assert row == ("tuned", "21,000", "2.20", "4.40", "4.40", "8.80", "0", "1.05x", "1.10x")


def test_target_line_and_check() -> None:
    reference = [_run(20000, 0.004)]
    good = summarize_profile("tuned", [_run(21000, 0.0044)], reference)
    slow = summarize_profile("tuned", [_run(19000, 0.004)], reference)
    assert target_line(good) == (
        "tuned vs reference: 1.05x ops/s (target >= 1.0x), p99 1.10x (target <= 1.1x)"
    )
    assert target_met(good)
    assert not target_met(slow)


CSV_OUTPUT = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"GET","103092.78","0.501","0.120","0.495","0.575","1.183","2.551"\n'
)
QUIET_OUTPUT = (
    "GET: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r"
    "GET: 100502.52 requests per second, p50=0.487 msec\n\n"
)


def test_parses_redis_benchmark_csv() -> None:
    rps, p50, p99 = parse_redis_benchmark(CSV_OUTPUT)
    assert rps == pytest.approx(103092.78)
    assert p50 == pytest.approx(0.000495)
    assert p99 == pytest.approx(0.001183)


def test_parses_old_headerless_csv() -> None:
    rps, p50, p99 = parse_redis_benchmark('"GET","81234.56"\n')
    assert rps == pytest.approx(81234.56)
    assert (p50, p99) == (None, None)


def test_parses_quiet_output() -> None:
    rps, p50, p99 = parse_redis_benchmark(QUIET_OUTPUT)
    assert rps == pytest.approx(100502.52)
    assert p50 == pytest.approx(0.000487)
    assert p99 is None


def test_refuses_output_without_a_rate() -> None:
    with pytest.raises(ValueError, match="no requests per second"):
        parse_redis_benchmark("Could not connect to Redis at 127.0.0.1:1: Connection refused\n")

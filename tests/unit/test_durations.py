import pytest

from postal.cache import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("10ns", 10e-9),
        ("0", 0.0),
        (" 20ms ", 0.02),
    ],
)
def test_parses_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "100", "2 s", "ms", "1x", "-1s", "1s2", "five"])
def test_refuses_what_go_refuses_and_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 100ms"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.1, "100ms"), (2.0, "2s"), (300.0, "5m"), (90.0, "90s"), (7200.0, "2h"), (0.0, "0s")],
)
def test_formats_the_shortest_readable_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)

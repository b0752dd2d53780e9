"""The log formats (JSON, text), the request-id stamp, and the choice between formats."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from postal.observability.logging import (
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
    known_secrets,
    request_id,
    use_json,
)
from postal.observability.redaction import Redactor
from postal.settings import SettingsError, load_settings


def record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    logger = logging.getLogger("postal.test")
    made = logger.makeRecord("postal.test", logging.WARNING, __file__, 1, message, args, None)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


@pytest.fixture
def restored_root() -> Iterator[logging.Logger]:
    """configure_logging replaces the root's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_json_line_has_the_standard_keys_then_the_fields() -> None:
    line = JsonFormatter().format(record("hello %s", "world", role="read", duration_ms=12.5))
    document = json.loads(line)
    assert list(document)[:4] == ["time", "level", "logger", "message"]
    assert document["level"] == "WARNING"
    assert document["logger"] == "postal.test"
    assert document["message"] == "hello world"
    assert document["role"] == "read"
    assert document["duration_ms"] == 12.5
    assert "request_id" not in document  # outside a request
    assert document["time"].endswith("Z")
    assert datetime.fromisoformat(document["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_a_field_never_replaces_a_standard_key_and_odd_values_become_text() -> None:
    document = json.loads(JsonFormatter().format(record("m", level="fake", blob={1, 2})))
    assert document["level"] == "WARNING"
    assert document["blob"] in ("{1, 2}", "{2, 1}")


def test_json_carries_the_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logger = logging.getLogger("postal.test")
        failed = logger.makeRecord(
            "postal.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_the_request_id_filter_stamps_the_current_request() -> None:
    stamp = RequestIdFilter()
    outside = record()
    stamp.filter(outside)
    token = request_id.set("abc-1")
    try:
        inside = record()
        stamp.filter(inside)
    finally:
        request_id.reset(token)
    assert outside.request_id is None  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(inside))["request_id"] == "abc-1"
    assert TextFormatter().format(inside).endswith("hello %s request_id=abc-1")


def test_text_keeps_the_human_line_with_fields_as_pairs() -> None:
    line = TextFormatter().format(record("slow cache operation", role="read", note="two words"))
    assert line.split(" ", 2)[2] == (
        'WARNING postal.test slow cache operation role=read note="two words"'
    )


def test_uvicorns_colour_copy_of_the_message_is_not_a_field() -> None:
    line = JsonFormatter().format(record("Started", color_message="\x1b[1mStarted\x1b[0m"))
    assert "color_message" not in json.loads(line)


def test_auto_is_json_unless_a_person_is_reading_a_terminal() -> None:
    assert use_json("auto", io.StringIO())
    assert not use_json("auto", Terminal())
    assert use_json("json", Terminal())
    assert not use_json("text", io.StringIO())


def test_uvicorns_loggers_come_out_through_the_same_handler(
    restored_root: logging.Logger,
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8000")
    logging.getLogger("postal.cache.slow").debug("below the level: not written")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["logger"] == "uvicorn.error"


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_alembics_plugin_chatter_shows_only_at_debug(
    restored_root: logging.Logger, level: str, shown: bool
) -> None:
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    logging.getLogger("alembic.runtime.plugins").info("setup plugin %s", "alembic.autogenerate")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001")
    loggers = [json.loads(line)["logger"] for line in stream.getvalue().splitlines()]
    assert loggers == ["alembic.runtime.plugins"] * shown + ["alembic.runtime.migration"]


def test_the_configured_secrets_are_masked_in_every_line(
    restored_root: logging.Logger,
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", secrets=["s3cret-token-value"], stream=stream)
    logging.getLogger("postal.test").warning("echoed %s", "s3cret-token-value")
    assert "s3cret-token-value" not in stream.getvalue()
    assert "echoed ***" in stream.getvalue()


TOKEN = "tok-0123456789abcdef0123456789abcdef"


def test_known_secrets_are_the_token_and_the_url_passwords() -> None:
    settings = load_settings(
        {
            "POSTAL_API_TOKEN": TOKEN,
            "READ_REDIS_URL": "redis://:read%40pw@127.0.0.1:6379/0",
            "WRITE_REDIS_URL": "redis://writer:write-pw@127.0.0.1:6380/0",
            "DATABASE_URL": "postgresql+asyncpg://app:db-pass@127.0.0.1/app",
        }
    )
    found = known_secrets(settings)
    assert set(found) == {TOKEN, "read%40pw", "read@pw", "write-pw", "db-pass"}
    redactor = Redactor(found)
    assert redactor.scrub("auth failed for read@pw and db-pass") == "auth failed for *** and ***"


def test_postal_log_format_is_auto_by_default_any_case_and_checked() -> None:
    assert load_settings({}).postal_log_format == "auto"
    assert load_settings({"POSTAL_LOG_FORMAT": " JSON "}).postal_log_format == "json"
    with pytest.raises(SettingsError, match="POSTAL_LOG_FORMAT='xml'"):
        load_settings({"POSTAL_LOG_FORMAT": "xml"})

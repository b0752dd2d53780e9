"""Logging set-up (JSON or text, request ids, redaction) and the slow-operation log.

`configure_logging` puts one handler on the root logger, so Postal's records and uvicorn's (its
loggers propagate to the root when `serve` passes `log_config=None`) come out alike on stderr:

- JSON lines when stderr is not a terminal (a container, a pipe, a file), for log collectors:
  `time` (ISO 8601, UTC), `level`, `logger`, `message`, `request_id` inside a request, and the
  record's structured fields (`extra=`) as keys of their own;
- on a terminal, the human line `time level logger message key=value ...`;
- `POSTAL_LOG_FORMAT=json|text` forces one (`auto`, the default, decides as above);
- with tracing on (`POSTAL_TRACING`), `trace_id` and `span_id` on each line written inside a
  span (`observability/tracing.py`).

Every line, in both formats, goes through a `Redactor` (see `redaction`) before it is written.

The formatter is ours, not python-json-logger: it is a dozen lines, and what it must decide is
Postal's anyway: which record attributes are fields (uvicorn's `color_message` is not), the
field names, and scrubbing the finished line rather than the values one by one.

The slow-operation log subscribes to the cache layer's events (see `cache.transport.events`): one
line per operation slower than the threshold, with role, command, key prefix, duration, outcome
and pool state as fields. Keys are cut to their prefix (`post:{42}` -> `post`) so the log names
the kind of data, not the data.

It logs at most `max_lines_per_second` lines, each saying how many slow operations were left
out before it: when the process is saturated every operation is slow (its duration includes the
wait for the event loop), and a line per operation would spend the CPU the process lacks on
writing warnings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

from postal.cache import CacheEvent
from postal.observability.redaction import Redactor, url_secrets

if TYPE_CHECKING:
    from postal.settings import Settings

SLOW_LOGGER = "postal.cache.slow"

LogFormat = Literal["auto", "json", "text"]

# The current request's id, set by the request-id middleware (`api.request_id`); tasks started
# during a request (a background fill) inherit it, so their lines name the request behind them.
request_id: ContextVar[str | None] = ContextVar("postal_request_id", default=None)

# What every LogRecord carries; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
    "request_id",  # added by RequestIdFilter, shown on its own
    "color_message",  # uvicorn's message with terminal colours: the message once is enough
}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record was given with `extra=`."""
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_")
    }


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the standard keys first, then the record's fields."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        document: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            document["request_id"] = rid
        for name, value in record_fields(record).items():
            document.setdefault(name, value)  # a field never overrides a standard key
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(document, default=str, ensure_ascii=False)
        return self._redactor.scrub(line)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`, the traceback on the lines below."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._redactor = redactor or Redactor()

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = record_fields(record)
        rid = getattr(record, "request_id", None)
        if rid is not None:
            fields["request_id"] = rid
        if not fields:
            return line
        return (
            line + " " + " ".join(f"{name}={_text_value(value)}" for name, value in fields.items())
        )

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.scrub(super().format(record))


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(character.isspace() or character == '"' for character in text):
        return json.dumps(text, ensure_ascii=False)  # quoted, so the pairs stay parseable
    return text


def use_json(log_format: LogFormat, stream: TextIO) -> bool:
    """JSON unless forced to text, or (auto) the stream is a terminal a person reads."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


# Loggers whose INFO lines are start-up chatter, shown only at DEBUG: Alembic 1.18 and later
# log each of its plugins as it loads them, seven lines at every `postal serve`.
CHATTY_AT_INFO = ("alembic.runtime.plugins",)


def configure_logging(
    level: str = "INFO",
    log_format: LogFormat = "auto",
    *,
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
    trace_ids: bool = False,
) -> None:
    """One handler on the root logger, writing to `stream` (stderr); `secrets` are masked in
    every line besides what the redactor's patterns catch. `trace_ids` (POSTAL_TRACING): the
    current span's `trace_id` and `span_id` on each line written in one."""
    stream = stream if stream is not None else sys.stderr
    redactor = Redactor(secrets)
    formatter = JsonFormatter(redactor) if use_json(log_format, stream) else TextFormatter(redactor)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    if trace_ids:
        from postal.observability.tracing import TraceIdFilter

        handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in CHATTY_AT_INFO:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else "WARNING"
        )


def configure_from_settings(settings: Settings) -> None:
    """`configure_logging` as Postal's settings ask, masking every secret they hold."""
    configure_logging(
        settings.postal_log_level,
        settings.postal_log_format,
        secrets=known_secrets(settings),
        trace_ids=settings.postal_tracing,
    )


def known_secrets(settings: Settings) -> list[str]:
    """The API token and the passwords in the database and Redis URLs."""
    found = [] if settings.api_token is None else [settings.api_token]
    for url in (settings.database_url, settings.read_redis_url, settings.write_redis_url):
        found.extend(url_secrets(url))
    return found


def key_prefix(key: str | None) -> str:
    """The kind of key (`post:{42}` -> `post`); "-" for a key with no prefix: it is all data."""
    if not key or ":" not in key:
        return "-"
    return key.split(":", 1)[0]


class LineBudget:
    """At most `per_second` log lines a second, a second's worth saved up (a token bucket), and
    how many were left out since the last line allowed: for lines that come once per event
    when events can come by the thousand (every operation slow under saturation, every request
    failing in an outage), where a line per event would spend the CPU that is short."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_second
        self._clock = clock
        self._allowance = per_second
        self._last = clock()
        self.suppressed = 0  # left out since the last line allowed

    def take(self) -> int | None:
        """None: leave this line out (counted). Otherwise the line may be written, and this is
        how many were left out before it (the count starts again)."""
        now = self._clock()
        self._allowance = min(self._rate, self._allowance + (now - self._last) * self._rate)
        self._last = now
        if self._allowance < 1:
            self.suppressed += 1
            return None
        self._allowance -= 1
        left_out, self.suppressed = self.suppressed, 0
        return left_out


class SlowOperationLog:
    """A cache listener that logs every operation at or above `threshold` seconds."""

    def __init__(
        self,
        threshold: float,
        logger: logging.Logger | None = None,
        *,
        max_lines_per_second: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._logger = logger or logging.getLogger(SLOW_LOGGER)
        self._budget = LineBudget(max_lines_per_second, clock)

    @property
    def suppressed(self) -> int:
        """Slow operations not logged since the last line."""
        return self._budget.suppressed

    def __call__(self, event: CacheEvent) -> None:
        if event.duration < self.threshold:
            return
        left_out = self._budget.take()
        if left_out is None:
            return
        fields = {
            "role": event.role,
            "command": event.command,
            "key_prefix": key_prefix(event.key),
            "duration_ms": round(event.duration * 1000, 3),
            "outcome": str(event.outcome),
            "pool_in_use": event.in_use,
            "pool_idle": event.idle,
        }
        if left_out:
            fields["suppressed"] = left_out  # left out since the previous line
        self._logger.warning("slow cache operation", extra=fields)

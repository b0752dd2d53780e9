"""The limits `postal serve` puts on what a client may hold of a worker, and the answers past them.

Each is a setting (docs/configuration.md, `POSTAL_HTTP_*`), read once per worker process from the
environment, as the app reads its own settings; `cli/serve_protocol.py` enforces them. An answer
is complete HTTP/1.1 bytes with a JSON body in the API's error shape and `connection: close`:
it is written by the protocol itself, before any app has seen the request.
"""

from __future__ import annotations

import functools
import http
import math
from collections.abc import Iterable
from dataclasses import dataclass

from postal.api.errors import JSON, RETRY_AFTER_SECONDS, error_body
from postal.cache import format_duration
from postal.settings import Settings, load_settings


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The numbers; their meanings and defaults are the settings' (`postal/settings.py`)."""

    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    body_min_rate: int  # bytes a second
    keep_alive_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.postal_http_max_header_bytes,
            max_headers=settings.postal_http_max_headers,
            header_timeout=settings.postal_http_header_timeout,
            body_timeout=settings.postal_http_body_timeout,
            body_min_rate=settings.postal_http_body_min_rate,
            keep_alive_timeout=settings.postal_http_keep_alive_timeout,
            max_connections=settings.postal_http_max_connections,
        )

    @property
    def body_window_bytes(self) -> int:
        """What each body window must bring: the minimum rate over the window, at least a byte
        (so a rate of 0 makes the window a plain idle timeout)."""
        return max(1, math.ceil(self.body_min_rate * self.body_timeout))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is closed, and what the client is told."""

    status: int
    code: str
    message: str
    retry_after: bool = False

    @property
    def body(self) -> bytes:
        return error_body(self.code, self.message)

    def answer(self, default_headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The whole response: uvicorn's default headers (`server`, `date`), then ours."""
        body = self.body
        phrase = http.HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {phrase}".encode("ascii")]
        lines += [name + b": " + value for name, value in default_headers]
        if self.retry_after:
            lines.append(f"retry-after: {RETRY_AFTER_SECONDS}".encode("ascii"))
        lines += [
            f"content-type: {JSON}".encode("ascii"),
            f"content-length: {len(body)}".encode("ascii"),
            b"connection: close",
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers, for an answer sent through ASGI rather than as bytes."""
        return [
            (b"content-type", JSON.encode("ascii")),
            (b"content-length", str(len(self.body)).encode("ascii")),
            (b"connection", b"close"),
        ]


@dataclass(frozen=True, slots=True)
class Refusals:
    """One `Refusal` per limit, their messages naming the configured values."""

    header_too_large: Refusal
    too_many_headers: Refusal
    header_timeout: Refusal
    body_too_slow: Refusal
    too_many_connections: Refusal

    @classmethod
    def for_limits(cls, limits: HttpLimits) -> Refusals:
        window = format_duration(limits.body_timeout)
        return cls(
            header_too_large=Refusal(
                431,
                "header_too_large",
                f"the request line and headers are larger than {limits.max_header_bytes} bytes",
            ),
            too_many_headers=Refusal(
                431, "too_many_headers", f"the request has more than {limits.max_headers} headers"
            ),
            header_timeout=Refusal(
                408,
                "header_timeout",
                "the request line and headers did not arrive within"
                f" {format_duration(limits.header_timeout)}",
            ),
            body_too_slow=Refusal(
                408,
                "body_too_slow",
                f"the request body brought fewer than {limits.body_window_bytes} bytes in"
                f" {window} (at least {limits.body_min_rate} bytes a second)",
            ),
            too_many_connections=Refusal(
                503,
                "too_many_connections",
                "this worker has too many open connections; retry shortly",
                retry_after=True,
            ),
        )


@functools.cache
def configured() -> tuple[HttpLimits, Refusals]:
    """This process's limits and answers, from the environment, read once. `postal serve` has
    checked the settings before starting its workers, which inherit its environment."""
    limits = HttpLimits.from_settings(load_settings())
    return limits, Refusals.for_limits(limits)

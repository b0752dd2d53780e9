"""The request-id middleware, as pure ASGI: kept or made, in the context, echoed, never unsafe."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from postal.api.request_id import RequestIdMiddleware, RequestIds, sane_request_id
from postal.observability.logging import JsonFormatter, RequestIdFilter, request_id

GENERATED = re.compile(r"[0-9a-f]{12}-[0-9a-f]{8}")


class Recorder:
    """An inner app that notes the request id it runs under and answers 204."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.response_headers: list[tuple[bytes, bytes]] = [(b"content-length", b"0")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(request_id.get())
        logging.getLogger("postal.test").info("inside")
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": 204, "headers": self.response_headers}
            await send(start)
            await send({"type": "http.response.body", "body": b""})


async def call(app: Any, headers: list[tuple[bytes, bytes]], kind: str = "http") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": kind, "method": "GET", "path": "/", "headers": headers}, receive, send)
    return sent


def echoed(sent: list[Message]) -> list[bytes]:
    return [value for name, value in sent[0]["headers"] if name == b"x-request-id"]


async def test_a_request_without_an_id_gets_one_made_here_and_echoed() -> None:
    inner = Recorder()
    app = RequestIdMiddleware(inner)
    first = await call(app, [(b"host", b"x")])
    second = await call(app, [])
    assert GENERATED.fullmatch(inner.seen[0] or "")
    assert inner.seen[0] != inner.seen[1]
    assert echoed(first) == [(inner.seen[0] or "").encode()]
    assert echoed(second) == [(inner.seen[1] or "").encode()]
    assert request_id.get() is None  # reset once the request is done
    assert inner.response_headers == [(b"content-length", b"0")]  # the app's list untouched


async def test_a_sane_incoming_id_is_kept() -> None:
    inner = Recorder()
    sent = await call(RequestIdMiddleware(inner), [(b"x-request-id", b"lb-7f3a:42")])
    assert inner.seen == ["lb-7f3a:42"]
    assert echoed(sent) == [b"lb-7f3a:42"]


@pytest.mark.parametrize(
    "value",
    [b"", b"a" * 65, b"has space", b"new\nline", b'quote"', b"\xff\xfe", b"<script>"],
)
async def test_an_unsafe_incoming_id_is_replaced(value: bytes) -> None:
    inner = Recorder()
    sent = await call(RequestIdMiddleware(inner), [(b"x-request-id", value)])
    assert GENERATED.fullmatch(inner.seen[0] or "")
    assert echoed(sent) == [(inner.seen[0] or "").encode()]
    assert sane_request_id(value) is None


async def test_records_logged_in_the_request_carry_its_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("postal.test")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        await call(RequestIdMiddleware(Recorder()), [(b"x-request-id", b"req-1")])
        logger.info("after")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    inside, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["message"], inside["request_id"]) == ("inside", "req-1")
    assert "request_id" not in after


async def test_other_scopes_pass_through_without_an_id() -> None:
    inner = Recorder()
    await call(RequestIdMiddleware(inner), [], kind="lifespan")
    assert inner.seen == [None]


def test_ids_from_one_maker_count_up_and_two_makers_differ() -> None:
    ids, other = RequestIds(), RequestIds()
    first, second = ids(), ids()
    assert first.split("-")[0] == second.split("-")[0]
    assert int(second.split("-")[1], 16) == int(first.split("-")[1], 16) + 1
    assert other().split("-")[0] != first.split("-")[0]

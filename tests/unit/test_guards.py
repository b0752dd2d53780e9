"""WriteGuard: the token and the size limit, checked before a write's body is read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message

from postal.api.errors import RequestTooLarge
from postal.api.guards import WriteGuard


class Recorder:
    def __init__(self) -> None:
        self.called = False
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break


async def call(
    guard: WriteGuard,
    method: str,
    headers: dict[str, str],
    chunks: list[bytes],
    path: str = "/api/v1/posts",
) -> list[Message]:
    sent: list[Message] = []
    queue = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]

    async def receive() -> Message:
        return queue.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await guard(scope, receive, send)
    return sent


async def test_reads_pass_without_a_token() -> None:
    app = Recorder()
    sent = await call(WriteGuard(app, token="s3cret", max_request_bytes=10), "GET", {}, [])
    assert app.called
    assert sent == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer s3cret"}, None),
    ],
    ids=["none", "wrong", "right"],
)
async def test_guarded_reads_need_the_token(headers: dict[str, str], status: int | None) -> None:
    app = Recorder()
    guard = WriteGuard(
        app, token="s3cret", max_request_bytes=10, guarded_reads=frozenset({"/status"})
    )
    sent = await call(guard, "GET", headers, [], path="/status")
    assert app.called is (status is None)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == (
        [] if status is None else [status]
    )
    assert (await call(guard, "GET", {}, [], path="/healthz")) == []  # the others stay open


async def test_without_a_token_no_read_is_guarded() -> None:
    app = Recorder()
    guard = WriteGuard(app, token=None, max_request_bytes=10, guarded_reads=frozenset({"/status"}))
    assert await call(guard, "GET", {}, [], path="/status") == []
    assert app.called


async def test_writes_without_the_right_token_are_401_and_never_reach_the_app() -> None:
    for headers in [{}, {"Authorization": "Bearer nope"}, {"Authorization": "bearer"}]:
        app = Recorder()
        guard = WriteGuard(app, token="s3cret", max_request_bytes=10)
        sent = await call(guard, "POST", headers, [b"{}"])
        assert not app.called
        assert sent[0]["status"] == 401
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["error"]["code"] == "unauthorized"
        assert b"s3cret" not in sent[1]["body"]


async def test_the_right_token_passes_in_any_scheme_case() -> None:
    app = Recorder()
    headers = {"Authorization": "bearer s3cret"}
    await call(WriteGuard(app, token="s3cret", max_request_bytes=10), "PUT", headers, [b"{}"])
    assert app.called
    assert app.body == b"{}"


async def test_no_token_configured_means_writes_are_open() -> None:
    app = Recorder()
    await call(WriteGuard(app, token=None, max_request_bytes=10), "DELETE", {}, [])
    assert app.called


async def test_declared_oversize_is_413_unread() -> None:
    app = Recorder()
    headers = {"Content-Length": "11"}
    guard = WriteGuard(app, token=None, max_request_bytes=10)
    sent = await call(guard, "POST", headers, [b"x" * 11])
    assert not app.called
    assert sent[0]["status"] == 413


async def test_streamed_oversize_raises_request_too_large() -> None:
    app = Recorder()
    guard = WriteGuard(app, token=None, max_request_bytes=10)
    with pytest.raises(RequestTooLarge) as raised:
        await call(guard, "POST", {}, [b"x" * 6, b"x" * 6])
    assert raised.value.status_code == 413

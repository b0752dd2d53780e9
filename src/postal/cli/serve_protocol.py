"""The HTTP protocol `postal serve` runs: uvicorn's httptools protocol, bounded (`serve_limits`).

What it adds, per connection, each a setting:

- the request line and headers (the head) are cut at `POSTAL_HTTP_MAX_HEADER_BYTES`: 431, close;
- a head must arrive within `POSTAL_HTTP_HEADER_TIMEOUT` of its first byte: 408, close;
- a request has at most `POSTAL_HTTP_MAX_HEADERS` header fields: 431, close (each lookup in
  the app scans them all);
- while a body is awaited, each `POSTAL_HTTP_BODY_TIMEOUT` must bring
  `POSTAL_HTTP_BODY_MIN_RATE` x that many bytes: else 408, close. The clock stops while the
  server is not reading (uvicorn pauses a body the app has not taken yet past 64 KiB) or has
  not yet asked for the body (`Expect: 100-continue`);
- a connection with no request on it is closed after `POSTAL_HTTP_KEEP_ALIVE_TIMEOUT`: uvicorn's
  own keep-alive timer, which it arms only after a response, so it is armed here for a new
  connection too;
- a worker holds at most `POSTAL_HTTP_MAX_CONNECTIONS` connections: one more gets 503 with
  `Retry-After` at once and is closed.

A refusal is answered only where HTTP leaves room: when an earlier request on the connection is
still being answered, that answer is finished and the connection then closed, unread; a body
that stalls after its request was answered is cut without a word.

The head is counted per read before it reaches the parser, and a read that would take it past
the cap is fed only up to the cap, so one head never costs more than the cap in the parser's
buffers (httptools keeps a header field being received in a bytes object of its own). When a
head begins in the same read as the previous request ends (pipelining), the parser does not say
where: the whole read counts against that head, and reads are fed at most a cap at a time. The
in-flight bound is not here: it is the app's (`api/admission.py`), because it answers after the
route is known.

Why by hand: httptools (llhttp) has no limit on a head's size and uvicorn sets none for it (its
`h11_max_incomplete_event_size` is for its pure-Python h11 protocol only); uvicorn times out a
connection only once it is idle after a response, never a head or a body in progress, nor a new
connection that sends nothing; its `limit_concurrency` counts requests and connections together,
answers in plain text, and leaves connections that send nothing open. granian bounds a head by
its read buffer and times out its read, hypercorn bounds it and has an idle read timeout, but
neither has a minimum rate for a body, and moving servers would change how `postal serve` runs
its workers and shuts down. Its cost on the hot path is measured in docs/operations.md (HTTP
limits): no timer is armed for a request that arrives in one read, and the state lives in one
slotted attribute (`Bounds`).

It leans on uvicorn 0.55's internals: the attributes and methods of `HttpToolsProtocol` and of
its `RequestResponseCycle` named in docs/private-names.md, where the version is checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from postal.cli.serve_limits import HttpLimits, Refusal, Refusals, configured

UVICORN_CHECKED = "0.55.0"  # the version whose internals this was written against

# Where the connection's current request is, as the parser has seen it.
IDLE = 0  # between requests: no byte of the next one yet
HEAD = 1  # its request line and headers are arriving
BODY = 2  # its headers are complete, its body is not
CLOSING = 3  # refused or gone: what else arrives is dropped

# uvicorn's own methods, called straight rather than through super(): these run for every
# request, and each super() costs about 0.1 us, as much as the checks around it.
feed = HttpToolsProtocol.data_received
headers_complete = HttpToolsProtocol.on_headers_complete
message_complete = HttpToolsProtocol.on_message_complete


class Bounds:
    """A connection's state for its limits, kept out of the protocol's own attributes: uvicorn's
    protocol has 28, and CPython (3.11) gives up its fast attribute access for instances of
    more than 30 (measured here: 9 more attributes cost 0.26 us a request, one none)."""

    __slots__ = (
        "body_bytes",
        "body_mark",
        "body_timer",
        "head_bytes",
        "head_timer",
        "limits",
        "max_header_bytes",
        "phase",
        "refusals",
    )

    def __init__(self, limits: HttpLimits, refusals: Refusals) -> None:
        self.limits = limits
        self.refusals = refusals
        self.max_header_bytes = limits.max_header_bytes
        self.phase = IDLE
        self.head_bytes = 0  # of the head being received
        self.body_bytes = 0  # received while a body was awaited, on this connection
        self.body_mark = 0  # body_bytes when the current body window began
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def stop_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.bounds = Bounds(*configured())
        # uvicorn's keep-alive timer reads this; it types it int, call_later takes a float.
        self.timeout_keep_alive = self.bounds.limits.keep_alive_timeout  # type: ignore[assignment]

    # -- connections ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        bounds = self.bounds
        if len(self.connections) > bounds.limits.max_connections:
            self.refuse(bounds.refusals.too_many_connections)
            return
        # uvicorn arms its keep-alive timer only after a response: a connection that never
        # sends a byte would otherwise stay open for good.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        bounds = self.bounds
        bounds.phase = CLOSING
        bounds.stop_head_timer()
        bounds.stop_body_timer()
        super().connection_lost(exc)

    # -- bytes in ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        bounds = self.bounds
        phase = bounds.phase
        if phase == BODY:
            if len(data) > bounds.max_header_bytes:  # a head may begin in it: see feed_in_pieces
                self.feed_in_pieces(data)
                return
            bounds.body_bytes += len(data)
            feed(self, data)
        elif phase == CLOSING:
            return
        else:
            head_bytes = bounds.head_bytes + len(data)
            if head_bytes > bounds.max_header_bytes:
                self.feed_in_pieces(data)
                return
            bounds.head_bytes = head_bytes
            bounds.phase = HEAD  # the parser moves it on when the head ends within `data`
            feed(self, data)
        # A request that arrived whole in this read has left the phase IDLE: no timer. Unless
        # another began after it (uvicorn gives each request a new scope at its first byte, and
        # hands it to the request's cycle once the head is complete): where in the read is not
        # known, so the whole read counts against that head (only pipelining clients do this).
        phase = bounds.phase
        if phase == IDLE and self.scope is not self.cycle.scope:
            bounds.phase = phase = HEAD
            bounds.head_bytes = len(data)
        if phase == HEAD:
            if bounds.head_timer is None:
                bounds.head_timer = self.loop.call_later(
                    bounds.limits.header_timeout, self.head_timed_out
                )
        elif phase == BODY and bounds.body_timer is None:
            self.start_body_window()

    def feed_in_pieces(self, data: bytes) -> None:
        """A read longer than the head has room for: fed a piece at a time, each no longer than
        that room (or than the cap, in a body: a head may begin after the body ends, and the
        whole piece then counts against it), so that a head never goes past the cap: once it
        has no room left, 431."""
        bounds = self.bounds
        cap = bounds.max_header_bytes
        view = memoryview(data)
        start = 0
        while start < len(view):
            if bounds.phase == CLOSING or self.transport.is_closing():
                return
            room = cap if bounds.phase == BODY else cap - bounds.head_bytes
            if room == 0:
                self.refuse(bounds.refusals.header_too_large)
                return
            piece = view[start : start + room]
            start += len(piece)
            self.data_received(piece)  # type: ignore[arg-type]  # httptools takes a memoryview

    # -- the parser's callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        bounds = self.bounds
        bounds.phase = BODY
        bounds.head_bytes = 0
        if bounds.head_timer is not None:
            bounds.stop_head_timer()
        if len(self.headers) <= bounds.limits.max_headers:
            headers_complete(self)
            return
        # uvicorn runs `self.app` for the request: run the refusal instead, for this one.
        self.app = self.too_many_headers
        try:
            headers_complete(self)
        finally:
            self.app = self.config.loaded_app

    def on_message_complete(self) -> None:
        bounds = self.bounds
        bounds.phase = IDLE
        if bounds.body_timer is not None:
            bounds.stop_body_timer()
        message_complete(self)

    async def too_many_headers(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI app answering a request with too many headers: 431, then uvicorn closes."""
        refusal = self.bounds.refusals.too_many_headers
        await send(
            {"type": "http.response.start", "status": refusal.status, "headers": refusal.headers()}
        )
        await send({"type": "http.response.body", "body": refusal.body})

    # -- timers --------------------------------------------------------------------------------

    def head_timed_out(self) -> None:
        bounds = self.bounds
        bounds.head_timer = None
        if bounds.phase == HEAD:
            self.refuse(bounds.refusals.header_timeout)

    def start_body_window(self) -> None:
        bounds = self.bounds
        bounds.body_mark = bounds.body_bytes
        bounds.body_timer = self.loop.call_later(bounds.limits.body_timeout, self.body_window_ended)

    def body_window_ended(self) -> None:
        bounds = self.bounds
        bounds.body_timer = None
        if bounds.phase != BODY:
            return
        # Not the client's doing: the server stopped reading, or has not asked for the body.
        waiting_on_us = self.flow.read_paused or self.cycle.waiting_for_100_continue
        brought = bounds.body_bytes - bounds.body_mark
        if waiting_on_us or brought >= bounds.limits.body_window_bytes:
            self.start_body_window()
        else:
            self.refuse(bounds.refusals.body_too_slow)

    # -- refusing ------------------------------------------------------------------------------

    def refuse(self, refusal: Refusal) -> None:
        """Close the connection for `refusal`, answering it where HTTP leaves room."""
        bounds = self.bounds
        awaited_body = bounds.phase == BODY
        bounds.phase = CLOSING
        bounds.stop_head_timer()
        bounds.stop_body_timer()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle  # the last request whose headers arrived, if any
        if awaited_body:
            # `cycle` is the request whose body stalled; unanswered, it gets the refusal, and
            # its app, waiting for the body, learns that the client is gone.
            if not cycle.response_started:
                cycle.disconnected = True
                cycle.message_event.set()
                transport.write(refusal.answer(self.server_state.default_headers))
            transport.close()
        elif cycle is None or cycle.response_complete:
            transport.write(refusal.answer(self.server_state.default_headers))
            transport.close()
        else:
            # An earlier request is still being answered: finish that answer, then close.
            cycle.keep_alive = False
            self.flow.pause_reading()

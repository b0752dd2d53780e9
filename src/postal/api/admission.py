"""Admission control: a bound on the HTTP requests a worker has in flight, and the fast refusal.

Under overload the worst move is to make each request more expensive, and queueing only moves
the wait: a request admitted past the point where the worker keeps up waits behind all the others
(for the loop, the Redis pool, the database pool). So each worker counts the HTTP requests it is
answering, and one over `POSTAL_MAX_IN_FLIGHT` is answered at once, its body unread: 503,
`Retry-After: 1`, `{"error": {"code": "overloaded", ...}}`, and the request id; a balancer or a
client can take it to another pod. The count is a plain integer on the outermost layer
(`FastReads`, `api/fast_reads.py`): one event loop per worker, so no lock, and no layer of its
own (a layer costs a coroutine per request; the hot path pays one comparison, one increment and
one decrement). Lifespan and websocket scopes are not counted.

`/healthz`, `/readyz` and `/metrics` are neither counted nor refused: a busy pod is still alive
and still ready, and a probe that failed because of the load would have Kubernetes restart it or
take it out of the Service, moving its load onto the others (which then fail the same way); the
scrape is how the overload is seen at all.

Why by hand: uvicorn's `--limit-concurrency` (uvicorn 0.55, `protocols/http/httptools_impl.py`
and `h11_impl.py`) refuses when `len(server_state.connections)` or `len(server_state.tasks)`
reaches the limit, so idle keep-alive connections count against it (a balancer's pool of open
connections can exhaust it with nothing in flight), and it answers before the app runs with
`flow_control.service_unavailable`: a plain-text `Service Unavailable` with `Connection: close`
and no Retry-After, probes and `/metrics` included, logging a warning for every refusal.
Starlette has no such limit.
"""

from __future__ import annotations

from starlette.types import Send

from postal.api.errors import JSON, RETRY_AFTER_SECONDS, error_body
from postal.api.request_id import HEADER as REQUEST_ID_HEADER

# Exact paths (the operational routes in `routes/ops.py`), never counted nor refused.
UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CODE = "overloaded"
BODY = error_body(CODE, "this worker has too many requests in flight; retry shortly")
# The headers Starlette's Response would send for `error_response(503, ..., headers=...)`, in its
# order; the request id is added after them, as for every other answer.
HEADERS = (
    (b"retry-after", str(RETRY_AFTER_SECONDS).encode("ascii")),
    (b"content-length", str(len(BODY)).encode("ascii")),
    (b"content-type", JSON.encode("ascii")),
)


async def refuse(send: Send, request_id: bytes) -> None:
    """Send the refusal: prepared bytes, no Response object, nothing logged (under overload a
    line per refusal would spend the CPU that is short; `postal_http_requests_refused_total`
    counts them)."""
    headers = [*HEADERS, (REQUEST_ID_HEADER, request_id)]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})

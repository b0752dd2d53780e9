"""The answer to `GET /api/v1/posts/{id}`, decided in one place for both of its entrances.

`api/fast_reads.py` answers the route before FastAPI's stack sees the request, and the Starlette
route in `routes/reads.py` answers what reaches it (HEAD, and a GET when the fast lane is not in
front). Both call `read_answer` with the post's entry and the request's raw headers, and send
what it returns, so the two cannot drift apart: same status, same headers in the same order,
same body. What it does not decide is the request id, which the fast lane appends and the
request-id middleware appends for the route.

It lives in `api/`, not `posts/`, because it is translation to HTTP: status codes, header names,
If-None-Match's weak comparison, the error shape. The rules it applies were decided in `posts/`
when the entry was made (its status, its ETag, its body).

Pure: no I/O, no clock, nothing of the request but its headers. It runs on every cache hit, so
the answer is a plain tuple, and its headers a new list of ASGI header pairs that the caller may
append to and send as it is; a NamedTuple or a Response object would cost more than the
function.
"""

from __future__ import annotations

from collections.abc import Iterable

from postal.api.errors import error_body
from postal.posts.entries import Entry
from postal.posts.errors import PostNotFound

Header = tuple[bytes, bytes]
Answer = tuple[int, list[Header], bytes]  # status, headers, body

_JSON: Header = (b"content-type", b"application/json")
# Every successful read may be stored by the client or a proxy, and must be revalidated before
# each use (a 304 when unchanged): a max-age would let them serve a post after a write that
# returned, which the cache itself never does (docs/api.md, "Caching by clients").
REVALIDATE = "no-cache"
_REVALIDATE: Header = (b"cache-control", REVALIDATE.encode())
_IF_NONE_MATCH = b"if-none-match"


def read_answer(post_id: int, entry: Entry, request_headers: Iterable[Header]) -> Answer:
    """The answer for `entry` (the post `post_id`, or its negative entry), given the request's
    headers as ASGI gives them (lower-case names): 200 with the body and its ETag; 304 with the
    ETag alone when any If-None-Match line matches it (both with `Cache-Control: no-cache`); 404
    in the error shape, as every route sends it. The headers keep
    the order each answer has always been sent in."""
    if not entry.found:
        body = error_body("post_not_found", str(PostNotFound(post_id)))
        return 404, [(b"content-length", b"%d" % len(body)), _JSON], body
    assert entry.etag is not None
    etag: Header = (b"etag", entry.etag.encode())
    for name, value in request_headers:
        if name == _IF_NONE_MATCH and etag_matches(value.decode("latin-1"), entry.etag):
            return 304, [etag, _REVALIDATE], b""
    body = entry.body
    return 200, [_JSON, (b"content-length", b"%d" % len(body)), etag, _REVALIDATE], body


def etag_matches(if_none_match: str, tag: str) -> bool:
    """If-None-Match uses the weak comparison: `W/"v3"` matches `"v3"`; `*` matches any tag."""
    candidates = (part.strip().removeprefix("W/") for part in if_none_match.split(","))
    return any(candidate in ("*", tag) for candidate in candidates)

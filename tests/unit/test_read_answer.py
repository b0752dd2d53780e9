"""`read_answer`: the one answer of `GET /api/v1/posts/{id}`, for the fast lane and the route."""

from __future__ import annotations

import json

import pytest

from postal.api.errors import error_response
from postal.api.read_answer import etag_matches, read_answer
from postal.posts.entries import NOT_FOUND, Entry
from postal.posts.errors import PostNotFound

BODY = '{"id":42,"title":"Grüße"}'.encode()
POST = Entry(200, '"v3"', BODY)


def test_a_post_is_200_with_its_body_as_it_is_and_its_etag() -> None:
    status, headers, body = read_answer(42, POST, [(b"accept", b"*/*")])
    assert status == 200
    assert body is BODY
    assert headers == [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"etag", b'"v3"'),
        (b"cache-control", b"no-cache"),
    ]


@pytest.mark.parametrize(
    "if_none_match",
    ['"v3"', 'W/"v3"', ' "v3" ', '"v1", "v3"', '"v1",W/"v3"', "*", '"v1", *'],
)
def test_a_matching_if_none_match_is_304_with_the_etag_and_no_body(if_none_match: str) -> None:
    request = [(b"accept", b"*/*"), (b"if-none-match", if_none_match.encode())]
    expected = [(b"etag", b'"v3"'), (b"cache-control", b"no-cache")]
    assert read_answer(42, POST, request) == (304, expected, b"")


@pytest.mark.parametrize("if_none_match", ['"v2"', '"v33"', 'W/"v2"', '"v1", "v2"', "v3", ""])
def test_an_if_none_match_that_does_not_match_is_200(if_none_match: str) -> None:
    status, _, body = read_answer(42, POST, [(b"if-none-match", if_none_match.encode())])
    assert (status, body) == (200, BODY)


def test_every_if_none_match_line_counts() -> None:
    request = [(b"if-none-match", b'"v1"'), (b"if-none-match", b'"v3"')]
    assert read_answer(42, POST, request)[0] == 304


def test_other_conditional_headers_are_not_if_none_match() -> None:
    request = [(b"if-match", b'"v3"'), (b"if-modified-since", b"Sat, 28 Nov 2026 16:00:00 GMT")]
    assert read_answer(42, POST, request)[0] == 200


def test_a_missing_post_is_404_in_the_error_shape() -> None:
    status, headers, body = read_answer(42, NOT_FOUND, [])
    assert status == 404
    assert json.loads(body) == {
        "error": {"code": "post_not_found", "message": "post 42 does not exist"}
    }
    assert headers == [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]


def test_a_missing_post_is_404_whatever_the_if_none_match() -> None:
    assert read_answer(42, NOT_FOUND, [(b"if-none-match", b"*")])[0] == 404


def test_the_404_is_the_one_every_route_sends_for_a_missing_post() -> None:
    status, headers, body = read_answer(42, NOT_FOUND, [])
    elsewhere = error_response(404, "post_not_found", str(PostNotFound(42)))
    assert (status, headers, body) == (elsewhere.status_code, elsewhere.raw_headers, elsewhere.body)


def test_each_answer_has_headers_of_its_own_for_the_caller_to_extend() -> None:
    first = read_answer(42, POST, [])
    first[1].append((b"x-request-id", b"a"))
    assert (b"x-request-id", b"a") not in read_answer(42, POST, [])[1]


def test_etag_matching_is_weak_and_star_matches_anything() -> None:
    assert etag_matches('W/"v3"', '"v3"')
    assert etag_matches("*", '"v9"')
    assert not etag_matches('"v3"', '"v4"')

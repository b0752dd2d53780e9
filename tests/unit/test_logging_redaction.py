"""The redaction safety net: what looks like a credential is masked, the rest is left alone."""

from __future__ import annotations

import json

import pytest

from postal.observability.redaction import Redactor, url_secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dial redis://:hunter2@10.0.0.1:6379/0 failed",
            "dial redis://:***@10.0.0.1:6379/0 failed",
        ),
        ("rediss://app:p/a:ss@cache:6380", "rediss://app:***@cache:6380"),
        ("'postgresql+asyncpg://u:pw@db/x'", "'postgresql+asyncpg://u:***@db/x'"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("header bearer XYZ, next", "header bearer ***, next"),
        ("CONFIG SET requirepass s3cr3t", "CONFIG SET requirepass ***"),
        ("requirepass=s3cr3t password: hunter2", "requirepass=*** password: ***"),
        ('{"token": "abc123", "n": 1}', '{"token": "***", "n": 1}'),
        ("POSTAL_API_TOKEN=abc123", "POSTAL_API_TOKEN=***"),
    ],
)
def test_credential_shapes_are_masked(text: str, expected: str) -> None:
    assert Redactor().scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/v1/posts/42 200",
        "redis://127.0.0.1:6379/0",  # no user information
        "redis://:***@127.0.0.1:6379/0",  # already masked: unchanged
        "slow cache operation role=read key_prefix=post duration_ms=12.0 suppressed=3",
        "POSTAL_API_TOKEN is not set: writes are open to anyone on this machine",
    ],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert Redactor().scrub(text) == text


def test_known_secrets_are_masked_anywhere_in_either_spelling() -> None:
    secret = 'we"ird\\pässword'
    redactor = Redactor([secret, None, "short"])
    line = json.dumps({"message": f"echo {secret}"}, ensure_ascii=False)
    assert secret not in redactor.scrub(f"plain {secret} text")
    assert json.loads(redactor.scrub(line)) == {"message": "echo ***"}
    ascii_line = json.dumps({"message": f"echo {secret}"})  # \u00e4 and \" escapes
    assert json.loads(redactor.scrub(ascii_line)) == {"message": "echo ***"}
    assert redactor.scrub("a short word") == "a short word"  # too short to mask literally


def test_url_secrets_gives_the_password_as_written_and_decoded() -> None:
    assert url_secrets("redis://:p%40ss@h:6379/0") == ["p%40ss", "p@ss"]
    assert url_secrets("redis://user:pw@h") == ["pw"]
    assert url_secrets("redis://user@h") == []
    assert url_secrets("redis://h:6379") == []
    assert url_secrets(None) == []
    assert url_secrets("redis://:pw@h:notaport") == ["pw"]  # malformed: still found

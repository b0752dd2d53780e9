"""The redaction safety net: what looks like a credential is masked, the rest is left alone."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap

import pytest

from postal.cache import mask_url
from postal.observability.redaction import Redactor, mask_url_passwords, url_secrets


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
    assert redactor.scrub("a short word") == "a *** word"  # however short


@pytest.mark.parametrize("secret", ["x", "pw", "12345"])
def test_a_secret_is_masked_however_short(secret: str) -> None:
    """A Redis password of one to five characters used to be left alone, as masking it would
    mask ordinary words: now unreadable lines are preferred to a leaked password."""
    line = f"AUTH failed with {secret}"
    assert secret not in Redactor([secret]).scrub(line).removeprefix("AUTH failed with")


# The expression `mask_url_passwords` replaced: a reference for what it must still mask. It is
# quadratic on some inputs, so it only ever sees short strings here.
QUADRATIC_URL_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)\S*?(?=@[^\s@\"']*(?:[\s\"']|$))"
)


def test_url_passwords_are_masked_as_the_old_expression_masked_them() -> None:
    """Every string of up to 14 pieces of an alphabet made of what URLs are built from, 100,000
    drawn at random: the linear scan masks exactly what the expression did."""
    pieces = [*"ab1:/@ \"'+.-_é", "://", "://u:p@h", "redis://", '\\"']
    rng = random.Random(17)
    for _ in range(100_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        expected = QUADRATIC_URL_USERINFO.sub(lambda m: m["head"] + "***", text)
        assert mask_url_passwords(text) == expected, text


# What made the old expression (and would make any backtracking one) take time quadratic in the
# line: 16 KB of `a://b:` took 0.37 s, 4x longer per doubling, so a 4 MiB line would take hours.
ADVERSARIAL = ["a://b:", "a://b:@", "a://", "x" * 50 + "://", "a://b:c@d@", "token ", "bearer "]
CPU_SECONDS = 20  # the child's whole CPU budget; linear, the lines below take about 2 s here


def test_scrubbing_is_linear_even_on_adversarial_lines() -> None:
    """Each adversarial line of 4 MiB is scrubbed in a child process whose CPU time is capped by
    the kernel (RLIMIT_CPU, SIGXCPU past it): CPU seconds, not wall-clock time, so other load on
    the machine does not count, and the bound is hundreds of times what a quadratic scan needs
    on 16 KB times 65,536 (16 KB -> 4 MiB is 8 doublings)."""
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, ({CPU_SECONDS}, {CPU_SECONDS}))
        from postal.observability.redaction import Redactor
        redactor = Redactor(["s3cret"])
        for unit in {ADVERSARIAL!r}:
            line = unit * (4 * 1024 * 1024 // len(unit))
            assert "s3cret" not in redactor.scrub(line + " s3cret")
        print("scrubbed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=10 * CPU_SECONDS
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.strip() == "scrubbed"


def test_url_secrets_gives_the_password_as_written_and_decoded() -> None:
    assert url_secrets("redis://:p%40ss@h:6379/0") == ["p%40ss", "p@ss"]
    assert url_secrets("redis://user:pw@h") == ["pw"]
    assert url_secrets("redis://user@h") == []
    assert url_secrets("redis://h:6379") == []
    assert url_secrets(None) == []
    assert url_secrets("redis://:pw@h:notaport") == ["pw"]  # malformed: still found


# -- passwords in a URL's query string, and secrets in a repr --------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # redis-py and SQLAlchemy (asyncpg) both log in with a `password` query parameter
        ("redis://cache:6379/0?password=hunter22", "redis://cache:6379/0?password=***"),
        (
            "rediss://cache:6380/1?ssl_cert_reqs=none&password=p%40ss&db=1",
            "rediss://cache:6380/1?ssl_cert_reqs=none&password=***&db=1",
        ),
        (
            "postgresql+asyncpg://app@db/posts?Password=hunter22#frag",
            "postgresql+asyncpg://app@db/posts?Password=***#frag",
        ),
        (
            "postgresql://app:pw@db/posts?sslpassword=keypass&sslmode=require",
            "postgresql://app:***@db/posts?sslpassword=***&sslmode=require",
        ),
        ("redis://cache:6379/0?protocol=3", "redis://cache:6379/0?protocol=3"),  # nothing secret
    ],
)
def test_mask_url_masks_a_password_given_as_a_query_parameter(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_url_secrets_finds_a_password_given_as_a_query_parameter() -> None:
    assert url_secrets("redis://cache:6379/0?password=p%40ss+word") == sorted(
        {"p%40ss+word", "p@ss+word", "p@ss word"}  # as written, percent- and form-decoded
    )
    assert url_secrets("postgresql://u:one@db/x?sslpassword=two") == ["one", "two"]
    assert url_secrets("redis://cache:6379/0?protocol=3") == []


def test_a_known_secret_is_masked_in_a_repr_too() -> None:
    """A password with a backslash or quotes is spelled differently by repr(), and again once
    that repr is inside a JSON line: every spelling is masked."""
    secret = "Pa\\ss'w\"0rd"
    redactor = Redactor([secret])
    for text in (f"failed: {secret!r}", f"failed: {(secret, 1)!r}"):
        assert "0rd" not in redactor.scrub(text), redactor.scrub(text)
        line = json.dumps({"message": text})
        assert "0rd" not in redactor.scrub(line), redactor.scrub(line)
        assert json.loads(redactor.scrub(line))["message"].startswith("failed: ")


def test_a_url_password_holding_an_at_sign_is_masked_whole() -> None:
    """An unescaped `@` in an unknown URL's password: everything up to the last `@` goes."""
    line = json.dumps({"message": "dial redis://:s3c@r3t@cache:6379/0 failed", "n": 1})
    scrubbed = Redactor().scrub(line)
    assert "r3t" not in scrubbed
    assert json.loads(scrubbed) == {"message": "dial redis://:***@cache:6379/0 failed", "n": 1}


def test_lines_without_a_credential_word_are_scrubbed_as_the_patterns_would() -> None:
    """The word check before `_BEARER` and `_PAIR` only skips what they could not match: over
    random lines built of credential words in any case, separators, other words and non-ASCII
    lookalikes (the long s, the Kelvin sign, dotless i), the result is the patterns' own."""
    rng = random.Random(7)
    pieces = [
        "Bearer", "bEaReR", "PASSWORD", "passwd", "Secret", "tOkEn", "requirepass",
        "MasterAuth", "ſecret", "toKen", "requıre", "=", ": ", " ", '"', "'", ",", ";",
        "abc", "x1y2", "/api/v1/posts/1", "?q=", "é", "\n",
    ]  # fmt: skip
    redactor = Redactor()
    for _ in range(20_000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        # Non-ASCII text always runs both patterns: the same line with a non-ASCII line after
        # it (a comma, which no masked value holds or starts with, ends them) is the reference.
        expected = redactor.scrub(line + "\n,é")[: -len("\n,é")]
        assert redactor.scrub(line) == expected, line

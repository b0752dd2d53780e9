"""The OpenAPI document against what the service sends: schemathesis against `postal serve`.

A real process on a free loopback port, on this session's PostgreSQL and the test Redis, with a
token (so the bearer scheme is exercised) and POSTAL_DOCS=on. schemathesis reads /openapi.json,
generates requests from it (examples, boundary values, random ones, and sequences that follow
what a create returned) and checks every answer: its status is documented, its content type
and headers are, its body matches the documented schema; no 5xx; invalid requests are refused;
a deleted post is gone; a write without the token is refused.

Four checks are left out, each for a behaviour the document states but JSON Schema cannot:
- `positive_data_acceptance` expects every request the schema allows to succeed, but some are
  refused for what no schema can say: a cursor this deployment did not give out (422), an
  If-Match that names no version (412), a CSV file with no header row (422), a title of spaces
  only (stripped, then too short);
- `negative_data_rejection` expects every request the schema forbids to be refused, but titles,
  authors and tags are stripped of surrounding whitespace before their length is checked, so
  `"  " + 100 characters` is an author the schema's maxLength forbids and the service takes;
- `unsupported_method` and `allow_header_conformance` expect `PUT /api/v1/posts/import` to be
  405 with `Allow: POST`, but that is also the path of a post whose id is `import`: PUT is 422
  `invalid_id`, as for `/api/v1/posts/abc`, and the Allow of a 405 there names the methods of
  both paths (tests/integration/test_posts_api.py checks Allow on unambiguous paths).
Those answers are documented, and the other checks still hold their bodies to the schema.

The run is bounded: a fixed number of examples per operation, a time budget, one worker, a
fixed seed (a failure reproduces), and a process timeout. The second test shows the check can
fail: the same run over a document whose post schema is wrong must report it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import Served, serving

TOKEN = "schemathesis-token-0123456789abcdefghijkl"
AUTH = f"Authorization: Bearer {TOKEN}"
SEED = "20261206"
CHECKS_LEFT_OUT = ",".join(
    (
        "positive_data_acceptance",
        "negative_data_rejection",
        "unsupported_method",
        "allow_header_conformance",
    )
)


@pytest.fixture
def served(
    tmp_path: Path, clean_database: str, redis_url: str, key_prefix: str
) -> Iterator[Served]:
    with serving(
        tmp_path,
        DATABASE_URL=clean_database,
        READ_REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTAL_API_TOKEN=TOKEN,
        POSTAL_DOCS="on",
    ) as served:
        yield served


def schemathesis(location: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`st run LOCATION ARGS`, bounded, its output captured (and shown when a test fails)."""
    command = [
        str(Path(sys.executable).with_name("st")), "run", location, "-H", AUTH,
        "--workers", "1", "--seed", SEED, "--max-failures", "20", *args,
    ]  # fmt: skip
    environment = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=180
    )
    print(result.stdout, result.stderr)
    return result


def test_schemathesis_finds_nothing(served: Served, tmp_path: Path) -> None:
    result = schemathesis(
        f"{served.base}/openapi.json",
        "--checks", "all", "--exclude-checks", CHECKS_LEFT_OUT,
        "--max-examples", "10", "--max-time", "40",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Tested: 13" in result.stdout  # every operation was exercised
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts is not None, result.stdout[-4000:]
    generated, passed = map(int, counts.groups())
    assert passed == generated >= 100  # nothing found, over enough cases to mean something


def test_schemathesis_reports_a_wrong_response_schema(served: Served, tmp_path: Path) -> None:
    document = httpx.get(f"{served.base}/openapi.json").json()
    document["components"]["schemas"]["PostOut"]["properties"]["title"] = {"type": "integer"}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(document))
    created = httpx.post(
        f"{served.base}/api/v1/posts",
        json={"title": "t", "body": "b", "author": "a"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert created.status_code == 201
    result = schemathesis(
        str(wrong), "--url", served.base,
        "--include-operation-id", "list_posts",
        "--checks", "response_schema_conformance",
        "--phases", "examples,fuzzing", "--max-examples", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-4000:]
    assert "Response violates schema" in result.stdout

"""The last line of defence against secrets in logs: every formatted line is scrubbed.

Postal's own messages name Redis and database addresses through `mask_url` and never print the API
token; this catches what slips past that: a library's exception text quoting a URL, a header
echoed in an error, a future log line written carelessly. Three passes, each cheap enough for a
log line (lines are rare on the hot path: the slow-operation log is rate-limited):

- the secrets Postal knows (the API token, the Redis and database passwords of its settings),
  replaced wherever they appear, in their plain and JSON-escaped spellings;
- the password of any `scheme://user:password@host` URL;
- `Bearer <token>`, `password=`/`token=`/`secret=`-style pairs, `requirepass <password>`.

A false positive costs a `***` in a log line; a false negative leaks a secret: the patterns lean
towards masking.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
SHORTEST_SECRET = 6  # characters; a shorter literal would mask ordinary words everywhere

# scheme://user:password@ -> scheme://user:***@ (the password may hold anything but space and @,
# so an unescaped / or : in it is masked too; `mask_url` reasons the same way)
_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)[^\s@]+(?=@)")
_BEARER = re.compile(r"(?P<head>\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)
_PAIR = re.compile(
    r"(?P<head>(?:(?:password|passwd|secret|token)[\"']?\s*[=:]\s*[\"']?)"
    r"|(?:(?:requirepass|masterauth)(?:[\"']?\s*[=:]\s*[\"']?|\s+)))"  # Redis config lines
    r"(?!\*\*\*)[^\s\"',;&}]+",
    re.IGNORECASE,
)


def _masked(match: re.Match[str]) -> str:
    return match["head"] + MASK


class Redactor:
    """Scrubs text of the given secrets and of anything that looks like a credential."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        spellings: set[str] = set()
        for secret in secrets:
            if secret is None or len(secret) < SHORTEST_SECRET:
                continue
            spellings.add(secret)
            spellings.add(json.dumps(secret)[1:-1])  # as it appears inside a JSON line
            spellings.add(json.dumps(secret, ensure_ascii=False)[1:-1])
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(spellings, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "://" in text:
            text = _URL_USERINFO.sub(_masked, text)
        text = _BEARER.sub(_masked, text)
        return _PAIR.sub(_masked, text)


def url_secrets(url: str | None) -> list[str]:
    """The password of a URL as written and percent-decoded (a client may echo either); empty
    when the URL has none. Works on text, as `mask_url` does, so a malformed URL counts too."""
    if not url or "://" not in url:
        return []
    userinfo = url.partition("://")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    if not password:
        return []
    return sorted({password, unquote(password)})

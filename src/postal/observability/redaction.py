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
from urllib.parse import unquote, unquote_plus

from postal.cache import SECRET_QUERY_PARAMETER

MASK = "***"
SHORTEST_SECRET = 6  # characters; a shorter literal would mask ordinary words everywhere

# scheme://user:password@host -> scheme://user:***@host: the password is everything up to the
# last @ before the host (which holds no @, space or quote), so an unescaped /, : or @ in it is
# masked too; `mask_url` reasons the same way
_URL_USERINFO = re.compile(
    r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/@]*:)\S*?(?=@[^\s@\"']*(?:[\s\"']|$))"
)
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
            # As written, and as repr() writes it (an exception's args, a tuple in a message:
            # a backslash or a quote is escaped); each also as it appears inside a JSON line.
            for written in (secret, repr(secret)[1:-1]):
                spellings.add(written)
                spellings.add(json.dumps(written)[1:-1])
                spellings.add(json.dumps(written, ensure_ascii=False)[1:-1])
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
    """The passwords of a URL (its user information's, and any `?password=`-like query
    parameter's: see `mask_url`), as written and decoded (a client may echo either); empty when
    it has none. Works on text, as `mask_url` does, so a malformed URL counts too."""
    if not url or "://" not in url:
        return []
    rest = url.partition("://")[2]
    passwords = [rest.rpartition("@")[0].partition(":")[2]]
    passwords += [match["value"] for match in SECRET_QUERY_PARAMETER.finditer(rest)]
    spellings = set()
    for password in filter(None, passwords):
        # Clients form-decode a query's value (`+` is a space): every decoding is masked.
        spellings |= {password, unquote(password), unquote_plus(password)}
    return sorted(spellings)

"""The last line of defence against secrets in logs: every formatted line is scrubbed.

Postal's own messages name Redis and database addresses through `mask_url` and never print the API
token; this catches what slips past that: a library's exception text quoting a URL, a header
echoed in an error, a future log line written carelessly. Three passes, each cheap enough for a
log line (lines are rare on the hot path: the slow-operation log is rate-limited):

- the secrets Postal knows (the API token, the Redis and database passwords of its settings),
  replaced wherever they appear, in their plain and JSON-escaped spellings, however short
  (a one-letter password masks that letter everywhere: unreadable lines are the lesser harm);
- the password of any `scheme://user:password@host` URL;
- `Bearer <token>`, `password=`/`token=`/`secret=`-style pairs, `requirepass <password>`.

A false positive costs a `***` in a log line; a false negative leaks a secret: the patterns lean
towards masking.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

from postal.cache import SECRET_QUERY_PARAMETER

MASK = "***"

# In `scheme://user:password@host`: the characters of a scheme, and what ends the user name.
_SCHEME_CHARACTERS = re.compile(r"[\w+.-]")
_USER_END = re.compile(r"[\s:/@]")
# What decides where a URL's password ends: an @ is the end of one when the host after it (up to
# whitespace, a quote or the end) holds no further @; whitespace ends any password.
_PASSWORD_BOUNDS = re.compile(r"[\s@\"']")
_BEARER = re.compile(r"(?P<head>\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)
_PAIR = re.compile(
    r"(?P<head>(?:(?:password|passwd|secret|token)[\"']?\s*[=:]\s*[\"']?)"
    r"|(?:(?:requirepass|masterauth)(?:[\"']?\s*[=:]\s*[\"']?|\s+)))"  # Redis config lines
    r"(?!\*\*\*)[^\s\"',;&}]+",
    re.IGNORECASE,
)


# A word each of `_BEARER` and `_PAIR` needs to match, lower-cased: a line with none of them is
# left alone without running either (each costs 10-15 us a line in Python's re, case-insensitive
# scanning at every position; the access log writes a line per request).
_BEARER_WORDS = ("bearer",)
_PAIR_WORDS = ("password", "passwd", "secret", "token", "requirepass", "masterauth")


def _may_match(text: str, lowered: str | None, words: tuple[str, ...]) -> bool:
    """False only when the pattern needing one of `words` cannot match `text`. `lowered` is
    the ASCII `text` lower-cased, or None for other text: re's case-insensitive matching also
    takes some non-ASCII letters for ASCII ones (the long s for s), so only ASCII is decided."""
    return lowered is None or any(word in lowered for word in words)


def _masked(match: re.Match[str]) -> str:
    return match["head"] + MASK


def mask_url_passwords(text: str) -> str:
    r"""`scheme://user:password@host` -> `scheme://user:***@host`, wherever it appears in `text`.

    The password is everything up to the last @ before the host (which holds no @, space or
    quote), so an unescaped /, : or @ in it is masked too; `mask_url` reasons the same way.

    Hand-written rather than one regular expression: the expression this replaces
    (`scheme://user:` then a lazy `\S*?` up to an @ that a lookahead accepted) tried every
    start and every end, quadratic on text such as `a://b:` repeated, and a request's path
    reaches the log. Here each `://` is found once; its scheme is read backwards and its user
    name forwards, neither past the previous or next `://`; and the password's end is looked up
    in the lists of acceptable @ and of whitespace, made in one pass. Linear in the text.
    """
    if "://" not in text:
        return text
    accepted_ats, spaces = _password_ends(text)
    pieces: list[str] = []
    emitted = 0  # text[:emitted] is in `pieces`; a match may not start before it
    separator = text.find("://")
    while separator != -1:
        user_start = separator + 3
        if _has_scheme(text, separator, emitted):
            user_end = _USER_END.search(text, user_start)
            if user_end is not None and text[user_end.start()] == ":":
                password_start = user_end.start() + 1
                end = _first_at_or_after(accepted_ats, password_start)
                space = _first_at_or_after(spaces, password_start)
                if end is not None and (space is None or end < space):
                    pieces += (text[emitted:password_start], MASK)
                    emitted = end
        separator = text.find("://", max(user_start, emitted))
    pieces.append(text[emitted:])
    return "".join(pieces)


def _password_ends(text: str) -> tuple[list[int], list[int]]:
    """The positions of the @ a password may end at, and of whitespace, in order."""
    bounds = [(match.start(), match.group()) for match in _PASSWORD_BOUNDS.finditer(text)]
    accepted = [
        position
        for index, (position, character) in enumerate(bounds)
        if character == "@" and (index + 1 == len(bounds) or bounds[index + 1][1] != "@")
    ]
    spaces = [position for position, character in bounds if character.isspace()]
    return accepted, spaces


def _first_at_or_after(positions: list[int], start: int) -> int | None:
    index = bisect.bisect_left(positions, start)
    return positions[index] if index < len(positions) else None


def _has_scheme(text: str, separator: int, floor: int) -> bool:
    """Whether a scheme ends at `separator` (`redis` in `redis://`): scheme characters back to a
    word boundary, starting with an ASCII letter, none before `floor` (already masked). The
    walk back stops at the `//` of any earlier `://`, so no character is walked twice."""
    start = separator
    while start > floor and _SCHEME_CHARACTERS.match(text, start - 1):
        start -= 1
    for candidate in range(start, separator):
        at_boundary = candidate == start or text[candidate - 1] in "+.-"
        if at_boundary and text[candidate].isascii() and text[candidate].isalpha():
            return True
    return False


class Redactor:
    """Scrubs text of the given secrets and of anything that looks like a credential."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        spellings: set[str] = set()
        for secret in secrets:
            if not secret:
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
        text = mask_url_passwords(text)
        lowered = text.lower() if text.isascii() else None
        if _may_match(text, lowered, _BEARER_WORDS):
            text = _BEARER.sub(_masked, text)
        if _may_match(text, lowered, _PAIR_WORDS):
            text = _PAIR.sub(_masked, text)
        return text


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

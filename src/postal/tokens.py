"""What an API token must be to be accepted: long, not a placeholder, not one repeated character.

A token is the only thing between the network and every write, so a weak one is refused at
start-up rather than served with: a single character, the `CHANGE-ME` a manifest shipped with,
`xxxxxxxx...` typed to get past a length check. 32 characters is what `openssl rand -hex 16`
or `secrets.token_urlsafe(24)` gives (128 bits or more); a random token of that length holds
many different characters, which is the cheap check against the repeated ones.

The problems name the variable and what is wrong, never the value: a configuration error is
printed and logged, and a near-miss of the real token is as secret as the token.
"""

from __future__ import annotations

from typing import Final

MIN_TOKEN_CHARS: Final = 32
MIN_DISTINCT_CHARS: Final = 8  # a random 32-character hex token has about 14
# Lower-cased, with everything but letters and digits removed, a token containing one of these
# is a placeholder someone forgot to replace.
PLACEHOLDERS: Final = (
    "changeme",
    "replaceme",
    "placeholder",
    "yourtoken",
    "secrettoken",
    "apitoken",
    "example",
    "todo",
)
HOW_TO_MAKE_ONE: Final = "`openssl rand -hex 32` makes one"


def token_problems(token: str) -> list[str]:
    """What is wrong with `token` (already stripped), one line each; empty when it is fine."""
    if not token:
        return ["POSTAL_API_TOKEN is empty: set a token, or unset it to serve loopback only"]
    if len(token) < MIN_TOKEN_CHARS:
        return [
            f"POSTAL_API_TOKEN is {len(token)} characters long: expected at least"
            f" {MIN_TOKEN_CHARS} ({HOW_TO_MAKE_ONE})"
        ]
    folded = "".join(character for character in token.lower() if character.isalnum())
    if any(placeholder in folded for placeholder in PLACEHOLDERS):
        return [
            f"POSTAL_API_TOKEN is a placeholder: replace it with a real token ({HOW_TO_MAKE_ONE})"
        ]
    if len(set(token)) < MIN_DISTINCT_CHARS:
        return [
            f"POSTAL_API_TOKEN has fewer than {MIN_DISTINCT_CHARS} different characters: expected"
            f" a random token ({HOW_TO_MAKE_ONE})"
        ]
    return []

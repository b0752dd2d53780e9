"""Posts and their versions: plain data and the rules on it, no I/O.

A post carries its current version number; every content change (create, update, restore) adds
one `PostVersion` row with the content as it became, so the history is complete from version 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

MAX_ID: Final = 2**63 - 1  # ids are BIGINT
MAX_TITLE_CHARS: Final = 200
MAX_AUTHOR_CHARS: Final = 100
MAX_TAGS: Final = 20
MAX_TAG_CHARS: Final = 50
# A post's body, in UTF-8 bytes: the default of POSTAL_MAX_BODY_BYTES (settings.py) and the CSV
# reader's. A setting, not a fixed rule, so only this default lives here.
DEFAULT_MAX_BODY_BYTES: Final = 1_000_000

# PostgreSQL's text cannot hold U+0000, so no way in (the API, the CSV import) accepts it in any
# field: refused up front, on every database, rather than failing in the INSERT.
NUL: Final = "\x00"
NUL_REFUSAL: Final = "contains a NUL character (U+0000), which cannot be stored"


@dataclass(frozen=True, slots=True)
class PostContent:
    """What a writer supplies: everything about a post that has versions."""

    title: str
    body: str
    author: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Post:
    id: int
    title: str
    body: str
    author: str
    tags: tuple[str, ...]
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def content(self) -> PostContent:
        return PostContent(self.title, self.body, self.author, self.tags)


@dataclass(frozen=True, slots=True)
class PostVersion:
    post_id: int
    version: int
    title: str
    body: str
    author: str
    tags: tuple[str, ...]
    created_at: datetime

    @property
    def content(self) -> PostContent:
        return PostContent(self.title, self.body, self.author, self.tags)


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """A version as a list of versions shows it: everything but the body, which can be large
    (a list of bodies was once a response of 120 MB); one version's body is read alone."""

    post_id: int
    version: int
    title: str
    author: str
    tags: tuple[str, ...]
    created_at: datetime

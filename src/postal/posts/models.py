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


# -- filters of the list ---------------------------------------------------------------------------

FILTER_FIELDS: Final = {"author": MAX_AUTHOR_CHARS, "tag": MAX_TAG_CHARS}


@dataclass(frozen=True, slots=True)
class ListFilter:
    """The posts a list shows: those by `author` and/or tagged `tag`; None is no condition.
    Values match exactly as stored (case-sensitive, after the strip a write does). A cursor is
    signed for its filter (`cursors.list_kind`), a page cached under it (`cache_keys.page_key`)."""

    author: str | None = None
    tag: str | None = None

    @property
    def is_empty(self) -> bool:
        return self.author is None and self.tag is None


NO_FILTER: Final = ListFilter()


class InvalidFilter(ValueError):
    """A filter value no post can have: says which parameter, and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def filter_value(field: str, raw: str) -> str:
    """`raw` as the `field` (author or tag) a post can have, so that any author or tag a write
    accepted can be asked for: stripped as writes strip it, 1 to the field's limit of
    characters, no NUL. `InvalidFilter` otherwise, before anything is read or cached."""
    limit = FILTER_FIELDS[field]
    if len(raw) > 4 * limit:  # far over the limit: refused before the strip copies it
        raise InvalidFilter(field, f"{field} is over {limit} characters")
    value = raw.strip()  # as the write schemas strip (Unicode whitespace)
    if not value:
        raise InvalidFilter(field, f"{field} must not be empty")
    if len(value) > limit:
        raise InvalidFilter(field, f"{field} is {len(value)} characters; the limit is {limit}")
    if NUL in value:
        raise InvalidFilter(field, f"{field} {NUL_REFUSAL}")
    return value

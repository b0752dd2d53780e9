"""What a writer may send. Strict: wrong types are refused, not coerced; unknown fields too."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from postal.posts.models import (
    MAX_AUTHOR_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    PostContent,
)

Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE_CHARS)
]
Author = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_AUTHOR_CHARS)
]
Tag = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_CHARS)
]


class PostIn(BaseModel):
    """A post as written: the body's size limit (in bytes) is checked by the route, as a 413."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: Title
    body: Annotated[str, StringConstraints(min_length=1)]
    author: Author
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = []

    def content(self) -> PostContent:
        return PostContent(self.title, self.body, self.author, tuple(self.tags))

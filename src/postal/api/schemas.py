"""What a writer may send. Strict: wrong types are refused, not coerced; unknown fields too."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from postal.posts.models import (
    MAX_AUTHOR_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    NUL,
    NUL_REFUSAL,
    PostContent,
)


def _storable(value: str) -> str:
    """The CSV import's rule too (nul_character): refused here as a 422 naming the field, not
    left to fail in PostgreSQL's INSERT as a 500."""
    if NUL in value:
        raise PydanticCustomError("nul_character", NUL_REFUSAL)
    return value


Storable = AfterValidator(_storable)
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE_CHARS),
    Storable,
    Field(description=f"1 to {MAX_TITLE_CHARS} characters once surrounding whitespace is stripped"),
]
Author = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_AUTHOR_CHARS),
    Storable,
    Field(
        description=f"1 to {MAX_AUTHOR_CHARS} characters once surrounding whitespace is stripped"
    ),
]
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_CHARS),
    Storable,
    Field(description=f"1 to {MAX_TAG_CHARS} characters once surrounding whitespace is stripped"),
]
Body = Annotated[str, StringConstraints(min_length=1), Storable]


class PostIn(BaseModel):
    """A post as written: the body's size limit (in bytes) is checked by the route, as a 413."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: Title
    body: Body
    author: Author
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = []

    def content(self) -> PostContent:
        return PostContent(self.title, self.body, self.author, tuple(self.tags))

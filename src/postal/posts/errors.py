"""What can go wrong with posts, in the domain's words; `api/errors.py` maps these to HTTP."""

from __future__ import annotations


class PostError(Exception):
    """Base of the posts domain's errors."""


class PostNotFound(PostError):
    def __init__(self, post_id: int) -> None:
        super().__init__(f"post {post_id} does not exist")
        self.post_id = post_id


class VersionNotFound(PostError):
    def __init__(self, post_id: int, version: int) -> None:
        super().__init__(f"post {post_id} has no version {version}")
        self.post_id = post_id
        self.version = version


class InvalidCursor(PostError):
    """A page cursor this deployment did not give out (made up, altered, or from another list,
    another deployment, or before the key was rotated)."""

    def __init__(self) -> None:
        super().__init__("cursor is not one this service gave out; use next_cursor as it is")


class VersionConflict(PostError):
    """The writer's If-Match names a version that is no longer current."""

    def __init__(self, post_id: int, expected: int, current: int) -> None:
        super().__init__(
            f"post {post_id} is at version {current}, not {expected}: reload it and retry"
        )
        self.post_id = post_id
        self.expected = expected
        self.current = current


class DatabaseUnavailable(PostError):
    """The database could not be reached or did not answer in time; the request may be retried.

    Raised as such by a write, it means the write may have landed: the database failed at its
    COMMIT or after it, and the client cannot tell whether the COMMIT took effect.
    """


class NothingWritten(DatabaseUnavailable):
    """The database failed before a write's COMMIT was sent (no connection, no pooled connection
    in time, a statement of the transaction failed): the transaction cannot have landed."""

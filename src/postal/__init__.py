"""Postal: a posts service whose reads come from Redis, and which stays up when Redis does not."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One version, pyproject.toml's, as the installed package's metadata carries it.
    __version__ = version("postal")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

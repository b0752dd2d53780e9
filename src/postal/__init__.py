"""Postal: a posts service whose reads come from Redis, and which stays up when Redis does not."""

__version__ = "0.1.0"

"""Metrics and logs, at the edge of the process: the cache's events and snapshots become them."""

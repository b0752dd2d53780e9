"""Where the cache layer's events become logs (and, later, metrics)."""

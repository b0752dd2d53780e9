"""`postal stats`: a running Postal and its Redis servers at a glance.

- `scrape`: `/metrics` text parsed into samples (pure);
- `summary`: two scrapes an interval apart into rates, hit rate, percentiles, pools (pure);
- `redis_probe`: which Redis servers (pure), and their INFO and PING latency (I/O);
- `collect`: asking Postal for `/metrics` and `/status`, on a schedule (I/O);
- `render`: rich tables, or JSON.
"""

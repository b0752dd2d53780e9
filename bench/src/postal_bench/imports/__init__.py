"""`postal bench import`: the CSV import into PostgreSQL per write method, each run in a child
process of its own, with its rows/s, peak RSS and the cache step timed."""

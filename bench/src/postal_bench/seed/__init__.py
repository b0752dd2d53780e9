"""`postal bench seed`: the incident's before/after table, the real Postal run with the before
profile and the tuned one under the same load, behind a latency proxy and a slow DNS."""

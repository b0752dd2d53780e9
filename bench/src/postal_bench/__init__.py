"""Postal's benchmarks: commands that print a table (and write JSON), not tests.

A distribution of its own (`postal-bench`), beside the product in the same repository and never
in its wheel or image. Its commands appear as `postal bench ...` once it is installed (the
`postal.commands` entry point; `make install` and the `make bench*` targets install it).

- `errors`, `loopback`, `load`, `output`: what every benchmark shares: its failures, the guard
  that keeps load on this machine, the closed-loop load driver, the progress line, tables and JSON;
- `cache`: `postal bench cache`, pool profiles against plain redis-py on the same Redis;
  `redis_topologies` runs plain redis-py on whatever topology a URL names;
- `http/`: `postal bench http`, Postal (near cache on, off) against a bare route and a peer;
- `imports/`: `postal bench import`, the CSV import per method, in child processes;
- `seed/`: `postal bench seed`, the incident's before/after table;
- `faults/`: `postal bench faults`, the fault matrix under load;
- `stats`, `cpu_time`: the pure arithmetic, and server CPU per request from /proc;
- `server_child`: Postal as the benches start it (a profile and a scripted DNS injected);
- `cli`: the commands.

The servers, proxies and certificates they run against are the test rigs, `postal_testing`.
Nothing here runs at import time.
"""

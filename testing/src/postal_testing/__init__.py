"""Postal's test rigs: the real servers and faults its tests and benchmarks run against.

A distribution of its own (`postal-testing`), beside the product in the same repository and never
in its wheel or image; `make install` installs it, editable, for the tests and the benchmarks.

- `redis_servers`: a child `redis-server` on a free loopback port (password, TLS, stopped,
  restarted, killed), and `free_port`;
- `topologies`: a primary with replicas, and Sentinels over them; `ask` and `poll` for settling;
- `cluster_set`: a Redis Cluster made by `redis-cli --cluster create`;
- `proxy`, `proxy_child`: a TCP fault proxy (latency, black hole, reset, refuse), in this process
  or a process of its own;
- `resolver`: a scripted DNS for Postal's DNS cache (names, delay, failures), changed while it runs;
- `certs`: certificates that do not verify, for the TLS fault.

Every server or process a rig starts listens on loopback only and is stopped by the rig.
"""


class RigError(Exception):
    """A rig could not be set up: a tool missing, a child that did not start or answer."""

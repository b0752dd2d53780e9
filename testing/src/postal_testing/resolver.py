"""A scripted DNS resolver for benchmarks and fault tests: names, delays and failures from a file.

The incident's DNS cost (a lookup per connection, tens of milliseconds each with Kubernetes'
search domains and ndots:5) and the DNS faults (the name stops resolving, the name moves to a new
address) are reproduced without touching the machine's DNS: Postal's `DnsCache` takes a resolver,
and a server started for a benchmark gets this one (see `postal_bench.server_child`).

The script is a JSON file, read again on every lookup so that the process that wrote it can
change the answers while the server runs (write a new file and rename it over the old one):

    {"delay": 0.02, "hosts": {"redis.postal.test": ["127.0.0.1"]}, "failing": []}

- `delay`: seconds every lookup takes (the slow DNS);
- `hosts`: each name's addresses, loopback only (the benchmarks send traffic nowhere else);
- `failing`: names whose lookups fail, as a name the DNS server no longer knows does.

A name in neither list fails too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCH_HOST = "redis.postal.test"  # the Redis host name the benchmarks give Postal


@dataclass(frozen=True, slots=True)
class DnsScript:
    """What the resolver answers; `write()` puts it where a running resolver reads it."""

    hosts: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    failing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"a DNS delay cannot be negative, got {self.delay}")
        for name, addresses in self.hosts.items():
            for address in addresses:
                if not ipaddress.ip_address(address).is_loopback:
                    raise ValueError(f"{name}: {address} is not a loopback address")

    def write(self, path: Path) -> None:
        """Replace `path` atomically: a lookup reads the old script or the new, never half."""
        document = {"delay": self.delay, "hosts": self.hosts, "failing": list(self.failing)}
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dns-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(document, out)
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: Path) -> DnsScript:
        document = json.loads(path.read_text())
        return cls(
            hosts={str(k): [str(a) for a in v] for k, v in document.get("hosts", {}).items()},
            delay=float(document.get("delay", 0.0)),
            failing=tuple(str(name) for name in document.get("failing", ())),
        )


class ScriptedResolver:
    """A `postal.cache.Resolver` answering from a `DnsScript` file; counts its lookups."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        script = DnsScript.read(self._path)
        if script.delay:
            await asyncio.sleep(script.delay)
        addresses = script.hosts.get(host)
        if host in script.failing or not addresses:
            # What getaddrinfo raises for a name the DNS does not know.
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: name not known (scripted)")
        return list(addresses)

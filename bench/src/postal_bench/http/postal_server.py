"""Serve an app factory on the server `postal serve` runs: uvicorn with Postal's options
(`postal.cli.serve.server_options`: uvloop, httptools bounded by Postal's HTTP limits), so that
the bench's bare route and `server_child`'s Postal are measured on the very server Postal ships.

    python -m postal_bench.http.postal_server FACTORY PORT WORKERS

FACTORY is "module:function"; the limits come from the `POSTAL_HTTP_*` variables, as for
`postal serve`. Warnings and errors only, no access log.
"""

from __future__ import annotations

import sys

import uvicorn

from postal.cli.serve import server_options

HOST = "127.0.0.1"


def main(argv: list[str]) -> None:
    factory, port, workers = argv
    uvicorn.run(
        factory,
        factory=True,
        host=HOST,
        port=int(port),
        workers=int(workers),
        log_level="warning",
        **server_options(),
    )


if __name__ == "__main__":
    main(sys.argv[1:])

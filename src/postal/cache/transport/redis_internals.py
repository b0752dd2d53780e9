"""Every redis-py name Postal uses that is not redis-py's documented API, in one place.

Checked against redis-py `REDIS_PY_CHECKED`, the version the lock (requirements/) pins. When the
installed redis-py is another version, `tests/unit/test_redis_internals.py` fails: whoever
upgrades it (`make lock`) reads this list against the new release's source first, then moves
`REDIS_PY_CHECKED`. Each entry says where Postal uses it and why it cannot use a public name.

Imported from here (ruff's banned-api rule keeps them out of every other module):

- `HiredisRespSerializer` (`redis.connection`): packs commands with hiredis. redis-py's asyncio
  `Connection` packs them in Python, a fifth of a cache hit's CPU in a profile; its sync
  connection already uses this packer. Untyped in 8.2, hence `new_command_packer()`.
- `BaseParser.parse_error` (`redis._parsers`): turns an error reply's text into redis-py's
  exception for it (MovedError, AskError, NoScriptError, ReadOnlyError, ResponseError...), as
  redis-py's own hiredis parser does. The read pipeline (`cache/transport/autopipeline.py`)
  parses with hiredis itself and hands it to `hiredis.Reader(replyError=...)`, so that its
  errors are the ones the pool's connections raise. Hence `reply_error_parser()`.

Attributes and overrides, which cannot be imported (used in `cache/transport/connection.py`
unless said otherwise):

- `Connection._connection_arguments()`, overridden: the arguments of `asyncio.open_connection`,
  so that a connection dials the address from Postal's DNS cache while TLS still checks the
  certificate against the host name. redis-py has no resolver hook.
- `Connection._reader` / `_writer`: the stream pair. `is_usable` looks at the reader for an EOF
  the server left while the connection sat idle; `send_packed_command` writes to the writer.
- `Connection.send_packed_command()`, overridden whole: redis-py bounds a write by its *read*
  timeout, through `asyncio.wait_for` (a task per command on Python 3.11), and reconnects behind
  the pool's back when the connection is closed. Postal bounds it by its write timeout.
- `Connection.read_response(timeout=math.inf)`: redis-py's spelling of "no read timer" (its
  docstring documents it as such since 8.2; it is what 8.1 did too), used when the operation's
  deadline comes first.
- `Connection._host_error()`, overridden: error messages name the host and the address dialled.
- `Connection.connect()` and `disconnect(nowait=True)`: public, but `connect()` is untyped.
- `RedisCluster.nodes_manager` (`initialize()`, `move_slot()`, `get_node_from_slot()`), in
  `cache/transport/cluster.py`: redis-py's slot table, read and updated while Postal's own
  pools send the commands (its per-node connection lists have no wait for a free connection).
- `parse_url` and `SSLConnection` (`redis.asyncio.connection`), in `cache/transport/urls.py`:
  redis-py's URL parser, so that every URL form it accepts means the same in Postal.

redis-py 8.2 also converts a synchronous `redis.retry.Retry` handed to an asyncio client, with a
warning; Postal hands its asyncio clients `redis.asyncio.retry.Retry` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis._parsers import BaseParser
from redis.connection import HiredisRespSerializer

__all__ = ["REDIS_PY_CHECKED", "new_command_packer", "reply_error_parser"]

REDIS_PY_CHECKED = "8.2.0"


def new_command_packer() -> Any:
    """A hiredis command packer: `.pack(*args)` gives the command's bytes, as a list of chunks.

    Stateless, so one serves every connection of the process.
    """
    packer_class: Any = HiredisRespSerializer  # untyped in redis-py 8.2
    return packer_class()


def reply_error_parser() -> Callable[[str], Exception]:
    """redis-py's exception for an error reply's text (`"MOVED 3999 127.0.0.1:6381"`)."""
    parse: Callable[[str], Exception] = BaseParser.parse_error
    return parse

"""The redis-py internals Postal leans on (listed in postal.cache.transport.redis_internals) are
there, in the version they were checked against, and that is the version the lock pins.

The first test is the tripwire of an upgrade: after `make lock` brings another redis-py, it fails
until someone has read the list against the new release and moved REDIS_PY_CHECKED.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest
from redis.asyncio.cluster import NodesManager, RedisCluster
from redis.asyncio.connection import Connection

from postal.cache import PostalConnection
from postal.cache.transport.redis_internals import REDIS_PY_CHECKED, new_command_packer

LOCKS = Path(__file__).resolve().parents[2] / "requirements"


def test_the_installed_redis_py_is_the_one_the_internals_were_checked_against() -> None:
    installed = importlib.metadata.version("redis")
    assert installed == REDIS_PY_CHECKED, (
        f"redis-py {installed} is installed, but the internals listed in"
        f" postal/cache/redis_internals.py were checked against {REDIS_PY_CHECKED}:"
        " read them against the new release, then move REDIS_PY_CHECKED"
    )


@pytest.mark.parametrize("lock", ["dev.txt", "main.txt"])
def test_the_lock_pins_that_redis_py(lock: str) -> None:
    pins = re.findall(r"^redis==(\S+)", (LOCKS / lock).read_text(), flags=re.MULTILINE)
    assert pins == [REDIS_PY_CHECKED]


def test_the_command_packer_packs_resp() -> None:
    assert b"".join(new_command_packer().pack("GET", "post:{1}")) == (
        b"*2\r\n$3\r\nGET\r\n$8\r\npost:{1}\r\n"
    )


def test_the_connection_methods_postal_overrides_still_exist_with_their_signatures() -> None:
    for name in ("_connection_arguments", "_host_error", "send_packed_command", "read_response"):
        assert callable(getattr(Connection, name))
        assert name in vars(PostalConnection), f"PostalConnection no longer overrides {name}"
    ours = inspect.signature(PostalConnection.read_response).parameters
    theirs = inspect.signature(Connection.read_response).parameters
    assert list(ours) == list(theirs)
    assert list(inspect.signature(PostalConnection.send_packed_command).parameters) == list(
        inspect.signature(Connection.send_packed_command).parameters
    )


def test_a_connection_keeps_its_stream_pair_where_postal_looks_for_it() -> None:
    connection = Connection()
    assert connection._reader is None
    assert connection._writer is None
    assert connection._connection_arguments() == {"host": "localhost", "port": 6379}


def test_the_slot_table_calls_the_cluster_role_makes_exist() -> None:
    for name in ("initialize", "move_slot", "get_node_from_slot"):
        assert callable(getattr(NodesManager, name))
    assert "nodes_manager" in inspect.getsource(RedisCluster.__init__)

"""Which nodes a cluster's tracking follows (pure logic: nothing is started, nothing dials):
exactly the nodes it is told, by name; a node kept keeps its connection; any change flushes the
listener, an unchanged set does not; and it is never live while a node is unconfirmed, nor while
it tracks none."""

from __future__ import annotations

from collections.abc import Sequence

from postal.cache import NO_TLS, TUNED, DnsCache, FollowingTracking, Node, RedisEndpoint, Tracking
from postal.cache.transport.nodes import NodeFactory
from postal.cache.transport.tracking import NodeTracking

FACTORY = NodeFactory("read", TUNED, DnsCache(), NO_TLS)


class Listener:
    def __init__(self) -> None:
        self.flushes = 0

    def invalidated(self, keys: Sequence[bytes] | None) -> None:
        raise AssertionError("nothing is pushed here")

    def tracking_changed(self, live: bool) -> None:
        assert live is False  # a change of nodes is never a confirmation
        self.flushes += 1


def node(port: int) -> Node:
    endpoint = RedisEndpoint(host="127.0.0.1", port=port, db=0, tls=False)
    return FACTORY.build(endpoint, name=f"127.0.0.1:{port}")


def following() -> tuple[FollowingTracking, Listener]:
    listener = Listener()
    return FollowingTracking(lambda n: NodeTracking(n, "p:", listener), listener), listener


def names(tracking: Tracking) -> list[str]:
    return sorted(tracked.node.name for tracked in tracking.nodes)


async def test_it_tracks_exactly_the_nodes_it_is_told_and_flushes_once_per_change() -> None:
    tracking, listener = following()
    tracking.follow([node(1), node(2), node(3)])
    assert names(tracking) == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert (listener.flushes, tracking.changes) == (1, 1)
    assert not tracking.live  # none confirmed yet


async def test_the_same_nodes_again_change_nothing_and_flush_nothing() -> None:
    tracking, listener = following()
    tracking.follow([node(1), node(2)])
    before = list(tracking.nodes)
    tracking.follow([node(2), node(1)])  # other Node objects, same names, another order
    assert tracking.nodes == before  # the very same connections
    assert (listener.flushes, tracking.changes) == (1, 1)


async def test_a_node_gone_and_a_node_new_keep_the_others_connections() -> None:
    tracking, listener = following()
    tracking.follow([node(1), node(2), node(3)])
    kept = {tracked.node.name: tracked for tracked in tracking.nodes}
    tracking.follow([node(1), node(3), node(4)])  # 2 failed over to 4
    assert names(tracking) == ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:4"]
    now = {tracked.node.name: tracked for tracked in tracking.nodes}
    assert now["127.0.0.1:1"] is kept["127.0.0.1:1"]
    assert now["127.0.0.1:3"] is kept["127.0.0.1:3"]
    assert (listener.flushes, tracking.changes) == (2, 2)


async def test_a_node_gone_alone_flushes_too() -> None:
    tracking, listener = following()
    tracking.follow([node(1), node(2)])
    tracking.follow([node(1)])
    assert names(tracking) == ["127.0.0.1:1"]
    assert listener.flushes == 2


async def test_tracking_no_node_is_never_live() -> None:
    tracking, listener = following()
    tracking.follow([])  # a slot table not read yet
    assert tracking.nodes == []
    assert not tracking.live
    assert listener.flushes == 0  # nothing changed
    assert not Tracking([]).live


async def test_after_aclose_it_follows_nothing() -> None:
    tracking, listener = following()
    tracking.follow([node(1)])
    await tracking.aclose()
    tracking.follow([node(2)])
    assert names(tracking) == ["127.0.0.1:1"]
    assert listener.flushes == 1

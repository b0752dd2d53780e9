"""The Redis transport: a managed Redis client that knows nothing of caching policy.

Endpoints and URLs (one server, replicas, Sentinel, Cluster), the DNS cache, connections and the
managed pools, nodes and topologies, per-operation deadlines, circuit breakers, redis-py's errors
mapped to `CacheError`s, events, and the executor every operation runs in
(`RedisClient.run_read` / `run_write`, with a `call` from `wire`: a command, a pipeline or a
script), which can also split a batch by hash slot or by node.

The caching policy (`postal.cache.policy`) sits above and uses only the names exported here;
nothing here imports it. Only this package imports redis-py.
"""

from postal.cache.transport.autopipeline import PipelineStats, ReadPipeline
from postal.cache.transport.breaker import (
    BreakerChange,
    BreakerListener,
    BreakerState,
    BreakerStats,
    CircuitBreaker,
)
from postal.cache.transport.client import (
    USE_DEFAULT,
    CachePipeline,
    RedisClient,
    Timeout,
    UseDefault,
)
from postal.cache.transport.config import (
    BEFORE,
    NO_TLS,
    TUNED,
    BreakerConfig,
    CacheTimeouts,
    PipelineConfig,
    PoolConfig,
    Profile,
    TlsConfig,
)
from postal.cache.transport.connection import Connector, PostalConnection
from postal.cache.transport.dns import DnsCache, DnsLookupError, Resolver
from postal.cache.transport.durations import EXPECTED as EXPECTED_DURATION
from postal.cache.transport.durations import format_duration, parse_duration
from postal.cache.transport.errors import (
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    CircuitOpen,
    PoolTimeout,
)
from postal.cache.transport.events import (
    CacheEvent,
    CacheListener,
    Outcome,
    PoolWaitEvent,
    PoolWaitListener,
)
from postal.cache.transport.nodes import Node
from postal.cache.transport.pool import CloseReason, ManagedPool, PoolStats
from postal.cache.transport.replicas import (
    ReplicasBehind,
    ReplicaWait,
    ReplicaWaitStats,
    wait_commands,
    wait_milliseconds,
)
from postal.cache.transport.tracking import FollowingTracking, Tracking, TrackingListener
from postal.cache.transport.urls import (
    CLUSTER_SCHEME,
    SECRET_QUERY_PARAMETER,
    SENTINEL_SCHEME,
    Kind,
    RedisEndpoint,
    Topology,
    mask_url,
)
from postal.cache.transport.wire import (
    Script,
    Value,
    all_of,
    command_call,
    pipeline_call,
    read_call,
    script_call,
    scripts_call,
)

__all__ = [
    "BEFORE",
    "CLUSTER_SCHEME",
    "EXPECTED_DURATION",
    "NO_TLS",
    "SECRET_QUERY_PARAMETER",
    "SENTINEL_SCHEME",
    "TUNED",
    "USE_DEFAULT",
    "BreakerChange",
    "BreakerConfig",
    "BreakerListener",
    "BreakerState",
    "BreakerStats",
    "CacheError",
    "CacheEvent",
    "CacheListener",
    "CachePipeline",
    "CacheTimeout",
    "CacheTimeouts",
    "CacheUnavailable",
    "CircuitBreaker",
    "CircuitOpen",
    "CloseReason",
    "Connector",
    "DnsCache",
    "DnsLookupError",
    "FollowingTracking",
    "Kind",
    "ManagedPool",
    "Node",
    "Outcome",
    "PipelineConfig",
    "PipelineStats",
    "PoolConfig",
    "PoolStats",
    "PoolTimeout",
    "PoolWaitEvent",
    "PoolWaitListener",
    "PostalConnection",
    "Profile",
    "ReadPipeline",
    "RedisClient",
    "RedisEndpoint",
    "ReplicaWait",
    "ReplicaWaitStats",
    "ReplicasBehind",
    "Resolver",
    "Script",
    "Timeout",
    "TlsConfig",
    "Topology",
    "Tracking",
    "TrackingListener",
    "UseDefault",
    "Value",
    "all_of",
    "command_call",
    "format_duration",
    "mask_url",
    "parse_duration",
    "pipeline_call",
    "read_call",
    "script_call",
    "scripts_call",
    "wait_commands",
    "wait_milliseconds",
]

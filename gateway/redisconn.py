"""The one place that turns ``OMS_REDIS_URL`` into a client: one server, or a Cluster.

``redis+cluster://host:port[,host:port…]`` names seed nodes of a Valkey/Redis Cluster: the
client (redis-py's ``RedisCluster``) learns the slot map from them, follows MOVED and ASK,
and sends a pipeline's commands to the node owning each key. Every other scheme is one server.
Callers use the common commands only; where the two differ (a command without keys that must
reach the node holding certain keys, such as WAITAOF) they ask ``route``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEME = "redis+cluster://"


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def _nodes(url: str) -> list[Any]:
    """Each ``host:port`` of a cluster URL, split as a URL's network location."""
    rest = url[len(CLUSTER_SCHEME):].split("/", 1)[0].split("?", 1)[0]
    return [urlsplit("//" + part) for part in rest.split(",")]


def seeds(url: str) -> list[tuple[str, int]]:
    """The (host, port) seed nodes of a cluster URL; ValueError when one is malformed."""
    nodes = []
    for parsed in _nodes(url):
        if not parsed.hostname or parsed.port is None:
            shown = parsed.netloc.rpartition("@")[2]  # never the password
            raise ValueError(f"a cluster node must be host:port, not {shown!r}")
        nodes.append((parsed.hostname, parsed.port))
    return nodes


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url``; ``options`` are redis-py's (timeouts, pool size: per node in a cluster).

    Typed as the one-server client: RedisCluster offers the same commands the gateway uses.
    """
    if not is_cluster(url):
        return aioredis.from_url(url, **options)
    first = _nodes(url)[0]
    auth = {k: unquote(v) for k, v in (("username", first.username), ("password", first.password)) if v}
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds(url)], **auth, **options)  # type: ignore[return-value]


def route(client: aioredis.Redis, key: str) -> dict[str, Any]:
    """Keyword arguments that send a keyless command to the node holding ``key`` (none for one server)."""
    if isinstance(client, RedisCluster):
        return {"target_nodes": client.get_node_from_key(key)}
    return {}


async def subscriber(client: aioredis.Redis) -> Any:
    """A PubSub of ``client``. A cluster client learns its slot map first: its PubSub picks
    the node by the channel's slot and fails on a client that has not connected yet."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client.pubsub()

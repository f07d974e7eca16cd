"""The cluster section of ``make bench``: a new Valkey Cluster of 3 primaries for the gateway's rounds.

Every key carries the one inventory partition's hash tag (``keys.ONE``, ``{p0}``: the bench runs OMS_PARTITIONS=1), so
the stock, the orders and the event stream all live on one primary; the other two only keep
up the cluster bus. The section measures what the cluster client and a cluster node cost
against one server, not scale-out: inventory partitions and hot-SKU buckets are not built.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from redis.asyncio.cluster import RedisCluster

from gateway import keys, redisconn
from gateway.ops.embedded import EmbeddedValkeyCluster

PRIMARIES = 3
REPLICAS = 0  # failover is not measured here: tests/test_cluster.py has it


@dataclasses.dataclass
class Cluster:
    """A running cluster and the primary whose slot holds the partition's hash tag."""

    url: str
    tag: str
    slot: int
    port: int  # of the primary holding ``slot``
    pids: dict[int, int]  # port → pid of every primary

    @property
    def pid(self) -> int:
        return self.pids[self.port]

    @property
    def holder(self) -> str:
        """The name the partition's primary is reported under."""
        return f"Valkey primary :{self.port} (holds {self.tag})"

    def others(self) -> dict[str, int]:
        """The primaries holding no key of the bench, by name: their CPU shows they stay idle."""
        return {f"Valkey primary :{port}": pid for port, pid in self.pids.items() if port != self.port}

    @property
    def node_url(self) -> str:
        """The partition primary alone, for what must be asked of it rather than of the cluster."""
        return f"redis://127.0.0.1:{self.port}"


    def primaries(self) -> dict[str, int]:
        """Every primary by name, for its CPU."""
        return {f"Valkey primary :{port}": pid for port, pid in self.pids.items()}


@contextlib.asynccontextmanager
async def started(data_dir: Path, layout: keys.Partitions = keys.SINGLE) -> AsyncIterator[Cluster]:
    """A new cluster under ``data_dir`` (0 replicas, appendfsync always, as the one-node run's
    Valkey), marked ready for a gateway of ``layout``; stopped when the block ends."""
    nodes = EmbeddedValkeyCluster(data_dir, primaries=PRIMARIES, replicas=REPLICAS, appendfsync="always")
    try:
        url = await asyncio.to_thread(nodes.start)  # it polls the nodes with sleeps
        tag = layout.all()[0]
        client = redisconn.connect(url)
        assert isinstance(client, RedisCluster)
        try:
            await client.initialize()  # the slot map, for get_node_from_key
            ready = keys.ready(tag)
            slot, node = client.keyslot(ready), client.get_node_from_key(ready)
            # An empty Redis beside a PostgreSQL holding orders is what a lost Redis looks like,
            # and the gateway would refuse to sell from it (gateway/web/app.py, mark_ready). This
            # one is new on purpose: mark it as a new system's first start marks its Redis.
            for p in layout.all():
                await client.set(keys.ready(p), layout.mark)
        finally:
            await client.aclose()
        yield Cluster(url, tag, slot, node.port, {port: proc.pid for port, proc in nodes.procs.items()})
    finally:
        nodes.stop()

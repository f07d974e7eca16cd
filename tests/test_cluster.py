"""The gateway on a Valkey Cluster: three primaries with a replica each, on loopback.

The suite's main tests also run on a cluster (``make test`` runs them a second time with
``OMS_TEST_CLUSTER=1``); this file has what only a cluster has: seed-node URLs, scripts on
every primary, and a primary killed under load. With ``OMS_DURABILITY=replicated`` an order
is acknowledged only once a replica has it in its append-only file too, so the failover
loses no acknowledged order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis

from gateway import keys, redisconn
from gateway.config import ConfigError, Settings
from gateway.ops.embedded import EmbeddedValkeyCluster
from gateway.web import appkeys as K
from tests.conftest import ADMIN, GatewayFactory, auth, order_body
from tests.test_make_run import free_port
from tests.test_supervisor import kill_serve, serve_env, start_serve


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkeyCluster]:
    nodes = EmbeddedValkeyCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1)
    nodes.start()
    yield nodes
    nodes.stop()


async def flushed(cluster: EmbeddedValkeyCluster) -> None:
    """Every primary emptied: the suite's own Redis fixture flushes another server."""
    client = redisconn.connect(cluster.url)
    await client.flushall()
    await client.aclose()


@pytest.fixture
async def on_cluster(cluster: EmbeddedValkeyCluster, make_gateway: GatewayFactory,
                     pg: Any) -> AsyncIterator[Any]:
    """A gateway factory on the cluster, flushed first."""
    await flushed(cluster)

    async def make(**overrides: Any) -> Any:
        return await make_gateway(redis_url=cluster.url, **overrides)

    yield make


def node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


def test_a_cluster_url_names_its_seed_nodes_and_a_malformed_one_stops_start_up():
    base = {"OMS_ENV": "test", "OMS_API_KEYS": "admin=k", "OMS_JWT_SECRET": "s" * 32}
    s = Settings.from_env({**base, "OMS_REDIS_URL": "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"})
    assert redisconn.seeds(s.redis_url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    for bad in ("redis+cluster://", "redis+cluster://host-without-port", "redis+cluster://h:1,,h:2"):
        with pytest.raises(ConfigError, match="OMS_REDIS_URL"):
            Settings.from_env({**base, "OMS_REDIS_URL": bad})
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**base, "OMS_REDIS_URL": "redis+cluster://oms:hunter2@host-without-port"})
    assert "hunter2" not in str(refused.value)  # the message names the node, never its password


async def test_scripts_are_on_every_primary_and_loaded_again_after_a_flush(on_cluster, cluster):
    gw = await on_cluster()
    await gw.set_stock("SKU-1", {"W1": 5})
    shas = list(gw.app[K.SCRIPTS].shas.values())
    for port in cluster.primary_ports():
        with contextlib.closing(node(port)) as r:
            assert r.script_exists(*shas) == [True] * len(shas), port
            r.script_flush()
    resp = await gw.post("/v1/orders", order_body("c-1"), auth("k-web"))  # NOSCRIPT: loaded again, sent again
    assert resp.status == 201, await resp.text()
    assert (await gw.stock("SKU-1"))["available"] == 4
    await gw.caught_up()


async def test_serve_on_the_cluster_takes_orders_writes_them_and_stops_cleanly(cluster, backends, pg, tmp_path):
    """``python -m gateway serve`` with a cluster URL: two HTTP workers and the writer process."""
    await flushed(cluster)
    env = serve_env(backends, free_port(), tmp_path) | {"OMS_REDIS_URL": cluster.url, "OMS_DURABILITY": "replicated"}
    proc, base = await start_serve(env, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession(headers=ADMIN) as http:
            async with http.put(base + "/v1/inventory/SKU-1", json={"warehouses": {"W1": 3}}) as resp:
                assert resp.status == 200, await resp.text()
            answers = []
            for n in range(5):
                async with http.post(base + "/v1/orders", json=order_body(f"s-{n}")) as resp:
                    answers.append(resp.status)
            assert answers == [201, 201, 201, 409, 409]
        async with asyncio.timeout(30):
            while await pg.fetchval("SELECT count(*) FROM orders") < 3:
                await asyncio.sleep(0.1)  # another process writes: polled
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        kill_serve(proc)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


async def test_three_partitions_sit_on_three_primaries_and_sell_there(on_cluster, cluster):
    gw = await on_cluster(partitions=3)
    client = gw.app[K.REDIS]
    layout = keys.Partitions(3)
    assert len({client.get_node_from_key(keys.events(p)).port for p in layout.all()}) == 3
    skus = {layout.of_sku(f"g{n}:x"): f"g{n}:x" for n in range(40)}
    assert len(skus) == 3
    for sku in skus.values():
        await gw.set_stock(sku, {"W1": 2})
    answers = await asyncio.gather(*(gw.post("/v1/orders", order_body(f"p-{sku}-{n}", f"u-{n}", [{"sku": sku, "qty": 1}]),
                                             auth("k-web")) for sku in skus.values() for n in range(3)))
    assert sorted(r.status for r in answers) == [201] * 6 + [409] * 3
    await gw.caught_up()


def replica_of(cluster: EmbeddedValkeyCluster, primary: int) -> int:
    """The port of the node replicating ``primary`` now (ROLE: a replica names its primary's port)."""
    for port in cluster.procs:
        with contextlib.closing(node(port)) as r:
            role = r.execute_command("ROLE")
        if role[0] == b"slave" and int(role[2]) == primary:
            return port
    raise AssertionError(f"no replica of {primary}")


async def test_an_order_away_from_its_ids_home_waits_for_its_locator_on_a_replica(on_cluster, cluster):
    """With ``replicated`` the locator, written on the id's home primary, is acknowledged as the
    order's record is: once a replica has it too. A failover there could otherwise lose it, and
    the same id with another payload be taken in another partition."""
    gw = await on_cluster(durability="replicated", partitions=3)
    await gw.set_stock("SKU-1", {"W1": 5})
    placed = gw.layout.of_sku("SKU-1")
    order_id = next(f"l-{n}" for n in range(100) if gw.layout.home(f"l-{n}") != placed)
    client = gw.app[K.REDIS]
    home = client.get_node_from_key(keys.locator(order_id, gw.layout.home(order_id))).port
    assert home != client.get_node_from_key(keys.stock("SKU-1", placed)).port  # the order's own replica answers
    paused = cluster.procs[replica_of(cluster, home)]
    paused.send_signal(signal.SIGSTOP)
    try:
        resp = await gw.post("/v1/orders", order_body(order_id), auth("k-web"))
    finally:
        paused.send_signal(signal.SIGCONT)
    assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()
    assert (await gw.stock("SKU-1"))["available"] == 5  # refused before any reservation
    await asyncio.to_thread(cluster.wait_synced)
    resp = await gw.post("/v1/orders", order_body(order_id), auth("k-web"))
    assert resp.status == 201, await resp.text()
    assert (await gw.stock("SKU-1"))["available"] == 4
    await gw.caught_up()


async def holds_settled(gw) -> None:
    """Wait (expirer passes) until no partition keeps a hold not known committed."""
    async with asyncio.timeout(60):
        while sum(await gw.open_holds()):
            await gw.app[K.EXPIRER].wait_pass()


# last in the file: each run leaves the cluster failed over (the killed node back as a replica)
@pytest.mark.slow
@pytest.mark.parametrize("partitions", [1, 3])
async def test_a_primary_killed_under_load_loses_no_acknowledged_order_and_oversells_nothing(
        on_cluster, cluster, pg, partitions):
    """With 3 partitions every order also takes a unit of a SKU in another partition, on another
    primary, held there (gateway/spans.py): the primary killed holds HOT's partition, the
    orders' primary, so orders refused or unanswered leave holds that the sweep must give back."""
    gw = await on_cluster(durability="replicated", partitions=partitions)
    stock = 300
    await gw.set_stock("HOT", {"W1": stock})
    items = [{"sku": "HOT", "qty": 1}]
    if partitions > 1:
        side = next(f"SIDE-{n}" for n in range(100) if gw.layout.of_sku(f"SIDE-{n}") != gw.layout.of_sku("HOT"))
        await gw.set_stock(side, {"W1": 1000})
        items.append({"sku": side, "qty": 1})
    holder = gw.app[K.REDIS].get_node_from_key(keys.stock("HOT", gw.layout.of_sku("HOT"))).port
    acknowledged: list[str] = []
    refused: dict[int, int] = {}

    async def buyer(n: int) -> None:
        order_id = f"f-{n}"
        for _ in range(400):
            resp = await gw.post("/v1/orders", order_body(order_id, f"u-{n}", items), auth("k-web"))
            if resp.status in (200, 201):
                acknowledged.append(order_id)
                return
            assert resp.status in (409, 503), await resp.text()  # never a 500 through the failover
            refused[resp.status] = refused.get(resp.status, 0) + 1
            if resp.status == 409:
                return  # sold out
            await asyncio.sleep(0.05)  # a client's retry after Retry-After, shortened for the test
        pytest.fail(f"{order_id}: still 503 after 400 tries")

    async def rejoin() -> None:
        while holder in cluster.primary_ports() or len(cluster.primary_ports()) < 3:
            await asyncio.sleep(0.1)  # another process's state: polled
        # back as the new primary's replica: until then no order is acknowledged (none has a replica)
        cluster.start_node(holder)

    # 50 sales first, then the kill, then the other 350 buyers. Killed once 50 answers were in
    # (as before), one coalesced batch sometimes sold all 300 units first, and the buyers after
    # it got 409 from the sold-out memory without touching the dead node: no failover was seen.
    await asyncio.gather(*(buyer(n) for n in range(50)))
    assert len(acknowledged) == 50
    cluster.kill(holder)  # SIGKILL: the replica takes over after the node timeout
    await asyncio.gather(rejoin(), *(buyer(n) for n in range(50, 400)))
    assert refused.get(503, 0) > 0  # the failover was seen, as 503s
    assert len(acknowledged) == stock  # every unit sold once: the buyers past the stock got 409
    await asyncio.wait_for(gw.app[K.WRITER].wait_idle(), timeout=60)
    rows = {r["order_id"] for r in await pg.fetch("SELECT order_id FROM orders")}
    assert rows == set(acknowledged)  # none lost, none that was refused
    view = await gw.stock("HOT")
    assert view["available"] == 0 and view["reserved"] == stock
    if partitions > 1:  # the holds of orders that were refused or never answered given back
        await holds_settled(gw)
        view = await gw.stock(side)
        assert view["available"] == 1000 - stock and view["reserved"] == stock


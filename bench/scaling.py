"""A capacity model computed from one results file of ``make bench``; prints docs/scaling.md.

``python -m bench.scaling bench/results/latest.json [--write]``. Every measured figure is read
from the results file and shown with the field it came from; what the model assumes is a
constant here, stated in the text. So the page is regenerated, never edited, after a new run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from bench.run import Options

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "scaling.md"
TARGETS = (100_000, 600_000)  # orders/s; 600,000 is above Alibaba's 2020 Double-11 peak
ALIBABA_2020_PEAK = 583_000  # orders/s, as Alibaba announced it on 11 November 2020
HEADROOM = 0.6  # each Valkey primary, HTTP worker core and writer runs at ≤ 60% of its measured capacity


@dataclasses.dataclass(frozen=True)
class Figure:
    """One measured input: its value and how it follows from the results file (fields in backticks)."""

    what: str
    value: float
    fmt: str
    source: str

    def shown(self) -> str:
        return format(self.value, self.fmt)


def field(results: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the results, such as ``writer.drain.rows_per_s``."""
    value: Any = results
    for part in path.split("."):
        value = value[part]
    return value


def measured(results: dict[str, Any], paths: tuple[str, ...]) -> dict[str, float]:
    """Those of ``paths`` the run measured: a run without the cluster section has no ``cluster``
    (an older one no ``cluster.hot_sku``), a server the bench did not start has None (n/a)."""
    found = {}
    for path in paths:
        try:
            value = field(results, path)
        except (KeyError, TypeError):  # a section (or a part of one) the run did not have
            continue
        if value is not None:
            found[path] = value
    return found


def cpu_figure(results: dict[str, Any], what: str, paths: tuple[str, ...]) -> Figure:
    """Orders/s of a fully busy core from the costliest CPU per 1000 orders among ``paths``;
    ValueError when the run measured none of them."""
    costs = measured(results, paths)
    if not costs:
        raise ValueError(f"the results have no {' or '.join(paths)} (external servers are not measured): "
                         "run `make bench` with its embedded servers")
    path = max(costs, key=costs.__getitem__)
    among = " and ".join(f"`{p}`" for p in costs if p != path)
    return Figure(what, 1000 / costs[path], ",.0f", f"1000 ÷ `{path}` ({costs[path]:.4f} CPU s per 1000 orders)"
                  + (f"; the costlier of it and {among}" if among else ""))


SPREAD = "cluster.hot_sku.spread"  # the cluster run with a partition per primary, orders over many SKUs


def partitioned_primary(results: dict[str, Any]) -> Figure | None:
    """Orders/s of one fully busy Valkey primary when orders spread over a partition per primary:
    the busiest primary's CPU per 1000 orders of all, times the primaries (each had its share)."""
    hot = (results.get("cluster") or {}).get("hot_sku")
    if not hot:
        return None
    shares = hot["spread"]["primary_cpu_per_1000"]
    busiest = max(shares, key=lambda name: shares[name])
    own = shares[busiest] * hot["partitions"]
    return Figure("orders/s per Valkey primary, partitions spread over the primaries", 1000 / own, ",.0f",
                  f"1000 ÷ (`{SPREAD}.primary_cpu_per_1000` of the busiest, {shares[busiest]:.4f}, "
                  f"× `cluster.hot_sku.partitions`, {hot['partitions']}): CPU s per 1000 orders of its own")


def inputs(results: dict[str, Any]) -> dict[str, Figure]:
    """The model's measured inputs, by name."""
    rows = len(field(results, "copy.tables"))
    writer = field(results, "writer.drain.rows_per_s")
    spread = partitioned_primary(results)
    figures = {
        "valkey": spread or cpu_figure(results, "orders/s per Valkey primary, its core fully busy",
                                       ("cpu_per_1000.Redis", "cluster.partition_primary_cpu_per_1000")),
        "http": cpu_figure(results, "orders/s per HTTP worker core, fully busy",
                           ("cpu_per_1000.gateway", "cluster.gateway_cpu_per_1000", f"{SPREAD}.cpu_per_1000.gateway")),
        "rows_per_order": Figure("PostgreSQL rows per accepted order", rows, "d",
                                 f"len(`copy.tables`): one row in each of {', '.join(field(results, 'copy.tables'))}"),
        "writer": Figure("orders/s per writer, draining a backlog", writer, ",.0f",
                         "`writer.drain.rows_per_s` (it counts rows of the orders table: one per order)"),
        "writer_rows": Figure("rows/s per writer", writer * rows, ",.0f",
                              "`writer.drain.rows_per_s` × len(`copy.tables`)"),
        "postgres": Figure("rows/s into one PostgreSQL by raw COPY", field(results, "copy.rows_per_s") * rows, ",.0f",
                           "`copy.rows_per_s` (orders, each with its rows) × len(`copy.tables`)"),
    }
    if results.get("cluster"):
        figures["cluster"] = Figure("orders/s on the cluster ÷ on one Valkey, same run",
                                    field(results, "cluster.ratio_to_one_node"), ".2f",
                                    "`cluster.ratio_to_one_node` (every key on one primary: the cluster client's cost)")
    if spread:
        figures["one_partition"] = cpu_figure(results, "orders/s per Valkey primary holding the one partition",
                                              ("cpu_per_1000.Redis", "cluster.partition_primary_cpu_per_1000"))
        figures["hot"] = Figure("one SKU in buckets ÷ orders over many SKUs, orders/s on the cluster",
                                field(results, "cluster.hot_sku.ratio_hot_to_spread"), ".2f",
                                "`cluster.hot_sku.ratio_hot_to_spread`")
    return figures


def needs(figures: dict[str, Figure], target: float, headroom: float = HEADROOM) -> dict[str, float]:
    """What ``target`` orders/s takes, by the arithmetic the page shows."""
    rows = target * figures["rows_per_order"].value
    return {
        "valkey_primaries": math.ceil(target / (figures["valkey"].value * headroom)),
        "http_cores": math.ceil(target / (figures["http"].value * headroom)),
        "writers": math.ceil(target / (figures["writer"].value * headroom)),
        "postgres_rows_per_s": rows,
        "postgres_copy_multiple": rows / figures["postgres"].value,
    }


def sources(text: str) -> list[str]:
    """The results fields a source names (in backticks)."""
    return re.findall(r"`([\w.]+)`", text)


def _measured(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"measured {results['when']} on {m['cpus']} CPUs ({m['platform']}, Python {m['python']}), load by "
            f"{results['tool']}, options `{results['options']}`")


def _defaults_note(results: dict[str, Any]) -> list[str]:
    default = json.loads(json.dumps(dataclasses.asdict(Options())))  # as the results file has them
    changed = {k: v for k, v in results["options"].items() if default.get(k) != v and k != "cluster"}  # said below
    if not changed:
        return []
    return ["", f"**Not a `make bench` default run** (options changed: {changed}): shorter or fewer rounds "
                "give noisier figures. Do not publish this page; regenerate it from a default run."]


def markdown(results: dict[str, Any], source: str = "bench/results/latest.json") -> str:
    figs = inputs(results)
    plans = {t: needs(figs, t) for t in TARGETS}
    valkey, http, writer, pg = (figs[k].shown() for k in ("valkey", "http", "writer", "postgres"))

    def row(label: str, key: str, fmt: str, how: str) -> str:
        return f"| {label} | " + " | ".join(format(plans[t][key], fmt) for t in TARGETS) + f" | {how} |"

    lines = [
        "# Scaling: a capacity model from measured figures",
        "",
        f"Generated by `python -m bench.scaling {source} --write` from one run of `make bench`, "
        f"{_measured(results)}. Do not edit it: run `make bench` and regenerate it.",
        *_defaults_note(results),
        "",
        "## Where the model and the gateway part",
        "",
        "The model multiplies per-primary and per-writer figures across many of them. Two of them do not "
        "add up that way today, and one order shape is left out:",
        "",
        "- **Orders across partitions.** `OMS_PARTITIONS` spreads SKU groups, their orders and streams over "
        "the primaries, and `OMS_HOT_SKUS` one SKU's stock over buckets. An order whose lines are in several "
        "partitions is taken part by part (README, Orders across partitions): a script call in each, plus "
        "its commit. The bench's orders fit one partition, and so does the model.",
        "- **Streams and writers per partition.** Each partition has its stream and its writer, but every "
        "writer transaction takes one advisory lock for the one audit hash chain (`gateway/writer.py`, "
        "`EVENTS_LOCK`): writers beyond the first run one at a time. The writer count below is what "
        "per-partition chains would need.",
        "- **PostgreSQL past one primary.** The writers' rows all go to one database; the model gives the "
        "rows/s it must take and compares them with what one PostgreSQL took by raw COPY on the bench machine.",
        "",
        "## Measured inputs",
        "",
        "| input | value | from the results file |",
        "|---|---|---|",
        *(f"| {f.what} | {f.shown()} | {f.source} |" for f in figs.values()),
        "",
        "What each figure is, and its limits, is in bench/README.md. In short: CPU per 1000 orders is "
        "utime + stime from /proc over the fsync closed-loop rounds, until PostgreSQL held every order, ÷ the "
        "orders accepted; a fully busy core is taken to do 1000 ÷ that many orders per second. The rounds "
        "keep the gateway busy, so each script call carries as many orders as are waiting; at lower load per "
        "process each order costs more. Valkey's figure is all its process did per order: the reservation, "
        "WAITAOF, the writer's stream reads and deletes. Load generator and servers share the bench "
        f"machine's {results['machine']['cpus']} CPUs, so a process also waited for one, which no figure here counts.",
        "",
        "## Assumptions",
        "",
        f"- Headroom: each Valkey primary, HTTP worker core and writer runs at ≤ {HEADROOM:.0%} of the "
        "capacity measured, for bursts, failover and catch-up.",
        "- Orders spread evenly over partitions (so over primaries and writers), and over HTTP workers.",
        "- One order is the bench's: one line, one unit, stock taken from one warehouse; an accepted order "
        "writes one row each to `orders`, `order_items` (per line), `allocations` (per line and warehouse "
        "taken from) and `order_events` (`gateway/writer.py`, `Rows`). Orders with more lines or split "
        "allocations write more; payment, cancellation, expiry and shipping later add an event row and an "
        "update each (shipping also `inventory_movements` rows), not counted here: they come after the peak.",
        "- One HTTP worker per core; workers share nothing but Redis and PostgreSQL, so they add up across "
        "cores and machines.",
        "",
        f"## For {' and '.join(f'{t:,}' for t in TARGETS)} orders/s",
        "",
        f"Alibaba's 2020 Double-11 peak was {ALIBABA_2020_PEAK:,} orders/s; {TARGETS[-1]:,} is above it.",
        "",
        "| needed | " + " | ".join(f"{t:,} orders/s" for t in TARGETS) + " | arithmetic |",
        "|---|" + "---|" * len(TARGETS) + "---|",
        row("Valkey primaries", "valkey_primaries", ",d", f"⌈target ÷ ({valkey} × {HEADROOM})⌉"),
        row("HTTP worker cores", "http_cores", ",d", f"⌈target ÷ ({http} × {HEADROOM})⌉"),
        row("writer processes", "writers", ",d", f"⌈target ÷ ({writer} × {HEADROOM})⌉"),
        row("PostgreSQL rows/s", "postgres_rows_per_s", ",.0f", f"target × {figs['rows_per_order'].shown()}"),
        row("… as a multiple of raw COPY into one PostgreSQL", "postgres_copy_multiple", ",.1f",
            f"PostgreSQL rows/s ÷ {pg}"),
        "",
        "Replicas are not counted: with `OMS_DURABILITY=replicated` each primary needs one or more, so "
        "there are at least twice as many Valkey nodes as primaries, for no more capacity.",
    ]
    if "hot" in figs:
        lines += ["", f"The Valkey figure is the partitioned one: with a partition per primary each primary "
                  f"did {valkey} orders/s of its own per fully busy core, against {figs['one_partition'].shown()} "
                  "for the primary holding everything in one partition. Partitions cost Valkey CPU per order and "
                  "buy the spread; the likely causes, not measured apart, are the locator written for the "
                  "orders kept away from their id's home, smaller batches per script call and a WAITAOF per "
                  "node. One SKU in buckets sold at "
                  f"{figs['hot'].shown()}× the rate of orders spread over many SKUs, its Valkey CPU shared by "
                  "every primary (`cluster.hot_sku.hot.primary_cpu_per_1000`)."]
    if "cluster" in figs:
        lines += ["", f"The cluster section measured {figs['cluster'].shown()}× the one-node rate "
                  "(`cluster.ratio_to_one_node`) with every key on one primary: the cost of the cluster client "
                  "and node, not a gain from scale-out."
                  + ("" if "hot" in figs else " The Valkey figure above already uses the costlier of the one-node "
                     "and cluster measurements.")]
    else:
        lines += ["", "This run had no cluster section (`--no-cluster`): the Valkey and HTTP figures are "
                  "from one Valkey server only."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results file of make bench (bench/results/latest.json)")
    parser.add_argument("--write", action="store_true", help=f"write the page to {DOCS} too")
    args = parser.parse_args(argv)
    text = markdown(json.loads(args.results.read_text()), str(args.results))
    print(text, end="")
    if args.write:
        DOCS.write_text(text)
        print(f"written {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

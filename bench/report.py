"""The bench results as a table (console and Markdown), JSON, and a latency/load plot (PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib
from rich.console import Console
from rich.table import Table

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20
Row = tuple[str, ...]


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.1f} ms"


def _statuses(statuses: dict[int, int], unanswered: int = 0) -> str:
    counts = [f"{'error' if s == 0 else s}: {n:,}" for s, n in sorted(statuses.items())]
    return ", ".join(counts + ([f"UNANSWERED: {unanswered:,}"] if unanswered else []))


def _cpu(seconds: dict[str, float | None], fmt: str) -> str:
    return ", ".join(f"{name} {'n/a (external)' if v is None else format(v, fmt)}" for name, v in sorted(seconds.items()))


def _behind(result: dict[str, Any]) -> str:
    return " GENERATOR BEHIND" if result["generator_behind"] else ""


def throughput_rows(results: dict[str, Any]) -> list[Row]:
    rates, rounds = results["best_orders_per_s"], results["rounds"]
    names = {"ceiling": "ceiling orders/s", "naive": "naive orders/s", "gateway": "gateway orders/s (fsync)",
             "gateway_async": "gateway orders/s, OMS_DURABILITY=async"}
    rows = []
    for key, label in names.items():
        detail = ", ".join(f"{r['orders_per_s']:,.0f}" for r in rounds[key])
        other = {s: n for r in rounds[key] for s, n in r["statuses"].items() if s != 201}
        detail += f"; not 201: {_statuses(other)}" if other else ""
        if key == "gateway":
            detail += "; writer done " + ", ".join(f"{r['writer_lag_s']:.2f}" for r in rounds[key]) + " s after"
        rows.append((f"{label} (best of {len(rounds[key])})", f"{rates[key]:,.0f}", detail))
    return rows


def writer_rows(results: dict[str, Any]) -> list[Row]:
    push, drain, copy = results["writer"]["push"], results["writer"]["drain"], results["copy"]
    return [
        ("gateway orders/s, writer off (the backlog)", f"{push['orders_per_s']:,.0f}",
         f"{push['ok']:,} orders in {push['seconds']:.1f} s, left in the Redis stream"),
        ("writer rows/s, draining the backlog", f"{drain['rows_per_s']:,.0f}",
         f"{drain['rows']:,} rows in {drain['seconds']:.2f} s after a restart with the writer on; "
         f"in stream order: {'yes' if drain['in_stream_order'] else 'NO'}"),
        ("COPY rows/s", f"{copy['rows_per_s']:,.0f}",
         f"{copy['rows']:,} orders, raw asyncpg COPY of the same rows ({', '.join(copy['tables'])}); "
         f"of the order row alone {copy['orders_only_rows_per_s']:,.0f}/s"),
    ]


def open_loop_rows(results: dict[str, Any]) -> list[Row]:
    rows = []
    for ol in results["open_loops"]:
        ok, lat = ol["by_status_ms"].get(201, {}), ol["latency_ms"]
        detail = (f"201 p50 {_ms(ok.get('p50', math.nan))}; all p50 {lat['p50']:.1f} / p90 {lat['p90']:.1f} / "
                  f"p99.9 {lat['p99.9']:.1f} / max {lat['max']:.1f} ms; {_statuses(ol['statuses'], ol['unanswered'])}; "
                  f"sent {ol['sent_per_s']:,.0f}/s, send lag p99 {ol['send_lag_p99_ms']:.1f} ms, "
                  f"{ol['connections']:,} connections (wait for a free one p99 {ol['pool_wait_p99_ms']:.1f} ms)"
                  f"{_behind(ol)}")
        rows.append((f"open loop {ol['share']:.0%} = {ol['rate']:,.0f}/s", f"p99 201 {_ms(ok.get('p99', math.nan))}",
                     detail))
    floor = results["open_loop_ceiling"]
    rows.append((f"same open loop on the ceiling, {floor['rate']:,.0f}/s", f"p99 {_ms(floor['latency_ms']['p99'])}",
                 "the floor of this measurement (generator and server share the machine)" + _behind(floor)))
    return rows


def overload_rows(results: dict[str, Any]) -> list[Row]:
    over = results["open_loops"][-1]
    rss, vis = over["rss"], next(ol["visibility"] for ol in results["open_loops"] if "visibility" in ol)
    return [
        (f"overload {over['share']:.0%}: 503s", f"p99 {_ms(over['by_status_ms'].get(503, {}).get('p99', math.nan))}",
         "from the actual send (without the wait for a free connection): "
         + ", ".join(f"{s} p99 {_ms(v['wire_p99'])}" for s, v in over["by_status_ms"].items())
         + f"; {over['processes']} generator processes (the row above: their merged samples) used "
         f"{over['generator_cpu_s']:.1f} CPU s, the servers {_cpu(over['cpu_s'], '.1f')}"),
        ("gateway RSS in overload", f"+{(rss['peak'] - rss['before']) / MB:,.1f} MiB",
         f"before {rss['before'] / MB:,.1f} → {over['connections']:,} connections open {rss['connected'] / MB:,.1f} "
         f"→ peak {rss['peak'] / MB:,.1f} → after, writer caught up, "
         f"{rss['after'] / MB:,.1f} MiB (sum of VmRSS over the gateway's processes)"),
        (f"201 → row in PostgreSQL at {next(ol['share'] for ol in results['open_loops'] if 'visibility' in ol):.0%}",
         f"p99 {_ms(vis['p99_ms'])}",
         f"p50 {_ms(vis['p50_ms'])} / max {_ms(vis['max_ms'])}; {vis['seen']:,} seen, {vis['missing']:,} never; "
         f"polled every {vis['poll_ms']:.1f} ms (an upper bound by that much)"),
    ]


def cost_rows(results: dict[str, Any]) -> list[Row]:
    sold, cpu = results["sold_out"], results["cpu_per_1000"]
    measured = [v for v in cpu.values() if v is not None]
    return [
        ("sold-out SKU answers/s (409)", f"{sold['answers_per_s']:,.0f}",
         f"{_statuses(sold['statuses'])}; SOLD reserved afterwards: {sold['reserved_after']}"),
        ("CPU s per 1000 orders", f"{sum(measured):.3f}",
         _cpu(cpu, ".3f") + " (closed-loop rounds until the writer caught up; wrk not counted)"),
    ]


def cluster_rows(results: dict[str, Any]) -> list[Row]:
    """The rounds on a Valkey Cluster; none when the run skipped them (--no-cluster)."""
    c = results.get("cluster")
    if not c:
        return []
    rounds = ", ".join(f"{r['orders_per_s']:,.0f}" for r in c["rounds"])
    other = {s: n for r in c["rounds"] for s, n in r["statuses"].items() if s != 201}
    return [
        (f"gateway orders/s on a {c['primaries']}-primary Valkey Cluster (best of {len(c['rounds'])})",
         f"{c['best_orders_per_s']:,.0f}",
         f"{rounds}{'; not 201: ' + _statuses(other) if other else ''}; every key has hash tag {c['hash_tag']} "
         f"(slot {c['slot']}): all on {c['partition_primary']}, appendfsync {c['appendfsync']}; "
         "the cluster client's cost, not scale-out"),
        ("cluster CPU s per 1000 orders", f"{c['gateway_cpu_per_1000']:.3f} HTTP, "
         f"{c['partition_primary_cpu_per_1000']:.3f} Valkey", _cpu(c["cpu_per_1000"], ".3f")),
        *hot_rows(c.get("hot_sku")),
    ]


def hot_rows(h: dict[str, Any] | None) -> list[Row]:
    """The hot-SKU section: one SKU in buckets against orders spread over many SKUs."""
    if not h:
        return []
    rows = []
    for name, what in (("hot", f"one SKU in {h['buckets']} buckets"), ("spread", f"orders over {h['spread_skus']:,} SKUs")):
        r = h[name]
        rounds = ", ".join(f"{x['orders_per_s']:,.0f}" for x in r["rounds"])
        rows.append((f"{what}, {h['partitions']} partitions on the cluster (best of {len(r['rounds'])})",
                     f"{r['best_orders_per_s']:,.0f}",
                     f"{rounds}; Valkey CPU s per 1000 orders: {_cpu(r['primary_cpu_per_1000'], '.3f')}"))
    return rows


def ratio_rows(results: dict[str, Any]) -> list[Row]:
    """(name, value, target, met, meaning)."""
    p5 = results["P5"]
    p5_met = p5["rss_growth_mb"] <= 64 and p5["p99_201_ms"] <= 100
    rows = [
        ("P1", f"{results['P1']:.2f}", "≥ 0.8", results["P1"] >= 0.8, "gateway ÷ ceiling orders/s"),
        ("P2", f"{results['P2']:.1f}", "≥ 10", results["P2"] >= 10, "gateway ÷ naive orders/s"),
        ("P3", f"{results['P3']:.2f}", "≥ 0.5", results["P3"] >= 0.5, "writer drain rows/s ÷ COPY rows/s"),
        ("P4", _ms(results["P4"]), "≤ 10 ms", results["P4"] <= 10, "gateway p99 at 50% of its best rate"),
        ("P5", f"+{p5['rss_growth_mb']:.1f} MiB, 201 p99 {_ms(p5['p99_201_ms'])}, 503 p99 {_ms(p5['p99_503_ms'])}",
         "≤ 64 MB, ≤ 100 ms", p5_met, "at 3× the best rate: RSS growth, latency of accepted and refused"),
        ("P6", _ms(results["P6"]), "≤ 1 s", results["P6"] <= 1000, "201 → row in PostgreSQL, p99 at 80%"),
        ("P7", f"{results['P7']:.2f}", "≥ 0.9", results["P7"] >= 0.9, "sold-out answers/s ÷ ceiling requests/s"),
        ("fsync", f"{results['fsync_cost']:.2f}", "", None,
         "orders/s with fsync ÷ with async durability; Valkey appendfsync meanwhile: "
         + ", ".join(f"{mode} run {value}" for mode, value in results["appendfsync"].items())),
    ]
    if results.get("cluster"):
        c = results["cluster"]
        rows.append(("cluster", f"{c['ratio_to_one_node']:.2f}", "", None,
                     f"orders/s on the cluster ÷ on one Valkey ({c['one_node_orders_per_s']:,.0f}/s), this run; "
                     f"all keys on one primary, so what the cluster client costs"))
        if c.get("hot_sku"):
            rows.append(("hot SKU", f"{c['hot_sku']['ratio_hot_to_spread']:.2f}", "", None,
                         "one SKU in buckets ÷ orders spread over many SKUs, orders/s on the cluster this run"))
    return [(n, v, t, "" if met is None else ("yes" if met else "NO"), m) for n, v, t, met, m in rows]


def rows(results: dict[str, Any]) -> tuple[list[Row], list[Row]]:
    """The figures as (measure, value, detail) and the ratios as (name, value, target, met, meaning)."""
    figures = (throughput_rows(results) + writer_rows(results) + open_loop_rows(results)
               + overload_rows(results) + cost_rows(results) + cluster_rows(results))
    return figures, ratio_rows(results)


def _title(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"Measured {results['when']} on {m['cpus']} CPUs ({m['platform']}, Python {m['python']}), "
            f"load by {results['tool']}, took {results['took_s']:.0f} s, {results['options']}")


def markdown(results: dict[str, Any]) -> str:
    figures, ratios = rows(results)
    lines = [_title(results), "", "| measure | value | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in figures]
    lines += ["", "| ratio | value | target | met | meaning |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in ratios]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """p50 and p99 of the gateway's 201s against offered load; hollow where the generator was behind."""
    loops = results["open_loops"]
    x = [100 * ol["share"] for ol in loops]
    fig, ax = plt.subplots(figsize=(8, 5))
    for q, color in (("p50", "tab:blue"), ("p99", "tab:red")):
        y = [ol["by_status_ms"].get(201, {}).get(q, math.nan) for ol in loops]
        ax.plot(x, y, color=color, label=f"gateway 201 {q}")
        for xi, yi, ol in zip(x, y, loops, strict=True):
            ax.plot(xi, yi, "o", color=color, fillstyle="none" if ol["generator_behind"] else "full")
    over = loops[-1]
    if 503 in over["by_status_ms"]:
        ax.plot(x[-1], over["by_status_ms"][503]["p99"], "s", color="tab:orange", label="gateway 503 p99")
    floor = results["open_loop_ceiling"]
    share = 100 * floor["rate"] / results["best_orders_per_s"]["gateway"]
    for q, marker in (("p50", "v"), ("p99", "^")):
        ax.plot(share, floor["latency_ms"][q], marker, color="gray", label=f"ceiling {q} (floor)")
    ax.axhline(10, color="gray", linestyle=":", linewidth=1, label="P4 target, 10 ms")
    ax.set(xlabel=f"offered load, % of best closed-loop rate ({results['best_orders_per_s']['gateway']:,.0f}/s)",
           ylabel="latency from due time, ms (log)", yscale="log",
           title=f"Open loop latency, {results['when']} (hollow: generator behind)")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict[str, Any], console: Console, out: Path = RESULTS) -> None:
    """Print the table; write latest.json, latest.md and latest.png under ``out``."""
    figures, ratios = rows(results)
    table = Table(title=_title(results))
    for col in ("measure", "value", "detail"):
        table.add_column(col)
    for row in figures:
        table.add_row(*row)
    table.add_section()
    for name, value, target, met, meaning in ratios:
        table.add_row(name, value, f"target {target}, met: {met}; {meaning}" if target else meaning)
    console.print(table)
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "latest.md").write_text(markdown(results))
    plot(results, out / "latest.png")
    console.print(f"written {out}/latest.json, latest.md and latest.png")

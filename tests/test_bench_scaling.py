"""bench.scaling: the capacity model's arithmetic on a hand-made results file, and every input
it shows names the results field it came from."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest

from bench import scaling
from bench.run import Options

TABLES = ["orders", "order_items", "allocations", "order_events"]


@pytest.fixture
def results() -> dict:
    return {
        "when": "2026-12-01T10:00:00+00:00", "tool": "wrk", "took_s": 170.0,
        "machine": {"cpus": 2, "platform": "Linux-test", "python": "3.11.9"},
        "options": json.loads(json.dumps(dataclasses.asdict(Options()))),
        "cpu_per_1000": {"gateway": 0.0400, "writer": 0.0100, "supervisor": 0.0001, "Redis": 0.0135,
                         "PostgreSQL": 0.0300},
        "cluster": {"ratio_to_one_node": 0.93, "gateway_cpu_per_1000": 0.0473,
                    "partition_primary_cpu_per_1000": 0.0120},
        "writer": {"drain": {"rows": 70_000, "rows_per_s": 7_000.0}},
        "copy": {"rows": 70_000, "rows_per_s": 30_000.0, "tables": TABLES},
    }


def test_needs_follow_from_the_measured_rates_and_the_headroom(results):
    figures = scaling.inputs(results)
    assert figures["valkey"].value == 1000 / 0.0135  # the one-node Valkey cost more than the cluster primary
    assert figures["http"].value == 1000 / 0.0473  # the cluster's gateway cost more than the one-node one
    assert figures["rows_per_order"].value == 4 and figures["writer_rows"].value == 28_000
    assert figures["postgres"].value == 120_000 and figures["cluster"].value == 0.93
    assert scaling.needs(figures, 100_000) == {
        "valkey_primaries": 3, "http_cores": 8, "writers": 24,
        "postgres_rows_per_s": 400_000, "postgres_copy_multiple": 400_000 / 120_000}
    big = scaling.needs(figures, 600_000)
    assert big["valkey_primaries"] == math.ceil(600_000 / (1000 / 0.0135 * scaling.HEADROOM)) == 14
    assert big["http_cores"] == 48 and big["writers"] == 143 and big["postgres_rows_per_s"] == 2_400_000


def test_every_input_shown_names_the_fields_it_came_from(results):
    text = scaling.markdown(results)
    for figure in scaling.inputs(results).values():
        fields = scaling.sources(figure.source)
        assert fields, figure
        for path in fields:
            scaling.field(results, path)  # a KeyError if it named no field
        assert f"| {figure.what} | {figure.shown()} | {figure.source} |" in text
    assert "| Valkey primaries | 3 | 14 |" in text and "| HTTP worker cores | 8 | 48 |" in text
    assert results["when"] in text and "make bench" in text and "Not a `make bench` default run" not in text


def test_without_a_cluster_section_the_model_uses_the_one_node_figures(results):
    results["cluster"], results["options"]["cluster"] = None, False  # --no-cluster
    figures = scaling.inputs(results)
    assert "cluster" not in figures and figures["http"].value == 1000 / 0.0400
    assert "`cluster." not in figures["http"].source
    text = scaling.markdown(results)
    assert "no cluster section" in text and "Not a `make bench` default run" not in text


def test_a_run_without_valkey_cpu_or_with_other_options_says_so(results):
    quick = copy.deepcopy(results)
    quick["options"].update(seconds=2, rounds=1)
    assert "Not a `make bench` default run" in scaling.markdown(quick)
    results["cpu_per_1000"]["Redis"] = results["cluster"] = None  # external Valkey, no cluster section
    with pytest.raises(ValueError, match="cpu_per_1000.Redis"):
        scaling.inputs(results)


def test_the_command_prints_the_page_and_writes_it_when_asked(results, tmp_path, capsys, monkeypatch):
    path, page = tmp_path / "latest.json", tmp_path / "scaling.md"
    path.write_text(json.dumps(results))
    monkeypatch.setattr(scaling, "DOCS", page)
    assert scaling.main([str(path)]) == 0 and not page.exists()
    assert capsys.readouterr().out == scaling.markdown(results, str(path))
    assert scaling.main([str(path), "--write"]) == 0
    assert page.read_text() == capsys.readouterr().out


def test_with_the_hot_sku_section_the_valkey_figure_is_a_partitioned_primarys(results):
    results["cluster"]["hot_sku"] = {
        "partitions": 3, "ratio_hot_to_spread": 0.97,
        "spread": {"primary_cpu_per_1000": {"Valkey primary :1": 0.040, "Valkey primary :2": 0.046,
                                            "Valkey primary :3": 0.042},
                   "cpu_per_1000": {"gateway": 0.150}},
    }
    figures = scaling.inputs(results)
    assert figures["valkey"].value == 1000 / (0.046 * 3)  # the busiest primary, per 1000 orders of its own
    assert figures["one_partition"].value == 1000 / 0.0135 and figures["hot"].value == 0.97
    assert figures["http"].value == 1000 / 0.150  # the partitioned run's gateway cost the most
    page = scaling.markdown(results)
    assert "0.97× the rate of orders spread" in page and f"{1000 / 0.138:,.0f}" in page

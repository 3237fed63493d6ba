from __future__ import annotations

import io
import json

from stitchframe import Route
from stitchframe.report import (
    anchor_line_summary,
    pareto_front,
    route_records,
    route_table,
    routes_markdown,
    write_report,
)


def _routes():
    a = Route.chain(("a", 0, 4), flops=100, params=10, meta={"kind": "anchor", "accuracy": 60.0})
    b = Route.chain(("b", 0, 4), flops=300, params=30, meta={"kind": "anchor", "accuracy": 80.0})
    s1 = Route.chain(("a", 0, 2), ("b", 2, 4), flops=200, params=20, meta={"kind": "stitched", "accuracy": 75.0})
    s2 = Route.chain(("a", 0, 3), ("b", 3, 4), flops=150, params=15, meta={"kind": "stitched", "accuracy": 62.0})
    s3 = Route.chain(("a", 0, 1), ("b", 1, 4), flops=250, params=25, meta={"kind": "stitched", "accuracy": 74.0})
    s4 = Route.chain(("a", 0, 4), ("b", 3, 4), flops=400, params=40, meta={"kind": "stitched", "accuracy": 79.0})
    return [a, b, s1, s2, s3, s4]


def test_pareto_front():
    records = route_records(_routes())
    # s2 (150, 62) beats nothing cheaper? a (100, 60) < s2: on front; s3 (250, 74) is beaten by s1 (200, 75)
    assert pareto_front(records) == [0, 3, 2, 1]
    assert [r["pareto"] for r in records] == [True, True, True, True, False, False]
    ties = [{"id": 0, "flops": 1, "accuracy": 5.0}, {"id": 1, "flops": 2, "accuracy": 5.0}]
    assert pareto_front(ties) == [0]


def test_anchor_line_summary():
    summary = anchor_line_summary(route_records(_routes()))
    # line from (100, 60) to (300, 80): at 150 -> 65, at 200 -> 70, at 250 -> 75
    assert summary["stitched"] == 4
    assert summary["between_anchors"] == 3  # s4 costs more than the largest anchor
    assert summary["on_or_above_line"] == 1  # only s1 (75 >= 70)
    assert summary["below_line"] == 2
    assert summary["within_anchor_accuracy"] == 3
    assert summary["on_front"] == 2
    assert summary["intervals"][0]["routes"] == 3


def test_write_report(tmp_path):
    summary = write_report(_routes(), tmp_path, title="toy")
    data = json.loads((tmp_path / "routes.json").read_text())
    assert [r["id"] for r in data["routes"]] == list(range(6)) and data["pareto"] == [0, 3, 2, 1]
    assert data["summary"] == summary
    md = (tmp_path / "routes.md").read_text()
    assert md.count("\n| ") == 7  # header + 6 routes
    assert "`a[0:2] -> ? -> b[2:4]`" in md and "1 are on or above the line" in md
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_without_metrics():
    """GMACs (half the FLOPs) beside GFLOPs, and empty cells for metrics not measured."""
    r = Route.chain(("a", 0, 4), flops=10**9, params=10**6)
    md = routes_markdown(route_records([r]))
    assert "| id | route | kind | GMACs | GFLOPs | M params |" in md
    assert "| 0 | `a[0:4]` | anchor | 0.5000 | 1.0000 | 1.000 |  |  |  |  |" in md


def test_reports_give_macs_beside_flops(tmp_path):
    """routes.json records both units; the terminal table has a GMACs and a GFLOPs column."""
    from rich.console import Console

    write_report(_routes(), tmp_path, title="toy")
    data = json.loads((tmp_path / "routes.json").read_text())
    assert [(r["flops"], r["macs"]) for r in data["routes"]][:2] == [(100, 50), (300, 150)]
    assert "multiply-adds" in data["macs_unit"] and "2 FLOPs" in data["flops_unit"]
    console = Console(width=200, record=True, file=io.StringIO())
    routes = [Route.chain(("a", 0, 4), flops=2_516_000_000, params=5_700_000)]
    console.print(route_table(routes))
    text = console.export_text()
    assert "GMACs" in text and "GFLOPs" in text and "1.258" in text and "2.516" in text
    markup = Console(width=200, record=True, file=io.StringIO(), markup=True, emoji=True)  # a user's own console
    markup.print(route_table([Route.chain(("a", 0, 4), flops=1, params=1, meta={"kind": "anchor"})],
                             title="[bold]runs/:package:"))
    assert "[bold]runs/:package:" in markup.export_text()  # printed literally

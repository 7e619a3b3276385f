"""The Grafana board and the alert rules as files: the board is its generator's output, provisioning-ready
(a datasource variable, no fixed datasource uid), and every rule says what to do. Their PromQL is run
against a real Prometheus in tests/integration/test_plots.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "packaging/grafana/schedd-dashboard.json"
RULES = REPO / "packaging/prometheus/schedd-rules.yml"


def test_the_board_is_what_its_generator_writes():
    out = subprocess.run([sys.executable, str(BOARD.with_name("make-dashboard.py"))], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == json.loads(BOARD.read_text()), "run packaging/grafana/make-dashboard.py again"


def test_the_board_is_provisioning_ready():
    board = json.loads(BOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    assert {"CPUs allocated per node", "Queue length per node", "Start rate", "Queue wait quantiles",
            "CPUs in use per user", "Failures by reason", "Peers up"} <= titles
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "schedd-cluster"
    for p in panels:  # on the 24-column grid, no two panels overlap
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24


def test_every_rule_has_a_severity_and_says_what_is_wrong():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {"ScheddDown", "ScheddAbsent", "ScheddPeerDown", "ScheddQueueStuck",
                                           "ScheddFailuresHigh"}
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning") and r["for"]
        assert r["annotations"]["summary"] and r["annotations"]["description"]

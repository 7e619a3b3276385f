#!/usr/bin/env python3
"""Write schedd's Grafana board (schedd-dashboard.json beside this file) from the panel list below.

    python3 packaging/grafana/make-dashboard.py > packaging/grafana/schedd-dashboard.json

Every query selects job=~"$job", instance=~"$instance" (the board's variables over schedd_node_info)
and takes the node's name from schedd_node_info; the datasource is the variable $datasource, so the
file imports as is or drops into a Grafana provisioning directory. tests/unit/test_grafana_board.py
checks the JSON is this script's output; tests/integration/test_plots.py runs every query.
"""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
# On job and instance: one target scraped by two jobs has two info series for one instance, and a join on
# the instance alone is then many-to-many (an error on every panel while $job is All).
NODE = ' * on (job, instance) group_left (node) schedd_node_info'
panels = []
pid = 0
y = 0

def panel(title, targets, kind="timeseries", w=12, h=8, unit=None, desc="", x=None, **extra):
    global pid, y
    pid += 1
    p = {"id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
         "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l,
                      **({"instant": True} if kind == "stat" else {"range": True})}
                     for i, (e, l) in enumerate(targets)],
         "fieldConfig": {"defaults": {**({"unit": unit} if unit else {}), **extra.pop("defaults", {})}, "overrides": []},
         "options": extra.pop("options", {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                          "tooltip": {"mode": "multi", "sort": "desc"}})}
    p.update(extra)
    p["gridPos"] = {"w": w, "h": h}
    return p

rows = []
def row(title, items):
    rows.append((title, items))

row("Cluster now", [
    panel("Nodes scraped up", [(f'sum(up{{{SEL}}})', "up")], "stat", w=6, h=4,
          desc="schedd daemons Prometheus reaches (up == 1).", options={"reduceOptions": {"calcs": ["lastNotNull"]}}),
    panel("Running jobs", [(f'sum(schedd_jobs{{state=~"RUNNING|SUSPENDED", {SEL}}})', "running")], "stat", w=6, h=4,
          options={"reduceOptions": {"calcs": ["lastNotNull"]}}),
    panel("Pending jobs", [(f'sum(schedd_jobs{{state=~"PENDING|HELD", {SEL}}})', "pending")], "stat", w=6, h=4,
          options={"reduceOptions": {"calcs": ["lastNotNull"]}}),
    panel("Peers seen down", [(f'count(schedd_peer_up{{{SEL}}} == 0) or vector(0)', "down")], "stat", w=6, h=4,
          desc="(observer, peer) pairs where the observer missed 3 heartbeats.",
          options={"reduceOptions": {"calcs": ["lastNotNull"]}},
          defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}}),
])
row("Utilisation", [
    panel("CPUs allocated per node", [(f'schedd_node_cpus_allocated{{{SEL}}} / schedd_node_cpus{{{SEL}}}{NODE}', "{{node}}")],
          w=8, unit="percentunit", defaults={"min": 0, "max": 1}),
    panel("Memory allocated per node", [(f'schedd_node_memory_allocated_bytes{{{SEL}}} / schedd_node_memory_bytes{{{SEL}}}{NODE}', "{{node}}")],
          w=8, unit="percentunit", defaults={"min": 0, "max": 1}),
    panel("GPUs allocated per node", [(f'schedd_node_gpus_allocated{{{SEL}}} / clamp_min(schedd_node_gpus{{{SEL}}}, 1){NODE}', "{{node}}")],
          w=8, unit="percentunit", defaults={"min": 0, "max": 1}, desc="A node without GPUs shows 0."),
    panel("Cluster CPUs: allocated and in all", [(f'sum(schedd_node_cpus_allocated{{{SEL}}})', "allocated"),
                                                (f'sum(schedd_node_cpus{{{SEL}}})', "total")], w=12, unit="short"),
    panel("Cluster memory: allocated and in all", [(f'sum(schedd_node_memory_allocated_bytes{{{SEL}}})', "allocated"),
                                                  (f'sum(schedd_node_memory_bytes{{{SEL}}})', "total")], w=12, unit="bytes"),
])
row("Queue", [
    panel("Queue length per node", [(f'schedd_queue_length{{{SEL}}}{NODE}', "{{node}} startable"),
                                    (f'sum by (node) (schedd_jobs{{state="PENDING", {SEL}}}{NODE})', "{{node}} pending"),
                                    (f'sum by (node) (schedd_jobs{{state="HELD", {SEL}}}{NODE})', "{{node}} held")],
          w=12, unit="short", desc="startable: pending with dependencies met (schedd_queue_length)."),
    panel("Start rate", [(f'sum by (node) (rate(schedd_jobs_started_total{{{SEL}}}[$__rate_interval]){NODE})', "{{node}}")],
          w=12, unit="ops", desc="Jobs started per second."),
    panel("Queue wait quantiles", [
        (f'histogram_quantile({q}, sum by (le) (rate(schedd_job_queue_wait_seconds_bucket{{{SEL}}}[$__rate_interval])))', f"p{int(q * 100)}")
        for q in (0.5, 0.9, 0.99)], w=12, unit="s",
          desc="Time jobs spent eligible (pending) before they started, from the histogram schedd_job_queue_wait_seconds."),
    panel("Submit to start quantiles", [
        (f'histogram_quantile({q}, sum by (le) (rate(schedd_job_submit_to_start_seconds_bucket{{{SEL}}}[$__rate_interval])))', f"p{int(q * 100)}")
        for q in (0.5, 0.9, 0.99)], w=12, unit="s", desc="Holds and dependencies included."),
])
row("Users", [
    panel("CPUs in use per user", [(f'sum by (user) (schedd_user_cpus_allocated{{{SEL}}})', "{{user}}")], w=8, unit="short",
          defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}}),
    panel("Running jobs per user", [(f'sum by (user) (schedd_jobs{{state="RUNNING", {SEL}}})', "{{user}}")], w=8, unit="short"),
    panel("Starts per user", [(f'sum by (user) (rate(schedd_jobs_started_total{{{SEL}}}[$__rate_interval]))', "{{user}}")], w=8, unit="ops"),
])
row("Failures and peers", [
    panel("Failures by reason", [(f'sum by (reason) (rate(schedd_jobs_finished_total{{state="FAILED", {SEL}}}[$__rate_interval]))', "{{reason}}")],
          w=8, unit="ops", desc="FAILED jobs per second by reason (exit-code, signal, oom-kill, timeout, dependency, node-failure)."),
    panel("Ends by state", [(f'sum by (state) (rate(schedd_jobs_finished_total{{{SEL}}}[$__rate_interval]))', "{{state}}")], w=8, unit="ops"),
    panel("Peers up", [(f'schedd_peer_up{{{SEL}}}{NODE}', "{{node}} sees {{peer}}")], w=8, unit="short",
          defaults={"min": 0, "max": 1}, desc="1: the peer answers its heartbeats as seen from that node."),
    panel("Peer heartbeat age", [(f'(schedd_peer_last_heartbeat_age_seconds{{{SEL}}} < +Inf){NODE}', "{{node}} hears {{peer}}")],
          w=12, unit="s"),
    panel("Daemons up", [(f'up{{{SEL}}}', "{{instance}}")], w=12, unit="short", defaults={"min": 0, "max": 1}),
])

out = []
for title, items in rows:
    pid += 1
    out.append({"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
    y += 1
    x = 0
    rowh = 0
    for p in items:
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y = 0, y + rowh
            rowh = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        rowh = max(rowh, h)
        out.append(p)
    y += rowh
dash = {
    "__inputs": [], "uid": "schedd-cluster", "title": "schedd cluster", "tags": ["schedd"], "timezone": "browser",
    "editable": True, "graphTooltip": 1, "schemaVersion": 38, "version": 1, "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {},
         "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "job", "label": "scrape job", "type": "query", "datasource": DS,
         "query": {"query": "label_values(schedd_node_info, job)", "refId": "job"},
         "definition": "label_values(schedd_node_info, job)", "refresh": 2, "includeAll": True, "multi": True,
         "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1},
        {"name": "instance", "label": "node", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(schedd_node_info{job=~"$job"}, instance)', "refId": "instance"},
         "definition": 'label_values(schedd_node_info{job=~"$job"}, instance)', "refresh": 2, "includeAll": True,
         "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1},
    ]},
    "annotations": {"list": []},
    "panels": out,
}
print(json.dumps(dash, indent=2))

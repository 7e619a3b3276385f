"""/metrics on a real daemon in the test systemd: promtool's lint, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import WebNode, free_port

ALICE = "schedd-alice"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(node: WebNode) -> str:
    status, body, headers = node.http("/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def test_metrics_pass_promtool_and_count_transitions(web_node: WebNode):
    before = samples(scrape(web_node))
    done = [web_node.submit(["true"], user=ALICE) for _ in range(2)]
    bad = web_node.submit(["sh", "-c", "exit 3"], user=ALICE)
    held = web_node.submit(["true"], user=ALICE, Hold=("b", True))
    for jid in (*done, bad):
        web_node.wait(jid)
    t0 = time.monotonic()
    text = scrape(web_node)
    scrape_ms = (time.monotonic() - t0) * 1000
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, f"promtool: {lint.stdout}{lint.stderr}"
    now = samples(text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return now.get(key, 0) - before.get(key, 0)

    assert delta("schedd_jobs_submitted_total", user=ALICE) == 4
    assert delta("schedd_jobs_started_total", user=ALICE) == 3
    assert delta("schedd_jobs_finished_total", user=ALICE, state="COMPLETED", reason="success") == 2
    assert delta("schedd_jobs_finished_total", user=ALICE, state="FAILED", reason="exit-code") == 1
    assert now[("schedd_jobs", (("state", "HELD"), ("user", ALICE)))] == 1
    assert delta("schedd_job_queue_wait_seconds_count") == 3
    assert delta("schedd_job_submit_to_start_seconds_count") == 3
    assert now[("schedd_node_memory_bytes", ())] == 4 << 30
    assert now[("schedd_node_cpus", ())] >= 1
    assert now[("schedd_node_cpus_allocated", ())] == 0
    print(f"scrape took {scrape_ms:.1f} ms, {len(text)} bytes")
    web_node.manager_call("Cancel", "t", str(held))


def test_allocated_resources_while_a_job_runs(web_node: WebNode):
    jid = web_node.submit(["sleep", "30"], user=ALICE, Memory=("t", 512 << 20))
    web_node.wait(jid, {"RUNNING"})
    m = samples(scrape(web_node))
    assert m[("schedd_node_cpus_allocated", ())] == 1
    assert m[("schedd_node_memory_allocated_bytes", ())] == 512 << 20
    assert m[("schedd_jobs", (("state", "RUNNING"), ("user", ALICE)))] == 1
    web_node.manager_call("Cancel", "t", str(jid))
    web_node.wait(jid)
    m = samples(scrape(web_node))
    assert m[("schedd_node_cpus_allocated", ())] == 0
    assert m[("schedd_jobs_finished_total", (("reason", "cancelled"), ("state", "CANCELLED"), ("user", ALICE)))] >= 1


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def prometheus(web_node: WebNode, tmp_path: Path):
    """Debian's prometheus, started by PID on loopback with its own config and storage, scraping the daemon."""
    if shutil.which("prometheus") is None:
        pytest.fail("needs Debian's prometheus package (scripts/setup installs it)")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: schedd\n    static_configs:\n      - targets: ['127.0.0.1:{web_node.port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"prometheus did not become ready:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_real_prometheus_scrapes_and_answers_promql(web_node: WebNode, prometheus: str):
    held = [web_node.submit(["true"], user=ALICE, Hold=("b", True)) for _ in range(3)]
    query = 'sum(schedd_jobs{job="schedd",state="HELD"})'
    deadline = time.monotonic() + 30
    value = None
    while time.monotonic() < deadline:
        r = _get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
        assert r["status"] == "success", r
        result = r["data"]["result"]
        value = float(result[0]["value"][1]) if result else None
        if value == 3:
            break
        time.sleep(0.2)
    assert value == 3, f"Prometheus answered {value} for {query}"
    up = _get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": 'up{job="schedd"}'}))
    assert float(up["data"]["result"][0]["value"][1]) == 1
    targets = _get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    for jid in held:
        web_node.manager_call("Cancel", "t", str(jid))

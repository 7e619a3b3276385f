"""The cluster at a glance, on a two-node federation on loopback (p1 and p2 peer each other, one
test systemd each, booted once for the module):

- the dashboard's plots in Debian's real headless Chromium (Playwright): they hold points read from
  the page, they move when a job starts, no console error, no request leaves the host; screenshots
  (laptop and phone) are saved where the test prints;
- every PromQL expression of packaging/grafana/schedd-dashboard.json and of
  packaging/prometheus/schedd-rules.yml run by Debian's real Prometheus scraping both daemons:
  no error, a non-empty result for every panel; `promtool check rules` clean; with p2's daemon
  stopped, ScheddPeerDown (seen from p1) and ScheddDown (p2's target) fire.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import USERS, WebNode, free_port, running_schedd, write_tokens
from prereq import require
from sandbox import REPO, Sandbox, wait_for
from test_dashboard import chromium, expect

ALICE = USERS[0]
BOARD = REPO / "packaging/grafana/schedd-dashboard.json"
RULES = REPO / "packaging/prometheus/schedd-rules.yml"
ARTIFACTS = Path(os.environ.get("SCHEDD_ARTIFACTS", "/var/tmp/schedd-artifacts"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# What Grafana puts in for the board's variables when it sends a query.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$job": ".*", "$instance": ".*"}


def config(name: str, port: int, peer: str, peer_port: int) -> str:
    return (f'[node]\nname = "{name}"\n[resources]\ncpus = 2\nmemory = "2G"\n'
            '[jobs]\ndefault_memory = "128M"\nkill_wait = "2s"\n[federation]\nuid_min = 100\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\ntoken_file = "/etc/schedd/token"\n'
            'admin_token_file = "/etc/schedd/admin-token"\nheartbeat_interval = "300ms"\nhistory_interval = "1s"\n'
            f'[[peers]]\nname = "{peer}"\nurl = "http://127.0.0.1:{peer_port}"\n')


@pytest.fixture(scope="module")
def pair(users):
    """p1 and p2, peers of each other on loopback: (p1, p2)."""
    import contextlib

    ports = {"p1": free_port(), "p2": free_port()}
    with contextlib.ExitStack() as stack:
        booted = []
        for name, peer in (("p1", "p2"), ("p2", "p1")):
            sb = Sandbox(f"plots-{name}-{os.getpid()}")
            sb.prepare(config=config(name, ports[name], peer, ports[peer]))
            write_tokens(sb)
            stack.enter_context(running_schedd(sb, f"schedd-plots-{name}-journal.txt"))
            booted.append(WebNode(sb, ports[name]))
        p1, p2 = booted
        for a, b in ((p1, "p2"), (p2, "p1")):
            wait_for(lambda: nodes(a).get(b, {}).get("State") == "up", f"{b} up as its peer sees it", 30)
        yield p1, p2


def nodes(node: WebNode) -> dict[str, dict]:
    r = node.manager_call("ListNodes")
    return {row["Name"]["data"]: {k: v["data"] for k, v in row.items()} for row in json.loads(r.stdout)["data"][0]}


def submit(node: WebNode, *command: str, cpus: int = 1) -> int:
    out = node.schedctl("--json", "submit", "--cpus", str(cpus), "--", *command, user=ALICE, cwd="/tmp").stdout
    return json.loads(out)["id"]


def until(page, js: str, timeout: float = 15.0):
    """Poll a JS expression in the page until truthy, with a deadline (page.wait_for_function evals a
    string inside the page, which its CSP forbids; page.evaluate goes through the DevTools protocol)."""
    return wait_for(lambda: page.evaluate(js), js, timeout)


def points(page, sel: str) -> int:
    return int(page.get_attribute(sel, "data-points") or 0)


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def open_page(browser, node: WebNode, viewport: dict):
    ctx = browser.new_context(viewport=viewport)
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    pg.foreign, pg.errors = [], []
    pg.on("request", lambda r: None if r.url.startswith(node.url) else pg.foreign.append(r.url))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type in ("error", "warning") else None)
    pg.goto(node.url + "/")
    pg.wait_for_selector("#live.on")
    pg.wait_for_selector('#plots[data-ready="yes"]')
    return ctx, pg


def test_plots_hold_data_and_move_when_a_job_starts(pair, browser):
    p1, p2 = pair
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # A few jobs first: two quick ones, a failure, and one on p2.
    done = [submit(p1, "sh", "-c", "sleep 0.5"), submit(p1, "true"), submit(p1, "sh", "-c", "sleep 0.3; exit 3")]
    done += [submit(p1, "sleep", f"0.{n}") for n in range(3, 9)]  # more than the 2 CPUs hold: some wait
    on_p2 = [submit(p2, "sleep", f"0.{n}") for n in range(4, 8)]
    for j in done:
        p1.wait(j)
    for j in on_p2:
        p2.wait(j)
    ctx, page = open_page(browser, p1, {"width": 1400, "height": 1000})
    try:
        util = '#util-p1'
        # Both nodes have a utilisation plot; the history (1 s samples here) fills them.
        page.wait_for_selector('#util-p2')
        until(page, "document.querySelector('#util-p1').dataset.samples >= 3")
        assert points(page, util) >= 6  # CPUs and memory, 3 samples at least
        assert points(page, "#plot-queue") >= 3
        until(page, "document.querySelector('#plot-waits').dataset.points >= 3")
        gantt_jobs = set(page.get_attribute("#plot-gantt", "data-jobs").split(","))
        assert {str(j) for j in done} <= gantt_jobs, gantt_jobs  # the timeline shows the ended runs by CPU
        # Pointing at a bar names its job (the 0.8 s one: wide enough to aim at).
        longest = done[-1]
        x, y = page.evaluate(f"""(() => {{
            const el = scheddPlots.gantt, u = el.chart, b = el.gantt.bars.find((b) => b.id === {longest});
            const r = u.over.getBoundingClientRect();
            return [r.left + u.valToPos((b.start + b.end) / 2, "x"), r.top + u.valToPos(b.row, "y")];
        }})()""")
        page.mouse.move(x, y)
        expect(page.locator("#plot-gantt .gantt-hover")).to_contain_text(f"job {longest} sleep ({ALICE})")
        # The data behind the canvas, as uPlot holds it: CPU % of p1, each a number or a gap.
        data = page.evaluate("scheddPlots.util.get('p1').chart.data")
        assert len(data[0]) >= 3 and all(v is None or 0 <= v <= 100 for v in data[1])

        # A job starts: the CPU line of p1 goes up to 50 % (1 of 2 CPUs) at once (the live point), and the
        # timeline gets its bar, without waiting for the next sample.
        before = float(page.get_attribute(util, "data-last") or 0)
        assert before == 0
        run = submit(p1, "sleep", "30")
        t0 = time.monotonic()
        until(page, "Number(document.querySelector('#util-p1').dataset.last) === 50", 5)
        moved_ms = (time.monotonic() - t0) * 1000
        until(page, f"document.querySelector('#plot-gantt').dataset.jobs.split(',').includes('{run}')")
        queue_before = points(page, "#plot-queue")
        until(page, f"document.querySelector('#plot-queue').dataset.points > {queue_before}")
        print(f"the CPU plot moved {moved_ms:.0f} ms after `schedctl submit` of job {run} returned")
        # A wide job waits behind it: the queue plot's last pending point is 1.
        wide = submit(p1, "true", cpus=2)
        until(page, "scheddPlots.queue.chart.data[1].at(-1) === 1")

        # Every sample the daemon kept is on the page (a sample event lost on a busy stream is refetched).
        shown = page.evaluate("scheddPlots.util.get('p1').chart.data[0]")
        kept = json.loads(p1.http("/ui/history")[1])["nodes"]["p1"]["t"]
        assert [t for t in kept if t <= max(shown)] == [t for t in shown if t in set(kept)], (kept, shown)
        assert set(t for t in kept if t <= max(shown)) <= set(shown)

        shot = ARTIFACTS / "dashboard-plots.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 30_000
        assert page.foreign == [], f"the page fetched from elsewhere: {page.foreign}"
        assert page.errors == [], page.errors
    finally:
        ctx.close()

    # On a phone: the plots fit the screen's width, nothing scrolls sideways but the tables.
    ctx, phone = open_page(browser, p1, {"width": 390, "height": 844})
    try:
        widths = phone.evaluate("[...document.querySelectorAll('figure.plot')].map(f => f.getBoundingClientRect().right)")
        assert widths and max(widths) <= 390, widths
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        shot = ARTIFACTS / "dashboard-plots-phone.png"
        phone.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert phone.errors == [] and phone.foreign == []
    finally:
        ctx.close()
    for j in (wide, run):
        p1.manager_call("Cancel", "t", str(j))


# -- Prometheus ------------------------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus on loopback, scraping the given targets every second, with these rules."""

    def __init__(self, targets: list[str], rules: Path, workdir: Path, copies: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        cfg.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "schedd", "static_configs": [{"targets": targets}]}]
            + ([{"job_name": "schedd-copy", "static_configs": [{"targets": list(copies)}]}] if copies else []),
        }))
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._ready(), "prometheus ready", 60)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def board_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the board, with Grafana's variables put in."""
    board = json.loads(BOARD.read_text())
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{p['title']}: a variable the test does not know in {expr}"
            out.append((p["title"], expr))
    for v in board["templating"]["list"]:
        if v["type"] == "query":  # Grafana's label_values(SELECTOR, LABEL): the selector's series carry LABEL
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["definition"])
            assert m, v["definition"]
            out.append((f"variable {v['name']}", f'count by ({m[2]}) ({m[1].replace("$job", ".*")})'))
    return out


def rules() -> list[dict]:
    import yaml

    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules():
    require(None if os.path.exists(PROMTOOL) else "needs promtool (Debian's prometheus; scripts/setup installs it)")
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr


def test_board_and_rules_against_real_prometheus(pair):
    require(None if os.path.exists(PROMETHEUS) else "needs prometheus (scripts/setup installs it)")
    import yaml

    p1, p2 = pair
    work = Path(tempfile.mkdtemp(prefix="plots-prom-", dir="/var/tmp"))
    # The rules as shipped, with `for` cut to a second: a test cannot wait the minutes they ask for.
    quick = yaml.safe_load(RULES.read_text())
    for g in quick["groups"]:
        for r in g["rules"]:
            r["for"] = "1s"
    (work / "rules.yml").write_text(yaml.safe_dump(quick))
    # p1 also under a second scrape job (a second Prometheus job, a federation): the board's joins on
    # schedd_node_info must not turn many-to-many while $job is All.
    prom = Prometheus([f"127.0.0.1:{p1.port}", f"127.0.0.1:{p2.port}"], work / "rules.yml", work,
                      copies=(f"127.0.0.1:{p1.port}",))
    try:
        wait_for(lambda: len(prom.query('up{job="schedd"} == 1')["data"]["result"]) == 2, "both targets up", 30)
        # Jobs while Prometheus watches (scraped before and after, so the counters have a rate): starts, waits, a failure (reason exit-code), one left running.
        for node, command in ((p1, ["true"]), (p1, ["sh", "-c", "exit 4"]), (p2, ["true"]),
                              (p2, ["sh", "-c", "sleep 0.2; exit 5"])):
            node.wait(submit(node, *command))
        # And on p1 an array of 40 failing tasks: over the rule's 0.05/s averaged over 10 minutes (30 in
        # 10 min), and more than a quarter of p1's ends.
        p1.schedctl("submit", "--array", "1-40", "--", "sh", "-c", "exit 4", user=ALICE, cwd="/tmp")
        running = submit(p1, "sleep", "60")
        wait_for(lambda: p1.job(running)["State"] == "RUNNING", "job running", 20)
        wait_for(lambda: prom.query('sum(rate(schedd_jobs_finished_total{state="FAILED"}[1m])) > 0')["data"]["result"],
                 "a failure rate", 30)
        wait_for(lambda: prom.query('sum(rate(schedd_job_queue_wait_seconds_count[1m])) > 0')["data"]["result"],
                 "a start rate", 30)
        wait_for(lambda: prom.query('schedd_jobs{state="RUNNING"} > 0')["data"]["result"], "a scrape of the running job", 30)
        empty, errors = [], []
        for title, expr in board_queries():
            r = prom.query(expr)
            if r.get("status") != "success":
                errors.append(f"{title}: {expr}: {r.get('error')}")
            elif not r["data"]["result"]:
                empty.append(f"{title}: {expr}")
        assert errors == [], errors
        assert empty == [], f"panels with no data although jobs ran: {empty}"
        for rule in rules():
            r = prom.query(rule["expr"])
            assert r.get("status") == "success", f"{rule['alert']}: {r.get('error')}"
        def firing() -> set[tuple[str, str]]:
            return {(a["labels"]["alertname"], a["labels"].get("peer") or a["labels"].get("instance", ""))
                    for a in prom.get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"}

        # p1's failures fire ScheddFailuresHigh; nothing else fires while both daemons run.
        p1_target, p2_target = f"127.0.0.1:{p1.port}", f"127.0.0.1:{p2.port}"
        wait_for(lambda: ("ScheddFailuresHigh", p1_target) in firing(), "ScheddFailuresHigh for p1", 30)
        assert firing() == {("ScheddFailuresHigh", p1_target)}, firing()

        # p2's daemon stops: p1 stops hearing it, Prometheus stops reaching it.
        p2.sb.run(["systemctl", "stop", "schedd"], timeout=60)
        t0 = time.monotonic()

        def fired() -> set | None:
            names = firing()
            return names if {("ScheddPeerDown", "p2"), ("ScheddDown", p2_target)} <= names else None

        names = wait_for(fired, "ScheddPeerDown and ScheddDown firing for p2", 40)
        print(f"alerts firing {time.monotonic() - t0:.1f} s after p2 stopped: {sorted(names)}")
        assert not any(who in ("p1", p1_target) for n, who in names if n != "ScheddFailuresHigh"), names
        p1.manager_call("Cancel", "t", str(running))
    finally:
        prom.close()
        shutil.rmtree(work, ignore_errors=True)
        p2.sb.run(["systemctl", "start", "schedd"], timeout=60, check=False)


def test_the_history_survives_a_restart(pair):
    p1, _ = pair
    before = json.loads(p1.http("/ui/history")[1])
    t = before["nodes"]["p1"]["t"]
    assert len(t) >= 3 and before["persisted"] is True
    p1.sb.run(["systemctl", "restart", "schedd"], timeout=60)
    wait_for(lambda: _answers(p1), "p1 answering again", 30)
    after = json.loads(p1.http("/ui/history")[1])
    cols = after["nodes"]["p1"]
    assert after["restored"] is True and cols["t"][:len(t)] == t  # the samples from before the restart
    gap = cols["t"].index(t[-1]) + 1
    assert cols["cpus"][gap] is None and cols["t"][gap] > t[-1]  # then a gap for the time it was down
    status, body, _ = p1.http("/ui/history?since=nope")
    assert status == 400 and json.loads(body)["error"] == "bad-since"


def _answers(node: WebNode) -> bool:
    try:
        return node.http("/ui/state", timeout=2)[0] == 200
    except OSError:
        return False

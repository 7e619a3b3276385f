"""Federation under faults (issue 18): stalls, cut links, a one-way partition, restarts, kill -9.

One three-node cluster (tests/netcluster.py: a, b, c, 2 CPUs each, heartbeat 1 s), real systemds
and daemons. Each test submits jobs on `a` continuously, as an ordinary user, before, during and
after one fault; every job appends `start`/`end` lines to a run log shared by all nodes, naming
the node it ran on; the verdict (tests/runlog.py) comes from those lines and the daemons' final
reports, not from the daemons' word alone. SCHEDD_FAULT_REPEAT=N runs each fault N times.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import USERS

from netcluster import Cluster, NodeSpec, netns_unavailable, wait_for
from prereq import require, unavailable
from runlog import TERMINAL, Fault, Outcome, Verdict, judge, parse_log
from sandbox import REPO

ALICE = USERS[0]
HEARTBEAT = 1.0  # s, as in test_federation: a node is down after 3 silent beats
FAULT_S = 10.0  # how long each fault lasts (the figure)
INTERVAL = 0.5  # s between two submissions
AFTER_S = 4.0  # submissions go on this long after the fault ends
SHORT_S = 2  # the jobs' run time
LONG_S = 18  # one job per test outlives the fault (+ GRACE): a stale copy of it must be stopped, not end
GRACE = 5.0  # s after the fault ends by which a stale copy's program must have been stopped
NODE_MARK = "/var/lib/schedd/partition-node"  # each node's own name, in its own state directory
LOGDIR = Path(f"/var/tmp/schedd-partitions-{os.getpid()}")  # outside /tmp: every sandbox sees the host's
REPEAT = max(1, int(os.environ.get("SCHEDD_FAULT_REPEAT", "1")))
ROUNDS = pytest.mark.parametrize("round_", range(REPEAT))
TARGETS = ("b", "c", "any")
# $1 token, $2 seconds, $3 log: one O_APPEND line each (atomic), the node from its own state dir.
SCRIPT = (f'n=$(cat {NODE_MARK}); echo start "$1" "$n" $(date +%s.%N) >> "$3"; sleep "$2"; '
          f'echo end "$1" "$n" $(date +%s.%N) >> "$3"')


@pytest.fixture(scope="module")
def cluster(users):
    if shutil.which("ip") is None or shutil.which("curl") is None:
        unavailable("needs ip (iproute2) and curl (scripts/setup installs them)")
    if shutil.which("nft") is None:
        unavailable("needs nft (nftables; scripts/setup installs it)")
    require(netns_unavailable())
    c = Cluster(f"p{os.getpid() % 10000}", [NodeSpec(n, cpus=2) for n in ("a", "b", "c")],
                heartbeat=f"{int(HEARTBEAT * 1000)}ms")
    LOGDIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(LOGDIR, users[ALICE].pw_uid, users[ALICE].pw_gid)
    try:
        c.up()
        for name, node in c.nodes.items():
            (node.sb.state / "partition-node").write_text(name + "\n")
        yield c
    finally:
        c.down(keep_journals=REPO / "artifacts")
        shutil.rmtree(LOGDIR, ignore_errors=True)


class Submitter(threading.Thread):
    """Submits a job on the origin every INTERVAL until stopped. A Submit that returned an id is
    acknowledged; one that failed or timed out (origin stalled or restarting) is not, though the
    origin may carry it out later: those are found in its job list afterwards."""

    def __init__(self, cluster: Cluster, label: str, log: Path, interval: float = INTERVAL) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.origin = cluster.nodes["a"]
        self.label, self.log = label, log
        self.intents: dict[str, tuple[str, bool]] = {}  # token -> (Node, Requeue), for every attempt
        self.acked: dict[str, int] = {}  # token -> origin id
        self.failed = 0
        self.slowest = 0.0  # s, the longest Submit
        self.halt = threading.Event()
        self.n = 0

    def submit(self, target: str, requeue: bool, seconds: int) -> int | None:
        self.n += 1
        token = f"{self.label}:{self.n}"
        self.intents[token] = (target, requeue)
        argv = ["sh", "-c", SCRIPT, "sh", token, str(seconds), str(self.log)]
        items = ["Command", "as", str(len(argv)), *argv, "Node", "s", target, "Requeue", "b",
                 "true" if requeue else "false"]
        t = time.monotonic()
        r = self.origin.sb.run(["busctl", "--json=short", "--timeout=3", "--", "call", "org.schedd.Schedd1",
                                "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager", "Submit", "a{sv}", "3", *items],
                               user=ALICE, check=False, timeout=20)
        self.slowest = max(self.slowest, time.monotonic() - t)
        if r.returncode != 0:
            self.failed += 1
            return None
        self.acked[token] = jid = json.loads(r.stdout)["data"][0][0]
        return jid

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            self.submit(TARGETS[i % len(TARGETS)], i % 2 == 0, SHORT_S)
            i += 1
            self.halt.wait(self.interval)  # the pace of submissions, not a synchronisation

    def stop(self) -> None:
        self.halt.set()
        self.join(60)


def token_of(row: dict, label: str) -> str | None:
    cmd = row.get("Command") or []
    return cmd[4] if len(cmd) > 4 and cmd[4].startswith(f"{label}:") else None


def copies(cluster: Cluster, ids: set[int]) -> dict[int, list[tuple[str, dict]]]:
    """Every copy of a's jobs `ids` on the other nodes (peer API, asked from a's namespace), by Id."""
    a = cluster.nodes["a"]
    out: dict[int, list[tuple[str, dict]]] = {}
    for node in cluster.nodes.values():
        if node.name == "a":
            continue
        code, text = a.http("GET", f"{node.url}/api/v1/jobs?origin=a")
        assert code == 200, f"{node.name}: {code} {text}"
        for rec in sorted(json.loads(text)["Jobs"], key=lambda r: r["Id"]):
            if rec["OriginId"] in ids:
                out.setdefault(rec["OriginId"], []).append((node.name, rec))
    return out


def healthy(cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        wait_for(lambda n=node: all(r["State"] == "up" for r in n.nodes().values()), f"{node.name} to see all up",
                 timeout=30)


def settle(cluster: Cluster, sub: Submitter, timeout: float) -> tuple[dict[str, dict], dict[int, list], list[str]]:
    """Wait until every job of this test is terminal on a and every copy of it wherever it is; what
    is still not after `timeout` comes back as it is (the verdict says so)."""
    a = cluster.nodes["a"]
    deadline = time.monotonic() + timeout
    rows: dict[str, dict] = {}
    cps: dict[int, list] = {}
    while True:
        rows = {t: r for r in a.jobs() if (t := token_of(r, sub.label))}
        cps = copies(cluster, {r["Id"] for r in rows.values()})
        live = [t for t, r in rows.items() if r["State"] not in TERMINAL]
        live_copies = [(n, c) for cs in cps.values() for n, c in cs if c["State"] not in TERMINAL]
        if not live and not live_copies and set(sub.acked) <= set(rows):
            return rows, cps, []
        if time.monotonic() > deadline:
            problems = [f"{t}: missing at its origin" for t in set(sub.acked) - set(rows)]
            problems += [f"copy {c['Id']} on {n} of a's job {c['OriginId']} still {c['State']}" for n, c in live_copies]
            return rows, cps, problems
        time.sleep(0.2)


def outcomes(sub: Submitter, rows: dict[str, dict], cps: dict[int, list], failed: str) -> list[Outcome]:
    out = []
    for token, (_target, requeue) in sub.intents.items():
        row = rows.get(token)
        if row is None:
            if token in sub.acked:
                out.append(Outcome(token, requeue, "MISSING"))
            continue  # a Submit that never reached the origin
        every = cps.get(row["Id"], [])
        # Its current copy: on the node its origin names, the one whose start the origin mirrors (a node may
        # hold a copy per attempt: one fenced before it started, another that ran), else the latest attempt.
        mine = sorted((c for n, c in every if n == row["Node"]),
                      key=lambda c: (row["StartTime"] > 0 and c["StartTime"] == row["StartTime"], c.get("Attempt", 0),
                                     c["Id"]))
        stale = [c["EndTime"] / 1e6 for n, c in every
                 if n == failed and c["StartTime"] > 0 and c["EndTime"] > 0 and (not mine or c is not mine[-1])]
        out.append(Outcome(token, requeue, row["State"], row["Reason"], row["Restarts"], row["Node"],
                           mine[-1]["State"] if mine else None, token in sub.acked, row["Id"],
                           tuple(f"{n}#{c['Id']}/{c.get('Attempt', '-')} {c['State']} {c['Reason']}" for n, c in every),
                           max(stale) if stale else None))
    return out


EVIDENCE = re.compile(r"down|is up|requeue|fenc|stale|adopt|reconcil|placed it elsewhere|grant|lease", re.I)


def evidence(cluster: Cluster, label: str, nodes: tuple[str, ...]) -> str:
    """The daemons' journals kept in artifacts/, and their federation lines for the failure message."""
    art = REPO / "artifacts"
    art.mkdir(exist_ok=True)
    out = []
    for name in nodes:
        text = cluster.nodes[name].journal(3000)
        (art / f"partitions-{label.replace(':', '-')}-{name}-journal.txt").write_text(text)
        lines = [ln for ln in text.splitlines() if EVIDENCE.search(ln)]
        out.append(f"--- {name} ({len(lines)} federation lines, last 25)\n" + "\n".join(lines[-25:]))
    return "\n".join(out)


def waiting_on(cluster: Cluster, name: str) -> int:
    """How many copies of a's jobs wait (PENDING) on node `name` (a asks, over the peer API)."""
    a, node = cluster.nodes["a"], cluster.nodes[name]
    code, text = a.http("GET", f"{node.url}/api/v1/jobs?origin=a")
    assert code == 200, text
    return sum(1 for r in json.loads(text)["Jobs"] if r["State"] == "PENDING")


def exercise(cluster: Cluster, label: str, failed: str, inject: Callable[[], None],
             heal: Callable[[], None] | None, interval: float = INTERVAL) -> Verdict:
    """Submit continuously; once jobs run and wait everywhere (a long job on b, a burst that fills the
    node to fail so it holds waiting copies too), inject the fault, keep it FAULT_S (heal None: inject
    is the whole fault, e.g. a restart), go on submitting AFTER_S, then wait for every job to end and
    judge the run log."""
    healthy(cluster)
    log = LOGDIR / f"{label.replace(':', '-')}.log"
    log.touch()
    os.chown(log, *(lambda p: (p.st_uid, p.st_gid))(LOGDIR.stat()))
    sub = Submitter(cluster, label, log, interval)
    long_token = f"{label}:1"
    assert sub.submit("b", True, LONG_S) is not None
    for i, target in enumerate(("b", "c", "b", "c") if failed == "a" else (failed,) * 4):
        sub.submit(target, i % 2 == 0, SHORT_S)
    sub.start()
    fault_ran = False
    try:
        def started():
            runs = parse_log(log.read_text())
            short = [r for t, rs in runs.items() if t != long_token for r in rs]
            busy = failed == "a" or (any(r.node == failed and r.end is None for r in short)
                                     and waiting_on(cluster, failed) > 0)
            return long_token in runs and len(short) >= 3 and busy
        wait_for(started, "the long job and three others to start (one running on the node to fail, which "
                          "holds waiting copies too)", timeout=40)
        t0 = time.time()
        fault_ran = True
        inject()
        if heal is not None:
            try:
                time.sleep(FAULT_S)  # the fault's length, not a synchronisation
            finally:
                heal()
        t1 = time.time()
        time.sleep(AFTER_S)  # submissions go on after the fault
    finally:
        sub.stop()
        if not fault_ran:
            print(f"[{label}] fault never injected; log:\n{log.read_text()}")
    rows, cps, problems = settle(cluster, sub, timeout=90)
    text = log.read_text()
    (REPO / "artifacts").mkdir(exist_ok=True)
    shutil.copyfile(log, REPO / "artifacts" / f"partitions-{label.replace(':', '-')}.log")
    v = judge(outcomes(sub, rows, cps, failed), parse_log(text), Fault(failed, t0, t1), origin="a", grace=GRACE)
    v.problems += problems
    print(v.line(label) + f"; fault {t1 - t0:.1f}s; Submits that failed {sub.failed}, "
          f"slowest Submit {sub.slowest:.1f}s")
    if v.problems:
        msg = "\n".join(v.problems[:40])
        nodes = ("a", failed) if failed != "a" else ("a", "b")
        pytest.fail(f"{v.line(label)}\n{msg}\n{evidence(cluster, label, nodes)}", pytrace=False)
    return v


@ROUNDS
def test_the_origin_stalled_10s(cluster: Cluster, round_: int):
    """a's daemon SIGSTOPped 10 s: nothing failed anywhere else, so no job may run twice."""
    exercise(cluster, f"origin-stall{round_}", "a", lambda: cluster.freeze("a"), lambda: cluster.thaw("a"))


@ROUNDS
def test_a_run_node_stalled_10s(cluster: Cluster, round_: int):
    """b's daemon SIGSTOPped 10 s: a requeues what ran there; b must not start stale copies when it resumes."""
    exercise(cluster, f"run-stall{round_}", "b", lambda: cluster.freeze("b"), lambda: cluster.thaw("b"))


@ROUNDS
def test_a_run_node_cut_off_10s(cluster: Cluster, round_: int):
    """b's link down both ways for 10 s (its daemon runs on, alone)."""
    exercise(cluster, f"run-cut{round_}", "b", lambda: cluster.link("b", False), lambda: cluster.link("b", True))


@ROUNDS
def test_a_one_way_partition_10s(cluster: Cluster, round_: int):
    """Asymmetric: everything b sends to a peer's API port is dropped (its own connections, new or
    kept alive, get nowhere), while a and c still reach b and get its answers. a stops hearing
    b's heartbeats and declares it down; b still hears a's and believes all is well."""
    exercise(cluster, f"one-way{round_}", "b", lambda: cluster.block_outgoing("b", True),
             lambda: cluster.block_outgoing("b", False))


@ROUNDS
def test_the_origin_restarted_with_forwards_in_flight(cluster: Cluster, round_: int):
    """`systemctl restart schedd` on a while it forwards: no run node failed, so every job runs once."""
    exercise(cluster, f"origin-restart{round_}", "a", lambda: cluster.restart_daemon("a"), None, interval=0.15)


@ROUNDS
def test_a_run_node_killed_and_back_with_its_state(cluster: Cluster, round_: int):
    """b's daemon SIGKILLed and kept down 10 s, then started on its own SQLite (its jobs' scopes ran on)."""
    exercise(cluster, f"run-kill{round_}", "b", lambda: cluster.kill_daemon("b", restart=False),
             lambda: cluster.start_daemon("b"))

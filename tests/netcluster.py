"""A federation of schedd nodes on one machine, for tests and the benchmark.

Each node gets its own network namespace (a veth pair to a bridge that lives in a
namespace of its own, so the host's network is never touched; addresses in
10.203.0.0/24), its own test systemd (tests/sandbox.py, entered with nsenter), its own
state directory and SQLite, and its own schedd started with `systemctl start schedd`.
Taking a node's link down is `ip -n BRIDGE link set v-NAME down`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sandbox import Sandbox, ScheddCalls, wait_for  # noqa: E402,F401 (wait_for is the tests' too)

SUBNET = "10.203.0"
PORT = 7001


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    name = f"fedprobe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces here (ip netns add: {r.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass
class NodeSpec:
    name: str
    cpus: int = 1
    gpus: int = 0
    gpu_device: str = ""
    extra: str = ""
    # Dynamic membership (tests/integration/test_membership.py): seeds names the nodes whose URLs this
    # one joins through instead of listing [[peers]] (and static nodes do not list it); later: not started
    # by up() but by join(); node_name: the [node] name when it differs from the sandbox's; token: another.
    seeds: list[str] | None = None
    later: bool = False
    node_name: str = ""
    token: str = ""


@dataclass
class ClusterNode(ScheddCalls):
    name: str
    addr: str
    netns: str
    sb: Sandbox
    token: str

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{PORT}"

    def nodes(self) -> dict[str, dict]:
        r = self.manager_call("ListNodes")
        rows = [{k: v["data"] for k, v in row.items()} for row in json.loads(r.stdout)["data"][0]]
        return {row["Name"]: row for row in rows}

    def jobs(self, all_nodes: bool = False) -> list[dict]:
        args = ("1", "AllNodes", "b", "true") if all_nodes else ("0",)
        r = self.manager_call("ListJobs", "a{sv}", *args)
        return [{k: v["data"] for k, v in row.items()} for row in json.loads(r.stdout)["data"][0]]

    def http(self, method: str, url: str, body: object | None = None, token: str | None = "") -> tuple[int, str]:
        """curl from inside this node's namespace: (status, body). token=None sends no Authorization."""
        argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--max-time", "10"]
        tok = self.token if token == "" else token
        if tok is not None:
            argv += ["-H", f"Authorization: Bearer {tok}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary",
                     body if isinstance(body, str) else json.dumps(body)]
        r = self.sb.run([*argv, url], check=False)
        text, _, code = r.stdout.rpartition("\n")
        return int(code or 0), text

    def journal(self, lines: int = 80) -> str:
        return self.sb.journal("schedd", lines)


def wait_job(node: ClusterNode, job_id: int, pred, what: str, timeout: float = 30.0) -> dict:
    """The job as node answers for it once pred holds (by timeout); else the last answer and the journal."""
    last: dict = {}

    def check():
        nonlocal last
        last = node.job(job_id)
        return last if pred(last) else None

    try:
        return wait_for(check, f"job {job_id} on {node.name}: {what}", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {json.dumps(last)}\n{node.journal(60)}") from None


@dataclass
class Cluster:
    tag: str
    specs: list[NodeSpec]
    heartbeat: str = "500ms"
    nodes: dict[str, ClusterNode] = field(default_factory=dict)
    bridge_ns: str = ""
    namespaces: list[str] = field(default_factory=list)  # every one made, removed by down() even after a failed up()

    def url_of(self, name: str) -> str:
        return f"http://{SUBNET}.{[p.name for p in self.specs].index(name) + 1}:{PORT}"

    def config(self, i: int, spec: NodeSpec) -> str:
        peers = "" if spec.seeds is not None else "".join(
            f'\n[[peers]]\nname = "{p.name}"\nurl = "http://{SUBNET}.{j + 1}:{PORT}"\n'
            for j, p in enumerate(self.specs) if p is not spec and p.seeds is None)
        seeds = ""
        if spec.seeds is not None:
            seeds = "seeds = [" + ", ".join(f'"{self.url_of(n)}"' for n in spec.seeds) + "]\n"
        gpus = f'gpus = {spec.gpus}\ngpu_device = "{spec.gpu_device}"\n' if spec.gpus else ""
        return (f'[node]\nname = "{spec.node_name or spec.name}"\n[resources]\ncpus = {spec.cpus}\nmemory = "4G"\n{gpus}'
                f'[jobs]\ndefault_memory = "256M"\nkill_wait = "2s"\n{spec.extra}'
                # The test users are made with `useradd --system` (uids below login.defs' UID_MIN): this
                # cluster runs forwarded jobs for them. uid 1 (daemon) and root stay refused.
                f'[federation]\nuid_min = 100\n{seeds}'
                # Plain http on a private bridge, and an open dashboard/metrics: said in so many words.
                f'[http]\nlisten = "{SUBNET}.{i + 1}:{PORT}"\ntoken_file = "/etc/schedd/token"\n'
                f'allow_insecure_peers = true\npublic = true\n'
                f'heartbeat_interval = "{self.heartbeat}"\n{peers}')

    def up(self) -> None:
        token = secrets.token_hex(24)
        self.bridge_ns = f"fed{self.tag}-br"
        ip("netns", "add", self.bridge_ns)
        self.namespaces.append(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, spec in enumerate(self.specs):
            ns = f"fed{self.tag}-{spec.name}"
            addr = f"{SUBNET}.{i + 1}"
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("-n", self.bridge_ns, "link", "add", f"v-{spec.name}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", self.bridge_ns, "link", "set", f"v-{spec.name}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            sb = Sandbox(f"fed{self.tag}-{spec.name}", netns=ns)
            sb.prepare(config=self.config(i, spec))
            tok = sb.etc / "token"
            tok.write_text((spec.token or token) + "\n")
            os.chmod(tok, 0o600)
            self.nodes[spec.name] = ClusterNode(spec.name, addr, ns, sb, token)
        first = [self.nodes[p.name] for p in self.specs if not p.later]
        for node in first:
            node.sb.boot()
        for node in first:
            node.run(["systemctl", "start", "schedd"], timeout=60)
        names = {n.name for n in first}
        for node in first:
            wait_for(lambda n=node: all(r["State"] == "up" for r in n.nodes().values()) and set(n.nodes()) == names,
                     f"node {node.name} to see every peer up", timeout=30)

    def join(self, name: str) -> subprocess.CompletedProcess:
        """Boot a `later` node and start its schedd (which joins through its seeds): systemctl's answer."""
        node = self.nodes[name]
        node.sb.boot()
        return node.run(["systemctl", "start", "schedd"], timeout=60, check=False)

    def link(self, name: str, up: bool) -> None:
        ip("-n", self.bridge_ns, "link", "set", f"v-{name}", "up" if up else "down")

    # -- faults (tests/integration/test_partitions.py) ---------------------------------------------

    def freeze(self, name: str) -> None:
        """Stop the node's daemon as a VM pause or a swap storm would (SIGSTOP): its jobs, in their own
        scopes, keep running; its sockets keep taking connections the kernel queues."""
        self.nodes[name].run(["systemctl", "kill", "-s", "STOP", "schedd"])

    def thaw(self, name: str) -> None:
        self.nodes[name].run(["systemctl", "kill", "-s", "CONT", "schedd"])

    def block_outgoing(self, name: str, on: bool) -> None:
        """A one-way partition: every packet the node sends to a peer's API port is dropped (nftables in
        its namespace), so its own connections, new or pooled keep-alive ones, get nowhere; its answers
        on connections others open to it (source port PORT) still go out. Dropping only `ct state new`
        would leave its established keep-alive connections working: not a partition at all."""
        ns = self.nodes[name].netns
        if on:
            rules = (f"add table inet schedd_partition\n"
                     f"add chain inet schedd_partition out {{ type filter hook output priority 0; policy accept; }}\n"
                     f'add rule inet schedd_partition out oifname "eth0" tcp dport {PORT} drop\n')
            argv, text = ["nft", "-f", "-"], rules
        else:
            argv, text = ["nft", "delete", "table", "inet", "schedd_partition"], None
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=text, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nft in {ns}: {r.stderr.strip() or r.returncode}")

    def _daemon(self, name: str) -> tuple[str, str]:
        """(ActiveState, MainPID) of the node's schedd.service."""
        out = self.nodes[name].run(["systemctl", "show", "-p", "ActiveState,MainPID", "schedd"], check=False).stdout
        props = dict(line.partition("=")[::2] for line in out.splitlines())
        return props.get("ActiveState", ""), props.get("MainPID", "")

    def kill_daemon(self, name: str, restart: bool = True, timeout: float = 30.0) -> None:
        """SIGKILL the node's daemon (its jobs' scopes and its SQLite stay). restart: wait until systemd
        (Restart=on-failure) has it running again; else it stays down until start_daemon()."""
        node = self.nodes[name]
        _, before = self._daemon(name)
        if not restart:
            # stop cancels the restart systemd schedules 1 s after the kill: down for as long as the test says
            node.run(["sh", "-c", "systemctl kill -s KILL schedd; systemctl stop schedd; "
                                  "systemctl reset-failed schedd"], check=False)
            state, _ = self._daemon(name)
            if state not in ("inactive", "failed"):
                raise RuntimeError(f"schedd on {name} is {state} after kill -9 and stop")
            return
        node.run(["systemctl", "kill", "-s", "KILL", "schedd"])
        wait_for(lambda: (s := self._daemon(name))[0] == "active" and s[1] not in ("", "0", before),
                 f"systemd to restart schedd on {name}", timeout=timeout)

    def start_daemon(self, name: str) -> None:
        self.nodes[name].run(["systemctl", "start", "schedd"], timeout=60)

    def restart_daemon(self, name: str) -> None:
        self.nodes[name].run(["systemctl", "restart", "schedd"], timeout=60)

    def down(self, keep_journals: Path | None = None) -> None:
        for node in self.nodes.values():
            if keep_journals is not None and node.sb.pid:
                keep_journals.mkdir(exist_ok=True)
                (keep_journals / f"federation-{node.name}-journal.txt").write_text(node.sb.journal("schedd", 3000))
            try:
                node.sb.stop()
            finally:
                node.sb.cleanup()
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()

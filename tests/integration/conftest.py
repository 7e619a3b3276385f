"""Integration fixtures: a real systemd + system bus, schedd installed from the repo's own files.

The daemon is the installed /usr/local/bin/schedd (packaging/install.sh puts
this tree there), started with `systemctl start schedd` from systemd/schedd.service
and reached through the repo's D-Bus policy. Tests drive it with busctl, gdbus
and schedctl running inside the sandbox, as root or as throwaway users.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sandbox import REPO, STATE_ROOT, Sandbox, SandboxError, ScheddCalls  # noqa: E402
from prereq import require  # noqa: E402
from testusers import ensure_user  # noqa: E402,F401  (test_package.py imports it from here)

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
USERS = ("schedd-alice", "schedd-bob")
CONFIG = """
[node]
name = "testnode"
[resources]
memory = "4G"
[jobs]
default_memory = "256M"
kill_wait = "5s"
max_pending_per_user = 1000
max_argv_bytes = 200000
"""


def client(name: str) -> list[str]:
    """argv that runs one of the client scripts beside this file, as any test user: a clone may lie
    under /root (mode 0700), so the script is copied to a directory everyone can read."""
    d = STATE_ROOT / "clients"
    d.mkdir(parents=True, exist_ok=True)
    for p in (STATE_ROOT, d):
        p.chmod(0o755)
    dst, tmp = d / name, d / f".{name}.{os.getpid()}"
    shutil.copyfile(Path(__file__).with_name(name), tmp)
    tmp.chmod(0o644)
    os.replace(tmp, dst)  # whole, even for a process starting it right now
    return ["/opt/schedd/venv/bin/python", str(dst)]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (boots a test systemd in private namespaces)"
    for tool in ("unshare", "nsenter", "busctl", "gdbus", "setpriv", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (see README: set-up installs it)"
    if not Path("/lib/systemd/systemd").exists():
        return "needs systemd installed (/lib/systemd/systemd)"
    if not Path("/usr/local/bin/schedd").exists():
        return "needs schedd installed: run packaging/install.sh"
    if not Path("/opt/schedd/venv/bin/python").exists():
        return "needs the venv /opt/schedd/venv (scripts/setup --with-tests makes it)"
    return None


SANDBOX_FIXTURES = {"node", "sandbox_node", "users"}  # every booted-sandbox fixture uses `users`


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """What needs the booted sandbox is skipped without root, systemd or a tool, and fails so in CI;
    private-bus tests still run without root. Before any fixture: none boots for nothing."""
    if SANDBOX_FIXTURES & set(getattr(item, "fixturenames", ())):
        require(_why_not())


class Node(ScheddCalls):
    """A booted sandbox running schedd, with the calls tests make against it."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb

    # -- D-Bus via the command-line tools people use ---------------------------

    def busctl(self, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        opts = [a for a in args[:2] if a.startswith("--")]  # leading options, then the verb and its words
        return self.sb.run(["busctl", *opts, "--", *args[len(opts):]], user=user, check=check)

    def gdbus_manager(self, member: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
        """gdbus prints the D-Bus error *name* on failure (busctl prints only the message)."""
        return self.sb.run(["gdbus", "call", "--system", "--dest", "org.schedd.Schedd1", "--object-path",
                            "/org/schedd/Schedd1", "--method", f"org.schedd.Schedd1.Manager.{member}", *args],
                           user=user, check=False)

    def calls(self, calls: list[dict], user: str | None = None, concurrency: int = 1, timeout: float = 300) -> list:
        """Many Manager calls from one client (tests/integration/dbus_call.py); results in order."""
        r = self.sb.run(client("dbus_call.py"), user=user,
                        input=json.dumps({"calls": calls, "concurrency": concurrency}), timeout=timeout)
        return json.loads(r.stdout)

    def wait(self, job_id: int, states=TERMINAL, timeout: float = 30.0) -> dict:
        """Wait (with a deadline) until the job is in one of states."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(job_id)
            if j["State"] in states:
                return j
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {j['State']} after {timeout}s (wanted {states})\n"
                                     f"{self.sb.journal('schedd', 40)}")
            time.sleep(0.05)

    def schedctl(self, *args: str, user: str | None = None, check: bool = True, cwd: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        return self.sb.run(["schedctl", *args], user=user, check=check, cwd=cwd, timeout=timeout)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.sb.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()

    def daemon_pid_and_restarts(self) -> tuple[str, str]:
        return (self.unit_property("schedd.service", "MainPID"), self.unit_property("schedd.service", "NRestarts"))

    def idle(self) -> None:
        """Cancel whatever earlier tests left, and wait until no job holds resources."""
        r = self.manager_call("ListJobs", "a{sv}", "1", "States", "as", "4", "PENDING", "HELD", "RUNNING",
                              "SUSPENDED")
        for j in json.loads(r.stdout)["data"][0]:
            self.manager_call("Cancel", "t", str(j["Id"]["data"]), check=False)
        self.wait_for(lambda: self.unit_property("schedd.service", "ActiveState") == "active", "schedd active")


@pytest.fixture(scope="session")
def users() -> dict[str, pwd.struct_passwd]:
    return {u: ensure_user(u) for u in USERS}


@contextlib.contextmanager
def running_schedd(sb: Sandbox, journal_file: str):
    """Boot a prepared sandbox and start schedd in it; afterwards its journal is kept in artifacts/."""
    sb.boot()
    try:
        sb.run(["systemctl", "start", "schedd"], timeout=60)
        yield
    except SandboxError:
        print(sb.journal(), file=sys.stderr)
        raise
    finally:
        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / journal_file).write_text(sb.journal("schedd", 2000) if sb.pid else "")
        sb.stop()
        sb.cleanup()


@contextlib.contextmanager
def extra_node(name: str, config: str, *, systemd_args: tuple[str, ...] = (), seed=None):
    """A node of its own (another config, systemd options, or a state directory seeded by
    seed(state_dir) before schedd first starts), for one test module."""
    sb = Sandbox(f"{name}-{os.getpid()}", systemd_args=systemd_args)
    sb.prepare(config=config)
    if seed is not None:
        seed(sb.state)
    with running_schedd(sb, f"schedd-{name}-journal.txt"):
        yield Node(sb)


@pytest.fixture(scope="session")
def sandbox_node(users):
    sb = Sandbox(f"it-{os.getpid()}")
    sb.prepare(config=CONFIG)
    with running_schedd(sb, "schedd-journal.txt"):
        yield Node(sb)


@pytest.fixture
def node(sandbox_node: Node) -> Node:
    sandbox_node.idle()
    return sandbox_node


# -- a node that serves HTTP (metrics, dashboard) ------------------------------------------------

WEB_TOKEN = "obs-test-token-0123456789abcdef"  # the peers' token ([http] token_file)
ADMIN_TOKEN = "obs-admin-token-0123456789abcdef"  # the operators' ([http] admin_token_file)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebNode(Node):
    """A Node whose schedd listens on loopback (the sandbox shares the host's network): url, token."""

    def __init__(self, sb: Sandbox, port: int) -> None:
        super().__init__(sb)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.token = WEB_TOKEN
        self.admin_token = ADMIN_TOKEN

    def http(self, path: str, *, method: str = "GET", token: str | None = None, timeout: float = 10,
             body: object | None = None):
        """(status, body bytes, headers) of one request from the host; body: sent as JSON."""
        import urllib.error
        import urllib.request

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, method=method, headers=headers, data=data)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)


def write_tokens(sb: Sandbox) -> None:
    for name, text in (("token", WEB_TOKEN), ("admin-token", ADMIN_TOKEN)):
        p = sb.etc / name
        p.write_text(text + "\n")
        p.chmod(0o600)


@pytest.fixture(scope="session")
def web_sandbox(users):
    port = free_port()
    sb = Sandbox(f"obs-web-{os.getpid()}")
    sb.prepare(config=CONFIG + f'[http]\nlisten = "127.0.0.1:{port}"\ntoken_file = "/etc/schedd/token"\n'
                               'admin_token_file = "/etc/schedd/admin-token"\n')
    write_tokens(sb)
    with running_schedd(sb, "schedd-web-journal.txt"):
        yield WebNode(sb, port)


PEER_DENY_EXTRA = "schedd-test-extra"  # alice's supplementary group: on peer_node's deny list


@pytest.fixture(scope="session")
def peer_node(users):
    """A WebNode with one peer, "ghost" (nobody listens there), so its peer API takes forwards. It runs
    forwarded jobs for the test users (system accounts, uids below UID_MIN) but not for uid 1, and
    not for members of the default privileged groups or of schedd-test-extra."""
    from schedd.config import DEFAULT_DENY_GROUPS

    subprocess.run(["sh", "-c", f"getent group {PEER_DENY_EXTRA} >/dev/null || groupadd {PEER_DENY_EXTRA}; "
                                f"usermod -aG {PEER_DENY_EXTRA} {USERS[0]}"], check=True)
    port = free_port()
    deny = ", ".join(f'"{g}"' for g in (*DEFAULT_DENY_GROUPS, PEER_DENY_EXTRA))
    sb = Sandbox(f"peer-web-{os.getpid()}")
    sb.prepare(config=CONFIG + f'[federation]\nuid_min = 100\ndeny_groups = [{deny}]\n'
                               f'[http]\nlisten = "127.0.0.1:{port}"\ntoken_file = "/etc/schedd/token"\n'
                               'admin_token_file = "/etc/schedd/admin-token"\n'
                               f'[[peers]]\nname = "ghost"\nurl = "http://127.0.0.1:{free_port()}"\n')
    write_tokens(sb)
    with running_schedd(sb, "schedd-peer-journal.txt"):
        node = WebNode(sb, port)
        node.idle()
        yield node


@pytest.fixture
def web_node(web_sandbox: WebNode) -> WebNode:
    web_sandbox.idle()
    return web_sandbox

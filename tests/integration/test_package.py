"""The Debian package, end to end: built from this tree with packaging/build-deb, installed with
apt into a test systemd whose / is an overlay over the host's (tests/sandbox.py overlay_root:
the host's root, /opt/schedd and /usr/local/bin stay as they are), used as an ordinary user,
upgraded to a second build with jobs running and queued, and purged.

The figures (package size, Depends, the upgrade's) are printed and written to
artifacts/package-figures.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sandbox import REPO, Sandbox, SandboxError, wait_for  # noqa: E402
from prereq import require  # noqa: E402
from conftest import ensure_user  # noqa: E402

pytestmark = pytest.mark.integration

USER = "schedd-alice"
ENV = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"]
# Lintian tags that remain, each with its reason (packaging/debian/README.Debian says more).
EXPLAINED_TAGS = {
    # A local build has no published maintainer; build-deb takes SCHEDD_DEB_MAINTAINER for one that is.
    "bogus-mail-host", "bogus-mail-host-in-debian-changelog",
}
WORK = Path(f"/var/tmp/debpkg-test-{os.getpid()}")
HAS_OWNER = "busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s " \
            "org.schedd.Schedd1"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (boots a test systemd, installs a package in an overlay root)"
    for tool in ("dpkg-buildpackage", "dh", "dh_python3", "gcc", "apt-get", "unshare", "nsenter", "busctl",
                 "setpriv", "dbus-monitor", "man", "lintian"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/setup's PKGS installs it)"
    if not Path("/lib/systemd/systemd").exists():
        return "needs systemd installed (/lib/systemd/systemd)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs for the sandbox's root"
    return None


def build(version: str | None) -> Path:
    env = dict(os.environ)
    if version:
        env["SCHEDD_DEB_VERSION"] = version
    out = WORK / (version or "default")
    r = subprocess.run([str(REPO / "packaging/build-deb"), str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, f"build-deb failed:\n{r.stdout}\n{r.stderr}"
    deb = Path(r.stdout.strip().splitlines()[-1])  # the contract: its path is the last line
    assert deb.is_file() and re.fullmatch(r"schedd_[^_]+_[a-z0-9]+\.deb", deb.name), deb
    return deb


@pytest.fixture(scope="module")
def debs() -> tuple[Path, Path]:
    require(_why_not())
    WORK.mkdir(parents=True, exist_ok=True)
    WORK.chmod(0o755)
    first = build(None)
    version = subprocess.run(["dpkg-deb", "-f", str(first), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    second = build(f"{version}+upgrade1")
    yield first, second
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture(scope="module")
def sb(debs) -> Sandbox:
    sandbox = Sandbox(f"debpkg-{os.getpid()}", overlay_root=True)
    sandbox.prepare(install_schedd=False)
    sandbox.boot()
    try:
        # A clean machine: nothing of a source install (packaging/install.sh) in this root.
        files = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True, check=True).stdout
        listed = subprocess.run(["tar", "-t"], input=files, capture_output=True, check=True).stdout.decode().split()
        stale = [p.lstrip(".") for p in listed if not p.endswith("/")]
        sandbox.run(["rm", "-rf", "/opt/schedd", "/usr/local/bin/schedd", "/usr/local/bin/schedctl",
                     "/usr/local/bin/schedd-slurm", "/etc/schedd", "/etc/profile.d/schedd-slurm.sh",
                     "/usr/local/share/bash-completion/completions/schedctl",
                     *(f"/usr/local/share/man/man{p[-1]}/{p}" for p in ("schedctl.1", "schedd.8", "schedd.toml.5",
                                                                        "schedd-slurm.1")),
                     "/var/lib/schedd", "/usr/lib/schedd", "/etc/dbus-1/system.d/org.schedd.Schedd1.conf", *stale])
        # A container image's policy-rc.d (exit 101) keeps packages from starting services; a
        # machine has none, so this root has none either.
        sandbox.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
        yield sandbox
    except SandboxError:
        print(sandbox.journal(lines=400), file=sys.stderr)
        raise
    finally:
        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        if sandbox.pid:
            (artifacts / "package-journal.txt").write_text(sandbox.journal(lines=2000))
        sandbox.stop()
        sandbox.cleanup()


def ctl(sb: Sandbox, *args: object, check: bool = True, user: str = USER) -> subprocess.CompletedProcess:
    return sb.run(["/usr/bin/schedctl", *map(str, args)], user=user, cwd=f"/var/tmp/{USER}", check=check)


def show(sb: Sandbox, jid: int) -> dict:
    return json.loads(ctl(sb, "show", jid, "--json").stdout)


def submit(sb: Sandbox, *argv: str) -> int:
    out = ctl(sb, "submit", *argv).stdout
    m = re.fullmatch(r"Submitted job (\d+)\n", out)
    assert m, out
    return int(m.group(1))


def wait_state(sb: Sandbox, jid: int, states: set[str], timeout: float = 60) -> dict:
    return wait_for(lambda: (j := show(sb, jid))["State"] in states and j, f"job {jid} in {states}", timeout)


def unit(sb: Sandbox, name: str, prop: str) -> str:
    return sb.run(["systemctl", "show", "-P", prop, name], check=False).stdout.strip()


def apt_install(sb: Sandbox, deb: Path) -> float:
    t = time.monotonic()
    r = sb.run([*ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends", str(deb)], check=False,
               timeout=600)
    assert r.returncode == 0, f"apt-get install {deb.name}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return time.monotonic() - t


def bus_gaps(monitor_out: str) -> list[float]:
    """Seconds org.schedd.Schedd1 had no owner, from dbus-monitor's NameOwnerChanged lines."""
    gaps, lost = [], None
    for m in re.finditer(r'signal time=([\d.]+)[^\n]*member=NameOwnerChanged\n\s+string "org.schedd.Schedd1"\n'
                         r'\s+string "([^"]*)"\n\s+string "([^"]*)"', monitor_out):
        when, old, new = float(m.group(1)), m.group(2), m.group(3)
        if old and not new:
            lost = when
        elif new and lost is not None:
            gaps.append(when - lost)
            lost = None
    return gaps


def test_lintian_leaves_only_explained_tags(debs):
    r = subprocess.run(["lintian", "--no-tag-display-limit", str(debs[0])], capture_output=True, text=True,
                       timeout=300)
    tags = {m.group(1) for m in re.finditer(r"^[EW]: schedd: (\S+)", r.stdout, re.M)}
    assert tags <= EXPLAINED_TAGS, f"unexplained lintian tags {tags - EXPLAINED_TAGS}:\n{r.stdout}"


def test_install_use_upgrade_purge(debs, sb: Sandbox):
    first, second = debs
    ensure_user(USER)
    figures: dict[str, object] = {
        "package": first.name, "size_bytes": first.stat().st_size,
        "installed_size_kib": int(subprocess.run(["dpkg-deb", "-f", str(first), "Installed-Size"],
                                                 capture_output=True, text=True).stdout),
        "depends": subprocess.run(["dpkg-deb", "-f", str(first), "Depends"], capture_output=True,
                                  text=True).stdout.strip(),
    }

    # -- install: enabled and started as Debian does for services --------------
    figures["install_s"] = round(apt_install(sb, first), 1)
    assert unit(sb, "schedd.service", "UnitFileState") == "enabled"
    wait_for(lambda: unit(sb, "schedd.service", "ActiveState") == "active", "schedd started by the package")
    sb.run(["systemctl", "start", "schedd"])
    assert unit(sb, "schedd.service", "FragmentPath").endswith("lib/systemd/system/schedd.service")
    assert "/usr/bin/schedd" in unit(sb, "schedd.service", "ExecStart")
    verify = sb.run(["systemd-analyze", "verify", "/lib/systemd/system/schedd.service",
                     "/lib/systemd/system/schedd.slice"], check=False)
    assert verify.returncode == 0, verify.stderr
    mode = sb.run(["stat", "-c", "%a %U", "/var/lib/schedd", "/etc/schedd/schedd.toml"]).stdout.split("\n")
    assert mode[:2] == ["711 root", "644 root"]
    assert "/etc/schedd/schedd.toml" in sb.run(["dpkg-query", "-W", "-f", "${Conffiles}", "schedd"]).stdout

    # -- a job as an ordinary user, through the installed schedctl -------------
    jid = submit(sb, "--", "sh", "-c", "id -un")
    assert ctl(sb, "wait", jid).returncode == 0
    assert ctl(sb, "logs", jid).stdout.strip() == USER
    stamp = ctl(sb, "show", jid, "-p", "SubmitTime").stdout.strip()
    assert re.fullmatch(r"SubmitTimestamp=\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", stamp), stamp

    # -- Slurm's commands, through the package's links -----------------------------
    path = sb.run(["bash", "-lc", 'echo "$PATH"'], user=USER).stdout.strip()
    assert path.endswith(":/usr/lib/schedd/slurm-bin"), path  # last on PATH: a real Slurm always wins
    sbatch = sb.run(["/usr/lib/schedd/slurm-bin/sbatch", "--parsable", "--wrap", "echo from-sbatch-$SLURM_JOB_ID"],
                    user=USER, cwd=f"/var/tmp/{USER}")
    sid = int(sbatch.stdout.strip())
    assert ctl(sb, "wait", sid).returncode == 0
    assert sb.run(["cat", f"/var/tmp/{USER}/slurm-{sid}.out"], user=USER).stdout.strip() == f"from-sbatch-{sid}"

    # -- manuals and completion ------------------------------------------------
    for page, path in (("schedctl", "man1/schedctl.1.gz"), ("schedd", "man8/schedd.8.gz"),
                       ("schedd.toml", "man5/schedd.toml.5.gz"), ("schedd-slurm", "man1/schedd-slurm.1.gz")):
        assert sb.run(["man", "-w", page], user=USER).stdout.strip() == f"/usr/share/man/{path}"
    assert "schedctl(1)" in unit(sb, "schedd.service", "Documentation") or "man:schedctl(1)" in unit(
        sb, "schedd.service", "Documentation")

    def complete(line: str) -> list[str]:
        script = ('source /usr/share/bash-completion/completions/schedctl; read -ra COMP_WORDS <<< "$1"; '
                  '[[ $1 == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _schedctl; '
                  'printf "%s\\n" "${COMPREPLY[@]}"')
        return sb.run(["bash", "-c", script, "bash", line], user=USER).stdout.split()

    assert "submit" in complete("schedctl su")
    assert "--property" in complete("schedctl show --")
    held = submit(sb, "--hold", "--", "true")
    assert str(held) in complete("schedctl show ")  # the caller's own jobs
    ctl(sb, "cancel", held)

    # -- upgrade with jobs running and one queued ------------------------------
    shared = WORK / "shared"
    shared.mkdir(mode=0o777, exist_ok=True)
    shared.chmod(0o777)
    go, a_pid = shared / "go", shared / "a.pid"
    a = submit(sb, "--", "sh", "-c", f"echo $$ > {a_pid}; until [ -e {go} ]; do sleep 0.05; done; exit 0")
    # c ends during the upgrade: as soon as the daemon is off the bus, with a status to keep.
    c = submit(sb, "--", "sh", "-c", f"while {HAS_OWNER} | grep -q true; do sleep 0.02; done; exit 7")
    b = submit(sb, "--after", str(a), "--", "sh", "-c", "echo queued-ran")
    before = {j: wait_state(sb, j, {"RUNNING"}) for j in (a, c)}
    assert show(sb, b)["State"] == "PENDING"
    pid = int(wait_for(lambda: a_pid.exists() and a_pid.read_text().strip(), "job a's pid"))
    daemon_before = unit(sb, "schedd.service", "MainPID")
    # Who owns the name, with the bus's own timestamps: how long the daemon was off the bus.
    monitor = sb.popen(["sh", "-c", "echo $$ > /run/debpkg-monitor.pid; exec dbus-monitor --system "
                        "\"type='signal',member='NameOwnerChanged',arg0='org.schedd.Schedd1'\""],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        figures["upgrade_s"] = round(apt_install(sb, second), 1)
        wait_for(lambda: unit(sb, "schedd.service", "ActiveState") == "active", "schedd after the upgrade")
        version = sb.run(["dpkg-query", "-W", "-f", "${Version}", "schedd"]).stdout
        assert version.endswith("+upgrade1")
        assert unit(sb, "schedd.service", "MainPID") != daemon_before  # the new daemon, not the old one
        ja = show(sb, a)
        assert ja["State"] == "RUNNING" and ja["StartTime"] == before[a]["StartTime"]  # re-adopted, not restarted
        cgroup = sb.run(["cat", f"/proc/{pid}/cgroup"]).stdout
        assert f"schedd-job-{a}.scope" in cgroup  # the same process, in its own scope still
        jc = wait_state(sb, c, {"COMPLETED", "FAILED", "CANCELLED"})
        assert (jc["State"], jc["Reason"], jc["ExitCode"]) == ("FAILED", "exit-code", 7)
        assert show(sb, b)["State"] == "PENDING"
        log = sb.journal("schedd.service", lines=400)
        assert "1 running re-adopted, 1 ended while down" in log  # the new daemon's recovery said so
        go.touch()
        jb = wait_state(sb, b, {"COMPLETED", "FAILED", "CANCELLED"})
        ja = show(sb, a)
        assert (ja["State"], ja["ExitCode"]) == ("COMPLETED", 0)
        assert jb["State"] == "COMPLETED" and jb["StartTime"] >= ja["EndTime"]
        assert ctl(sb, "logs", b).stdout.strip() == "queued-ran"
        figures.update(jobs_running_during_upgrade=2, kept_running_and_readopted=1, ended_during_upgrade=1,
                       ended_with_right_status=1, queued_during_upgrade=1, queued_started_after=1)
    finally:
        sb.run(["sh", "-c", "kill $(cat /run/debpkg-monitor.pid)"], check=False)
        out, _ = monitor.communicate(timeout=30)
    gaps = bus_gaps(out)
    assert len(gaps) == 1, f"the name should be lost and taken once:\n{out}"
    figures["off_bus_s"] = round(gaps[0], 3)

    # -- purge: nothing of what dpkg -L listed is left --------------------------
    listed = sb.run(["dpkg", "-L", "schedd"]).stdout.split("\n")
    listed = [p for p in listed if p.startswith("/")]
    ours = [p for p in listed if "schedd" in p or "schedctl" in p]
    r = sb.run([*ENV, "apt-get", "purge", "-y", "-q", "schedd"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    left = sb.run(["sh", "-c", 'for p in "$@"; do [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done; true', "sh",
                   *ours, "/etc/schedd", "/var/lib/schedd", "/usr/lib/schedd"]).stdout.split()
    assert left == [], f"left after purge: {left}"
    assert unit(sb, "schedd.service", "LoadState") == "not-found"
    assert sb.run(["dpkg-query", "-W", "schedd"], check=False).returncode != 0
    figures["purged_paths"] = len(ours)

    print("package figures:", json.dumps(figures))
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "package-figures.json").write_text(json.dumps(figures, indent=1) + "\n")

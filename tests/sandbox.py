"""Boot a real systemd (with a real system bus) in private namespaces, for tests and the demo.

The recipe of DESIGN.md "Testing against a real systemd": as root, `unshare`
PID and mount namespaces; make / rprivate; tmpfs on /run, /tmp and
/etc/systemd/system; mask the units that touch the machine (tmpfiles above
all: it would wipe the host's /tmp); a target that wants dbus; give systemd
its own cgroup subtree (sandbox-NAME in every hierarchy, then a cgroup
namespace) so several sandboxes can run side by side and nothing is created
in the host's /sys/fs/cgroup tmpfs; exec /lib/systemd/systemd.

Files are installed into the sandbox only (tmpfs overlays): the project's own
units, D-Bus policy and polkit actions, and /etc/schedd, /var/lib/schedd bind
mounts of per-sandbox directories. Stop with SIGRTMIN+4 (poweroff).

Usage as a script: python3 tests/sandbox.py boot NAME [--dir D] [--install] | stop NAME | run NAME -- CMD
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = "/lib/systemd/systemd"
STATE_ROOT = Path("/var/tmp/schedd-sandboxes")

MASKED = [
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service", "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer", "dev-hugepages.mount", "dev-mqueue.mount", "sys-kernel-config.mount",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount", "systemd-sysusers.service",
    "systemd-firstboot.service", "systemd-random-seed.service", "systemd-logind.service", "getty.target",
    "console-getty.service", "getty@.service", "serial-getty@.service", "systemd-journal-flush.service",
    "systemd-remount-fs.service", "systemd-sysctl.service", "systemd-modules-load.service",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "systemd-binfmt.service",
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-hwdb-update.service", "systemd-journal-catalog-update.service",
    "systemd-machine-id-commit.service", "systemd-pstore.service", "systemd-boot-system-token.service",
    "systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service", "cron.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer", "man-db.timer",
    "logrotate.timer", "dpkg-db-backup.timer", "systemd-user-sessions.service",
]

# Runs as the process that becomes the sandbox's PID 1.
INNER = r"""
set -e
stage=$1; shift
for d in "$@"; do echo $$ > "$d/cgroup.procs"; done
mount --make-rprivate /
if [ -n "${SANDBOX_OVERLAY:-}" ]; then
  # An overlay root (opt-in): the host's / read-only below, every write (dpkg, apt) to the upper
  # dir; /dev, /proc, /sys and /var/tmp (the stage, the tests' shared files) are the real ones.
  ov=$SANDBOX_OVERLAY
  mount -t overlay overlay -o "lowerdir=/,upperdir=$ov/upper,workdir=$ov/work" "$ov/merged"
  for m in /dev /proc /sys /var/tmp; do mount --rbind "$m" "$ov/merged$m"; done
  mkdir -p "$ov/merged/.sandbox-oldroot"
  cd "$ov/merged"
  pivot_root . .sandbox-oldroot
  cd /
  umount -l /.sandbox-oldroot
  rmdir /.sandbox-oldroot
fi
umount -R /sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /etc/systemd/system
cp -a "$stage/units/." /etc/systemd/system/
for dir in /etc/dbus-1/system.d /usr/share/polkit-1/actions /etc/polkit-1/rules.d /etc/systemd/user; do
  src="$stage/overlay$dir"
  [ -d "$src" ] || continue
  mkdir -p "$dir"
  mount -t tmpfs -o mode=0755 tmpfs "$dir"
  cp -a "$src/." "$dir/"
done
if [ -z "${SANDBOX_OVERLAY:-}" ]; then  # an overlay root has its own, as a package installs them
  mount --bind "$stage/etc-schedd" /etc/schedd
  mount --bind "$stage/state" /var/lib/schedd
  # A second checkout (git worktree) tests its own install: its venv replaces /opt/schedd/venv in here.
  if [ -n "${SCHEDD_SANDBOX_VENV:-}" ]; then mount --bind "$SCHEDD_SANDBOX_VENV" /opt/schedd/venv; fi
fi
export container=schedd-sandbox
# SYSTEMD_ARGS: kernel command-line options for this systemd (in a container it reads its own argv).
exec unshare --cgroup "$SYSTEMD_BIN" --system --unit=sandbox.target $SYSTEMD_ARGS
"""


def _controller_dirs() -> list[Path]:
    """Our own cgroup in every mounted hierarchy: where sandbox-NAME is made."""
    mine: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _n, ctl, path = line.split(":", 2)
        mine[ctl] = path
    out = []
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # pure cgroup v2
        return [root / mine[""].lstrip("/")]
    for h in sorted(root.iterdir()):
        if h.is_symlink() or not h.is_dir():
            continue
        key = {"systemd": "name=systemd", "unified": ""}.get(h.name, h.name)
        if key in mine:
            out.append(h / mine[key].lstrip("/"))
    return out


def _rmtree_cgroups(d: Path) -> None:
    if not d.exists():
        return
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        d.rmdir()
    except OSError:
        pass


class SandboxError(RuntimeError):
    pass


class Sandbox:
    """One booted systemd. `run()` executes commands inside it (all its namespaces)."""

    def __init__(self, name: str, *, base: Path | None = None, netns: str | None = None,
                 systemd_args: tuple[str, ...] = (), overlay_root: bool = False) -> None:
        """systemd_args: options systemd takes from the kernel command line, e.g.
        systemd.unified_cgroup_hierarchy=1 (a cgroup v2-only sandbox on a hybrid host).
        overlay_root: the sandbox's / is an overlay over the host's, its writes kept in
        self.dir/root/upper (and lost with it), so a package can be installed, upgraded and
        purged in there with apt and dpkg while the host's root stays as it is. /etc/schedd
        and /var/lib/schedd are then the overlay's own, not bind mounts of the stage."""
        self.name = name
        self.overlay_root = overlay_root
        self.netns = netns
        self.systemd_args = systemd_args
        self.dir = (base or STATE_ROOT) / name
        self.stage = self.dir / "stage"
        self.state = self.stage / "state"
        self.etc = self.stage / "etc-schedd"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self._cgroups: list[Path] = []

    # -- set-up ---------------------------------------------------------------

    def prepare(self, *, install_schedd: bool = True, config: str | None = None, extra_units: dict | None = None) -> None:
        """Stage the files the sandbox gets: masks, target, and the project's own units/policies."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        if self.overlay_root:
            for d in ("upper", "work", "merged"):
                (self.dir / "root" / d).mkdir(parents=True)
        units = self.stage / "units"
        units.mkdir(parents=True)
        self.state.mkdir(mode=0o755)
        self.etc.mkdir()
        for u in MASKED:
            (units / u).symlink_to("/dev/null")
        (units / "sandbox.target").write_text(
            "[Unit]\nDescription=schedd test sandbox\nWants=dbus.socket dbus.service\n"
        )
        # User managers without logind: pam_systemd would set XDG_RUNTIME_DIR; say it here.
        (units / "user@.service.d").mkdir()
        (units / "user@.service.d/sandbox.conf").write_text("[Service]\nEnvironment=XDG_RUNTIME_DIR=/run/user/%i\n")
        user_units = self.stage / "overlay/etc/systemd/user"
        user_units.mkdir(parents=True)
        overlay_dbus = self.stage / "overlay/etc/dbus-1/system.d"
        overlay_polkit = self.stage / "overlay/usr/share/polkit-1/actions"
        overlay_rules = self.stage / "overlay/etc/polkit-1/rules.d"
        for host, dst in ((Path("/etc/dbus-1/system.d"), overlay_dbus),
                          (Path("/usr/share/polkit-1/actions"), overlay_polkit),
                          (Path("/etc/polkit-1/rules.d"), overlay_rules)):
            dst.mkdir(parents=True)
            if host.is_dir():
                for f in host.iterdir():
                    if f.is_file():
                        shutil.copy2(f, dst / f.name)
        if install_schedd:
            for f in ("schedd.service", "schedd.slice"):
                shutil.copy(REPO / "systemd" / f, units / f)
            shutil.copy(REPO / "systemd/schedd-user.service", user_units / "schedd.service")
            shutil.copy(REPO / "dbus/org.schedd.Schedd1.conf", overlay_dbus / "org.schedd.Schedd1.conf")
            shutil.copy(REPO / "packaging/org.schedd.Schedd1.policy", overlay_polkit / "org.schedd.Schedd1.policy")
        for name, text in (extra_units or {}).items():
            p = units / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        if config is not None:
            (self.etc / "schedd.toml").write_text(config)

    def boot(self, timeout: float = 30.0) -> None:
        if os.geteuid() != 0:
            raise SandboxError("booting a test systemd needs root")
        for mp in () if self.overlay_root else ("/etc/schedd", "/var/lib/schedd"):
            os.makedirs(mp, exist_ok=True)  # mount points; the sandbox binds its own dirs over them
        self._cgroups = []
        for parent in _controller_dirs():
            d = parent / f"sandbox-{self.name}"
            _rmtree_cgroups(d)
            d.mkdir()
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (parent / f).exists():
                    (d / f).write_text((parent / f).read_text())
            self._cgroups.append(d)
        cmd = ["unshare", "--fork", "--pid", "--mount", "--mount-proc", "/bin/sh", "-c", INNER, "sh",
               str(self.stage), *map(str, self._cgroups)]
        if self.netns:
            # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup hierarchies set up here.
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        log = open(self.dir / "boot.log", "wb")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_BIN": SYSTEMD,
               "SCHEDD_SANDBOX_VENV": os.environ.get("SCHEDD_SANDBOX_VENV", ""),
               "SYSTEMD_ARGS": " ".join(self.systemd_args),
               "SANDBOX_OVERLAY": str(self.dir / "root") if self.overlay_root else ""}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.pid is None:
            self.pid = self._find_pid1()
            if self.proc.poll() is not None:
                raise SandboxError(f"sandbox {self.name} exited during boot: {(self.dir / 'boot.log').read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SandboxError(f"sandbox {self.name}: systemd did not appear")
            time.sleep(0.01)
        (self.dir / "pid").write_text(str(self.pid))
        private = Path(f"/proc/{self.pid}/root/run/systemd/private")  # systemctl's socket
        while not private.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SandboxError(f"sandbox {self.name}: systemd never opened its control socket")
            time.sleep(0.01)
        left = max(1.0, deadline - time.monotonic())
        r = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
        state = r.stdout.strip()
        if state not in ("running", "degraded"):
            out = self.run(["systemctl", "--failed", "--no-pager"], check=False).stdout
            self.stop()
            raise SandboxError(f"sandbox {self.name}: system state {state!r}\n{out}")

    def _find_pid1(self) -> int | None:
        """The host pid of the sandbox's PID 1: unshare's child, once it has exec'd systemd."""
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        for k in kids:
            try:
                if os.readlink(f"/proc/{k}/exe").endswith("/systemd"):
                    return int(k)
            except OSError:
                continue
        return None

    # -- use ------------------------------------------------------------------

    def cmd(self, argv: list[str], user: str | int | None = None) -> list[str]:
        """nsenter into every namespace of the sandbox; as `user`, a login-like environment."""
        base = ["nsenter", "-t", str(self.pid), "-a"]
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
            runtime = f"/run/user/{pw.pw_uid}"
            base += ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--reset-env",
                     "env", f"HOME={pw.pw_dir}", f"USER={pw.pw_name}", f"LOGNAME={pw.pw_name}",
                     "PATH=/usr/local/bin:/usr/bin:/bin", f"XDG_RUNTIME_DIR={runtime}",
                     f"DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus"]
        return base + argv

    def cleanup(self) -> None:
        """Remove the staged files and state (after stop)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, argv: list[str], *, user: str | int | None = None, check: bool = True, timeout: float = 60,
            input: str | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the sandbox (optionally as another user); text output."""
        if cwd is not None:
            argv = ["sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        r = subprocess.run(self.cmd(argv, user), capture_output=True, text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def popen(self, argv: list[str], *, user: str | int | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(argv, user), **kw)

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-n", str(lines), "-o", "short-precise"]
        if unit:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    # -- tear-down ------------------------------------------------------------

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGRTMIN + 4)  # poweroff; SIGTERM would only re-execute it
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: takes the rest with it
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
        self.proc = None
        self.pid = None
        for d in self._cgroups:
            _rmtree_cgroups(d)
        self._cgroups = []


def wait_for(predicate, what: str, timeout: float = 20.0, interval: float = 0.05):
    """Poll predicate until truthy (with a deadline: never a sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ScheddCalls:
    """Calls tests make on the schedd in a sandbox (self.sb), with busctl as a user would."""

    sb: Sandbox

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return self.sb.run(argv, **kw)

    def manager_call(self, member: str, sig: str = "", *args: str, user: str | None = None,
                     check: bool = True) -> subprocess.CompletedProcess:
        argv = ["busctl", "--json=short", "--", "call", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                "org.schedd.Schedd1.Manager", member]
        if sig:
            argv += [sig, *args]
        return self.sb.run(argv, user=user, check=check)

    def submit(self, command: list[str], user: str | None = None, **props) -> int:
        """Submit through busctl; props are (signature, value) pairs keyed by spec key."""
        items: list[str] = ["Command", "as", str(len(command)), *command]
        for key, (sig, value) in props.items():
            items += [key, sig]
            if sig.startswith("a"):
                items += [str(len(value)), *map(str, value)]
            else:
                items.append(str(value).lower() if sig == "b" else str(value))
        r = self.manager_call("Submit", "a{sv}", str(1 + len(props)), *items, user=user)
        return json.loads(r.stdout)["data"][0][0]

    def job(self, job_id: int) -> dict:
        r = self.manager_call("GetJob", "t", str(job_id))
        return {k: v["data"] for k, v in json.loads(r.stdout)["data"][0].items()}

    def wait_for(self, predicate, what: str, timeout: float = 20.0):
        return wait_for(predicate, what, timeout)


def _main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="sandbox.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("boot")
    b.add_argument("name")
    b.add_argument("--config", help="schedd.toml text to install")
    s = sub.add_parser("stop")
    s.add_argument("name")
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    sb = Sandbox(a.name)
    if a.cmd == "boot":
        sb.prepare(config=a.config)
        sb.boot()
        # Keep the sandbox after we exit: the Popen handle is dropped, the pid file stays.
        (sb.dir / "cgroups").write_text(json.dumps([str(c) for c in sb._cgroups]))
        print(sb.pid)
        return 0
    try:
        pid = int((sb.dir / "pid").read_text())
    except FileNotFoundError:
        print(f"no sandbox named {a.name}", file=sys.stderr)
        return 1
    if a.cmd == "run":
        sb.pid = pid
        args = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        return subprocess.call(sb.cmd(args))
    try:
        os.kill(pid, signal.SIGRTMIN + 4)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for c in json.loads((sb.dir / "cgroups").read_text()):
        _rmtree_cgroups(Path(c))
    sb.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

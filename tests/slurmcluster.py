"""A light real Slurm 22.05 (slurmctld, slurmd, slurmrestd with JWT; munge; no slurmdbd) in a private
systemd booted with the project's recipe (tests/sandbox.py), for the Slurm peer's tests.

Config, and state with spool and logs, are directories of the sandbox's stage bind-mounted over
/etc/slurm and /var/lib/slurm inside it (the host's stay untouched); it shares
the host's network, on free loopback ports, and /var/tmp (the test users' homes: a shared filesystem
with the schedd sandbox). Without accounting, slurmctld keeps a finished job MinJobAge seconds: long
enough to mirror its end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sandbox import Sandbox, SandboxError

BINARIES = ("slurmctld", "slurmd", "slurmrestd", "munged", "scontrol", "squeue")
REST_USER = "slurm"  # slurmrestd refuses to run as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """Why this host cannot boot it (None: it can)."""
    gone = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if gone:
        return f"needs Debian's slurm-wlm, slurmrestd and munge ({', '.join(gone)} missing)"
    return None


class SlurmCluster:
    """One node, one partition `debug`, CPUs as `slurmd -C` sees them, 4000 MB of memory."""

    def __init__(self, name: str, memory_mb: int = 4000) -> None:
        self.sb = Sandbox(name)
        self.memory_mb = memory_mb
        self.rest_port = free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.key = secrets.token_bytes(32)
        self.dirs: dict[str, Path] = {}

    @property
    def key_path(self) -> Path:
        return self.dirs["/etc/slurm"] / "jwt.key"

    def start(self, timeout: float = 60.0) -> None:
        sb = self.sb
        sb.prepare(install_schedd=False)
        for inside in ("/etc/slurm", "/var/lib/slurm"):
            d = sb.dir / "slurm" / inside.strip("/").replace("/", "-")
            d.mkdir(parents=True)
            self.dirs[inside] = d
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        nodeline = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        nodeline = nodeline.split(" RealMemory=")[0]
        etc = self.dirs["/etc/slurm"]
        (etc / "slurm.conf").write_text(f"""ClusterName=schedd-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=/etc/slurm/jwt.key
StateSaveLocation=/var/lib/slurm
SlurmdSpoolDir=/var/lib/slurm/spool
SlurmctldLogFile=/var/lib/slurm/slurmctld.log
SlurmdLogFile=/var/lib/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=2
{nodeline} RealMemory={self.memory_mb} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        (self.dirs["/var/lib/slurm"] / "spool").mkdir()
        (etc / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
        self.key_path.write_bytes(self.key)
        self.key_path.chmod(0o600)
        sb.boot()
        for inside, d in self.dirs.items():
            sb.run(["mount", "--bind", str(d), inside])
        sb.run(["systemctl", "start", "munge"], timeout=30)
        sb.run(["systemd-run", "--quiet", "--unit=test-slurmctld", "-p", "Delegate=yes",
                "/usr/sbin/slurmctld", "-D", "-i"])
        sb.run(["systemd-run", "--quiet", "--unit=test-slurmd", "-p", "Delegate=yes", "-p", "KillMode=process",
                "/usr/sbin/slurmd", "-D"])
        self.start_rest()
        deadline = time.monotonic() + timeout
        while True:
            r = sb.run(["timeout", "5", "sinfo", "-h", "-o", "%T"], check=False)
            if r.stdout.strip() == "idle":
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"Slurm did not come up: {r.stdout} {r.stderr}\n{self.logs()}")
            time.sleep(0.3)
        self.wait_rest(deadline)

    def start_rest(self) -> None:
        self.sb.run(["systemd-run", "--quiet", "--unit=test-slurmrestd", "-p", f"User={REST_USER}",
                     "-p", "Environment=SLURM_JWT=daemon", "/usr/sbin/slurmrestd", "-a", "rest_auth/jwt", "-s", "openapi/v0.0.38",
                     f"127.0.0.1:{self.rest_port}"])

    def stop_rest(self) -> None:
        self.sb.run(["systemctl", "stop", "test-slurmrestd"], check=False)
        self.sb.run(["systemctl", "reset-failed", "test-slurmrestd"], check=False)

    def wait_rest(self, deadline: float) -> None:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.rest_port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SandboxError(f"slurmrestd did not listen on {self.rest_port}\n{self.logs()}") from None
                time.sleep(0.1)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return self.sb.run(argv, **kw)

    def squeue(self) -> dict[int, tuple[str, str, str]]:
        """Slurm's own word: job id -> (state, user, name), every job slurmctld still holds."""
        r = self.sb.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%T|%u|%j"])
        out = {}
        for line in r.stdout.splitlines():
            jid, state, user, name = line.split("|", 3)
            if jid.isdigit():
                out[int(jid)] = (state, user, name)
        return out

    def logs(self) -> str:
        out = []
        for f in sorted(self.dirs.get("/var/lib/slurm", Path("/nonexistent")).glob("*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-20:]))
        if self.sb.pid:
            out.append(self.sb.journal("test-slurmrestd", 30))
        return "\n".join(out)

    def stop(self) -> None:
        self.sb.stop()
        self.sb.cleanup()


def main() -> int:  # manual use: python3 tests/slurmcluster.py NAME  (boots, prints url and key path, waits)
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    c = SlurmCluster(sys.argv[1] if len(sys.argv) > 1 else f"slurm-{os.getpid()}")
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    print(c.url, c.key_path, c.sb.pid, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

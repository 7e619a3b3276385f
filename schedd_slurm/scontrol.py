"""scontrol: show job (Key=Value), show config (the lines clients read), show hostname(s), show
partition/node, requeue (same id, the stored script reruns), hold, release, suspend, resume."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys

from dbus_fast.errors import DBusError

from schedd_slurm import common, formats
from schedd_slurm.options import SlurmUsage
from schedd_slurm.states import slurm_reason
from schedd_slurm.timespec import format_date, format_elapsed, format_limit

PROG = "scontrol"
VERBS = {"requeue": "Requeue", "hold": "Hold", "uhold": "Hold", "release": "Release", "suspend": "Suspend",
         "resume": "Resume"}


def show_job(j: dict) -> str:
    st = formats.state(j)
    cmd = (j.get("Command") or [""])
    fields = [
        [("JobId", j["Id"]), ("JobName", j.get("Name", ""))],
        [("UserId", f"{j.get('UserName', '')}({j.get('User', '')})"), ("GroupId", f"{j.get('UserName', '')}({j.get('User', '')})"),
         ("MCS_label", "N/A")],
        [("Priority", j.get("Priority", 0)), ("Nice", 0), ("Account", "(null)"), ("QOS", "normal")],
        [("JobState", st), ("Reason", slurm_reason(j["State"], j.get("Reason", ""))), ("Dependency", "(null)")],
        [("Requeue", 1), ("Restarts", j.get("Restarts", 0)), ("BatchFlag", 1), ("Reboot", 0),
         ("ExitCode", formats.exit_code(j))],
        [("RunTime", format_elapsed(formats.elapsed_s(j), short=False)),
         ("TimeLimit", format_limit(formats.limit_s(j), short=False)), ("TimeMin", "N/A")],
        [("SubmitTime", format_date(j.get("SubmitTime", 0))), ("EligibleTime", format_date(j.get("SubmitTime", 0)))],
        [("AccrueTime", format_date(j.get("SubmitTime", 0)))],
        [("StartTime", format_date(j.get("StartTime", 0))), ("EndTime", format_date(j.get("EndTime", 0))),
         ("Deadline", "N/A")],
        [("Partition", common.CLUSTER), ("AllocNode:Sid", f"{socket.gethostname().split('.')[0]}:0")],
        [("NodeList", j.get("Node", "") if j.get("StartTime") else "(null)")],
        [("NumNodes", 1), ("NumCPUs", j.get("CPUs", 1)), ("NumTasks", 1), ("CPUs/Task", 1), ("ReqB:S:C:T", "0:0:*:*")],
        [("TRES", formats.tres(j))],
        [("MinCPUsNode", j.get("CPUs", 1)), ("MinMemoryNode", formats.mem_text(j)), ("MinTmpDiskNode", 0)],
        [("OverSubscribe", "OK"), ("Contiguous", 0), ("Licenses", "(null)"), ("Network", "(null)")],
        [("Command", cmd[0] if len(cmd) < 4 or "schedd_slurm.job" not in cmd else "(batch script)")],
        [("WorkDir", j.get("WorkingDirectory", ""))],
        [("StdErr", j.get("StderrPath", ""))], [("StdIn", "/dev/null")], [("StdOut", j.get("StdoutPath", ""))],
    ]
    if j.get("ArrayJobId"):
        fields[0][:1] = [("JobId", j["Id"]), ("ArrayJobId", j["ArrayJobId"]), ("ArrayTaskId", j["ArrayTaskId"])]
    if j.get("GPUs"):
        fields.append([("TresPerNode", f"gres:gpu:{j['GPUs']}")])
    return "\n".join("   " + " ".join(f"{k}={v}" for k, v in line) for line in fields).lstrip() + "\n"


def expand_hostlist(text: str) -> list[str]:
    """Slurm hostlist syntax: node[1-3,5],other -> node1 node2 node3 node5 other."""
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,]*)", text):
        prefix, ranges, suffix = m.group(1), m.group(2), m.group(3)
        if ranges is None:
            out.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{prefix}{str(i).zfill(width)}{suffix}")
    return [h for h in out if h]


async def show_config(c) -> str:
    props = await c.properties()
    lines = [
        ("AccountingStorageType", "accounting_storage/schedd"), ("ClusterName", common.CLUSTER),
        ("MaxArraySize", "100001"), ("MaxJobCount", "10000"), ("MinJobAge", "300 sec"),
        ("SchedulerType", "sched/schedd"), ("SelectType", "select/cons_tres"), ("SlurmctldHost[0]", props.get("NodeName", "")),
        ("SLURM_VERSION", "22.05.8"), ("PriorityType", "priority/basic"), ("ProctrackType", "proctrack/cgroup"),
    ]
    return ("Configuration data as of now\n" + "".join(f"{k:<23} = {v}\n" for k, v in sorted(lines)))


def main(argv: list[str]) -> int:
    async def body() -> int:
        args = [a for a in argv if a not in ("-o", "--oneliner", "-d", "--details", "-a", "--all", "-Q", "--quiet")]
        oneliner = "-o" in argv or "--oneliner" in argv
        if not args or args[0] in ("-h", "--help", "help"):
            print("Usage: scontrol [OPTIONS] [COMMAND]  (show job|config|hostnames|partition|node, requeue, hold, "
                  "release, suspend, resume)")
            return 0
        if args[0] in ("-V", "--version", "version"):
            print("slurm 22.05.8")
            return 0
        verb = args[0].lower()
        if verb == "show":
            what = args[1].lower() if len(args) > 1 else ""
            if what in ("hostname", "hostnames"):
                text = args[2] if len(args) > 2 else os.environ.get("SLURM_JOB_NODELIST", "")
                for h in expand_hostlist(text):
                    print(h)
                return 0
            if what in ("hostlist", "hostlistsorted"):
                print(",".join(args[2].split()) if len(args) > 2 else "")
                return 0
            async with common.connect() as c:
                if what in ("config", "conf"):
                    sys.stdout.write(await show_config(c))
                    return 0
                if what == "job" or what == "jobs":
                    if len(args) > 2:
                        jobs, missing = await common.resolve(c, common.parse_refs([args[2]], PROG))
                        if missing and not jobs:
                            print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
                            return 1
                    else:
                        jobs = await c.list_jobs(states=["PENDING", "HELD", "RUNNING", "SUSPENDED"])
                    for j in jobs:
                        text = show_job(j)
                        print(" ".join(text.split()) if oneliner else text)
                    return 0
                if what in ("partition", "partitions"):
                    nodes = await c.list_nodes()
                    print(f"PartitionName={common.CLUSTER}\n   AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL\n"
                          f"   Default=YES QoS=N/A\n   MaxNodes=1 MaxTime=UNLIMITED MinNodes=0\n"
                          f"   Nodes={','.join(n.get('Name', '') for n in nodes)}\n   State=UP "
                          f"TotalCPUs={sum(n.get('TotalCPUs', 0) for n in nodes)} TotalNodes={len(nodes)}\n")
                    return 0
                if what in ("node", "nodes"):
                    for n in await c.list_nodes():
                        print(f"NodeName={n.get('Name')} CPUTot={n.get('TotalCPUs')} CPUAlloc="
                              f"{n.get('TotalCPUs', 0) - n.get('AvailableCPUs', 0)}\n   RealMemory="
                              f"{n.get('TotalMemory', 0) >> 20} FreeMem={n.get('AvailableMemory', 0) >> 20}\n"
                              f"   Gres=gpu:{n.get('TotalGPUs', 0)}\n   State={'DOWN' if n.get('State') == 'down' else 'IDLE'}"
                              f" Partitions={common.CLUSTER}\n")
                    return 0
            raise SlurmUsage(f"invalid entity: {what or '(none)'} for keyword: show")
        if verb in VERBS:
            if len(args) < 2:
                raise SlurmUsage(f"too few arguments for keyword: {verb}")
            status = 0
            if verb == "requeue" and os.environ.get("SLURM_JOB_ID"):
                # From inside the job (submitit's checkpoint): the requeue stops this very scope before
                # schedd answers; the SIGTERM of that stop means it was done, as Slurm's scontrol returns 0.
                signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            async with common.connect() as c:
                for word in args[1:]:
                    jobs, missing = await common.resolve(c, common.parse_refs([word], PROG))
                    if missing and not jobs:
                        print(f"Invalid job id specified for job {word}", file=sys.stderr)
                        status = 1
                    for j in jobs:
                        try:
                            await c.call(VERBS[verb], "t", [j["Id"]])
                        except DBusError as e:
                            if verb == "release" and "InvalidState" in e.type:
                                continue
                            print(f"{verb} error for job {common.slurm_id(j)}: {e.text}", file=sys.stderr)
                            status = 1
            return status
        if verb == "ping":
            async with common.connect() as c:
                props = await c.properties()
            print(f"Slurmctld(primary) at {props.get('NodeName')} is UP")
            return 0
        raise SlurmUsage(f"invalid keyword: {args[0]} (schedd's scontrol knows show, requeue, hold, release, "
                         f"suspend, resume, ping)")

    return common.run(PROG, body)

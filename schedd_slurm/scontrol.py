"""scontrol: show job (Key=Value), show config (the lines clients read), show hostname(s), show
partition/node, requeue (same id, the stored script reruns), hold, release, suspend, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys

from dbus_fast.errors import DBusError

from schedd_slurm import common, depend, formats
from schedd_slurm.patterns import expand
from schedd_slurm.options import SlurmUsage
from schedd_slurm.states import slurm_reason
from schedd_slurm.timespec import format_date, format_elapsed, format_limit

PROG = "scontrol"
VERBS = {"requeue": "Requeue", "hold": "Hold", "uhold": "Hold", "release": "Release", "suspend": "Suspend",
         "resume": "Resume"}
ARRAY_VERBS = {"hold": "HoldArray", "uhold": "HoldArray", "release": "ReleaseArray"}


def _launcher_config(j: dict) -> dict:
    """The sbatch launcher's settings from the job's Command (empty for other jobs, or when hidden)."""
    cmd = j.get("Command") or []
    if len(cmd) >= 5 and cmd[-2] == "schedd_slurm.job":
        try:
            cfg = json.loads(cmd[-1])
        except ValueError:
            return {}
        return cfg if isinstance(cfg, dict) else {}  # any job may end its Command this way
    return {}


def _slurm_path(j: dict, cfg: dict, key: str) -> str:
    pattern = cfg.get(key) or (cfg.get("output") if key == "error" else None)
    if not pattern:
        return j.get("StdoutPath" if key == "output" else "StderrPath", "")
    path = expand(pattern, job_id=j["Id"], array_job_id=j.get("ArrayJobId") or 0,
                  task_id=j.get("ArrayTaskId") if j.get("ArrayJobId") else None, name=j.get("Name", ""),
                  user=j.get("UserName", ""), node=j.get("Node", ""))
    return os.path.join(j.get("WorkingDirectory", ""), path)


def show_job(j: dict) -> str:
    """scontrol show job's Key=Value layout (Slurm 22.05's lines and order)."""
    st = formats.state(j)
    cfg = _launcher_config(j)
    host = socket.gethostname().split(".")[0]
    started = bool(j.get("StartTime"))
    limit = formats.limit_s(j)
    end = j.get("EndTime") or (j["StartTime"] + limit * 1_000_000 if started and limit else 0)
    user = f"{j.get('UserName', '')}({j.get('User', '')})"
    node = j.get("Node", "") if started else "(null)"
    cpt = cfg.get("cpus_per_task") or 1
    lines = [
        [("JobId", j["Id"]), ("JobName", j.get("Name", ""))],
        [("UserId", user), ("GroupId", user), ("MCS_label", "N/A")],
        [("Priority", j.get("Priority", 0)), ("Nice", 0), ("Account", "(null)"), ("QOS", "normal")],
        [("JobState", st), ("Reason", slurm_reason(j["State"], j.get("Reason", ""), j.get("ExitCode", 0))),
         ("Dependency", depend.describe(j.get("After", []), cfg.get("waits") or {}))],
        [("Requeue", 1), ("Restarts", j.get("Restarts", 0)), ("BatchFlag", 1 if cfg else 0), ("Reboot", 0),
         ("ExitCode", formats.exit_code(j))],
        [("RunTime", format_elapsed(formats.elapsed_s(j), short=False)),
         ("TimeLimit", format_limit(limit, short=False)), ("TimeMin", "N/A")],
        [("SubmitTime", format_date(j.get("SubmitTime", 0))), ("EligibleTime", format_date(j.get("SubmitTime", 0)))],
        [("AccrueTime", format_date(j.get("SubmitTime", 0)))],
        [("StartTime", format_date(j.get("StartTime", 0))), ("EndTime", format_date(end)), ("Deadline", "N/A")],
        [("SuspendTime", "None"), ("SecsPreSuspend", 0), ("LastSchedEval", format_date(j.get("StartTime", 0))),
         ("Scheduler", "Main")],
        [("Partition", common.CLUSTER), ("AllocNode:Sid", f"{host}:0")],
        [("ReqNodeList", "(null)"), ("ExcNodeList", "(null)")],
        [("NodeList", node)],
        [("BatchHost", node)],
        [("NumNodes", 1), ("NumCPUs", j.get("CPUs", 1)), ("NumTasks", cfg.get("ntasks") or 1), ("CPUs/Task", cpt),
         ("ReqB:S:C:T", "0:0:*:*")],
        [("TRES", f"cpu={j.get('CPUs', 1)},mem={formats.mem_text(j)},node=1,billing={j.get('CPUs', 1)}"
                  + (f",gres/gpu={j['GPUs']}" if j.get("GPUs") else ""))],
        [("Socks/Node", "*"), ("NtasksPerN:B:S:C", "0:0:*:*"), ("CoreSpec", "*")],
        [("MinCPUsNode", j.get("CPUs", 1)), ("MinMemoryNode", formats.mem_text(j)), ("MinTmpDiskNode", 0)],
        [("Features", "(null)"), ("DelayBoot", "00:00:00")],
        [("OverSubscribe", "OK"), ("Contiguous", 0), ("Licenses", "(null)"), ("Network", "(null)")],
        [("Command", cfg.get("path") or "(null)" if cfg else " ".join(j.get("Command") or []) or "(null)")],
        [("WorkDir", j.get("WorkingDirectory", ""))],
        [("StdErr", _slurm_path(j, cfg, "error"))],
        [("StdIn", cfg.get("input") or "/dev/null")],
        [("StdOut", _slurm_path(j, cfg, "output"))],
        [("Power", "")],
    ]
    if j.get("ArrayJobId"):
        lines[0] = [("JobId", j["Id"]), ("ArrayJobId", j["ArrayJobId"]), ("ArrayTaskId", j["ArrayTaskId"]),
                    ("JobName", j.get("Name", ""))]
    if j.get("GPUs"):
        lines.insert(-1, [("TresPerNode", f"gres:gpu:{j['GPUs']}")])
    return "\n".join("   " + " ".join(f"{k}={v}" for k, v in line) for line in lines).lstrip() + "\n"


MAX_HOSTS = 65_536  # names one hostlist may expand to (this is one box: a real list is short)


def expand_hostlist(text: str) -> list[str]:
    """Slurm hostlist syntax: node[1-3,5],other -> node1 node2 node3 node5 other."""
    if text.count("[") != text.count("]"):
        raise SlurmUsage(f"Invalid hostlist: {text[:80]}")
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,]*)", text):
        prefix, ranges, suffix = m.group(1), m.group(2), m.group(3)
        if ranges is None:
            out.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not (lo.isascii() and lo.isdigit() and (not hi or (hi.isascii() and hi.isdigit()))) \
                    or int(hi or lo) < int(lo):
                raise SlurmUsage(f"Invalid hostlist: {text[:80]}")
            if len(out) + int(hi or lo) - int(lo) + 1 > MAX_HOSTS:
                raise SlurmUsage(f"Invalid hostlist: {text[:80]} names more than {MAX_HOSTS} hosts")
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


def _node_state(n: dict) -> str:
    """scontrol show node's State: DOWN, IDLE, or (schedctl drain) MIXED+DRAIN while jobs run, IDLE+DRAIN after."""
    return {"down": "DOWN", "draining": "MIXED+DRAIN", "drained": "IDLE+DRAIN"}.get(n.get("State", ""), "IDLE")


async def update_nodes(words: list[str]) -> int:
    """scontrol update NodeName=LIST State=DRAIN|RESUME|UNDRAIN [Reason=TEXT]: schedd's DrainNode/ResumeNode."""
    kv: dict[str, str] = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq:
            raise SlurmUsage(f"Invalid input: {w}")
        kv[key.lower()] = value
    if "nodename" not in kv:
        raise SlurmUsage("No valid entity in update command (only NodeName=... State=DRAIN|RESUME is supported)")
    unknown = sorted(set(kv) - {"nodename", "state", "reason"})
    if unknown:
        print(f"Update of this parameter is not supported: {unknown[0]}", file=sys.stderr)
        return 1
    state = kv.get("state", "").upper()
    if state not in ("DRAIN", "RESUME", "UNDRAIN"):
        print(f"Invalid node state specified: {kv.get('state', '')} (DRAIN, RESUME or UNDRAIN)", file=sys.stderr)
        return 1
    if state == "DRAIN" and not kv.get("reason"):
        print("You must specify a reason when DOWNING or DRAINING a node. Request denied", file=sys.stderr)
        return 1
    status = 0
    async with common.connect() as c:
        for node in expand_hostlist(kv["nodename"]):
            try:
                if state == "DRAIN":
                    await c.call("DrainNode", "ss", [node, kv["reason"]])
                else:
                    await c.call("ResumeNode", "s", [node])
            except DBusError as e:
                print(f"slurm_update error: {e.text}", file=sys.stderr)
                status = 1
    return status


def main(argv: list[str]) -> int:
    async def body() -> int:
        args = [a for a in argv if a not in ("-o", "--oneliner", "-d", "--details", "-a", "--all", "-Q", "--quiet")]
        oneliner = "-o" in argv or "--oneliner" in argv
        if not args or args[0] in ("-h", "--help", "help"):
            print("Usage: scontrol [OPTIONS] [COMMAND]  (show job|config|hostnames|partition|node, requeue, hold, "
                  "release, suspend, resume, update NodeName=... State=DRAIN|RESUME Reason=...)")
            return 0
        if args[0] in ("-V", "--version", "version"):
            print(common.VERSION)
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
                              f"   Gres=gpu:{n.get('TotalGPUs', 0)}\n   State={_node_state(n)}"
                              f" Partitions={common.CLUSTER}\n"
                              + (f"   Reason={n.get('DrainReason') or 'none'} [{n.get('DrainedBy')}]\n"
                                 if n.get("DrainedBy") else ""))
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
                    refs = common.parse_refs([word], PROG)
                    if verb in ARRAY_VERBS and len(refs) == 1 and refs[0].tasks is None:
                        first = await common.get_job(c, refs[0].id)
                        if first is not None and first.get("ArrayJobId") == first["Id"]:
                            try:  # the whole array at once, also its tasks that are no jobs yet
                                await c.call(ARRAY_VERBS[verb], "t", [first["Id"]])
                            except DBusError as e:
                                print(f"{verb} error for job {word}: {e.text}", file=sys.stderr)
                                status = 1
                            continue
                    jobs, missing = await common.resolve(c, refs)
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
        if verb == "update":
            return await update_nodes(args[1:])
        if verb == "ping":
            async with common.connect() as c:
                props = await c.properties()
            print(f"Slurmctld(primary) at {props.get('NodeName')} is UP")
            return 0
        raise SlurmUsage(f"invalid keyword: {args[0]} (schedd's scontrol knows show, requeue, hold, release, "
                         f"suspend, resume, ping)")

    return common.run(PROG, body)

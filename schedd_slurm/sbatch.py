"""sbatch: a batch script (file, stdin, /dev/stdin or --wrap) becomes a schedd job whose Command is the
launcher (schedd_slurm.job) with the script's body copied in, so the file may go right after."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from dbus_fast import Variant
from dbus_fast.errors import DBusError

from schedd.protocol import TaskRanges
import schedd_slurm
from schedd_slurm import common, depend
from schedd_slurm.options import NONE, OPTIONAL, Opt, Parsed, SlurmUsage, Table, check_script, parse_script_and_cli
from schedd_slurm.timespec import parse_date, parse_mem, parse_time

PROG = "sbatch"

# Options with no meaning on one box: accepted (as Slurm would) and not acted on.
IGNORED = ("account", "acctg-freq", "bb", "bbf", "batch", "cluster-constraint", "clusters", "comment", "constraint",
           "container", "contiguous", "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu", "deadline",
           "delay-boot", "distribution", "exclude", "exclusive", "extra-node-info", "get-user-env", "gpu-bind",
           "gpu-freq", "gres-flags", "hint", "ignore-pbs", "kill-on-invalid-dep", "licenses", "mail-type",
           "mail-user", "mcs-label", "mem-bind", "network", "no-kill", "nodefile", "ntasks-per-core",
           "ntasks-per-gpu", "ntasks-per-socket", "overcommit", "oversubscribe", "partition", "power", "prefer",
           "profile", "propagate", "qos", "quiet", "reboot", "reservation", "sockets-per-node", "spread-job",
           "switches", "thread-spec", "threads-per-core", "time-min", "tmp", "use-min-nodes", "verbose", "wckey",
           "wait-all-nodes", "export-file", "gpus-per-socket")

_FLAGS = {"batch", "contiguous", "hold", "ignore-pbs", "no-requeue", "overcommit", "oversubscribe", "parsable",
          "quiet", "reboot", "requeue", "spread-job", "test-only", "use-min-nodes", "verbose", "version", "wait",
          "help", "usage"}
_OPTIONAL = {"exclusive", "get-user-env", "nice", "no-kill", "propagate", "kill-on-invalid-dep"}
_SHORT = {"array": "a", "account": "A", "begin": "b", "chdir": "D", "clusters": "M", "constraint": "C",
          "core-spec": "S", "cpus-per-task": "c", "dependency": "d", "distribution": "m", "error": "e",
          "exclude": "x", "extra-node-info": "B", "nodefile": "F", "gpus": "G", "hold": "H", "input": "i",
          "job-name": "J", "licenses": "L", "no-kill": "k", "nodelist": "w", "nodes": "N", "ntasks": "n",
          "output": "o", "overcommit": "O", "oversubscribe": "s", "partition": "p", "qos": "q", "quiet": "Q",
          "time": "t", "verbose": "v", "version": "V", "wait": "W", "help": "h"}
_VALUED = ("chdir", "cpus-per-task", "dependency", "error", "export", "gid", "gpus", "gpus-per-node", "gpus-per-task",
           "gres", "input", "job-name", "mem", "mem-per-cpu", "mem-per-gpu", "mincpus", "nice", "nodelist",
           "nodes", "ntasks", "ntasks-per-node", "open-mode", "output", "priority", "signal", "time", "uid", "wrap",
           "array", "begin")


def table(prog: str = PROG) -> Table:
    names = sorted(set(IGNORED) | _FLAGS | _OPTIONAL | set(_VALUED))
    return Table(prog, [Opt(n, _SHORT.get(n, ""), NONE if n in _FLAGS else OPTIONAL if n in _OPTIONAL else 1)
                        for n in names])


USAGE = "Usage: sbatch [OPTIONS(0)...] [ : [OPTIONS(N)...]] script(0) [args(0)...]"


def read_script(p: Parsed) -> tuple[str, list[str], str]:
    """(body, the script's arguments, the default job name)."""
    if p.get("wrap") is not None:
        if p.args:
            raise SlurmUsage("Script arguments not permitted with --wrap option")
        return f"#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{p.get('wrap')}\n", [], "wrap"
    if p.args:
        path = p.args[0]
        try:
            if path in ("-", "/dev/stdin"):  # fd 0 itself: a pipe made by another user cannot be reopened
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except OSError:
            raise SlurmUsage(f"Unable to open file {path}") from None
        name = "sbatch" if path in ("-", "/dev/stdin") else os.path.basename(path)
        p.values["_path"] = None if path in ("-", "/dev/stdin") else os.path.abspath(path)
        return data.decode("utf-8", "surrogateescape"), p.args[1:], name
    if sys.stdin.isatty():
        raise SlurmUsage("no batch script: name a script file, pipe one in, or give --wrap=COMMAND")
    return sys.stdin.buffer.read().decode("utf-8", "surrogateescape"), [], "sbatch"


def _int(p: Parsed, name: str, default: int | None = None, minimum: int = 1) -> int | None:
    v = p.get(name)
    if v is None:
        return default
    try:
        n = int(str(v))
    except ValueError:
        raise SlurmUsage(f"Invalid numeric value \"{v}\" for --{name}.") from None
    if n < minimum:
        raise SlurmUsage(f"Invalid --{name} specification")
    return n


def gpu_count(text: str, option: str) -> int:
    """--gpus [type:]N, --gres gpu[:type][:N] (comma lists; other gres ignored)."""
    total = 0
    for item in str(text).split(","):
        parts = item.split(":")
        if option == "--gres":
            if parts[0] not in ("gpu", "gpus"):
                continue
            parts = parts[1:] or ["1"]
        last = parts[-1]
        if not last.isdigit():
            if option == "--gres" and len(parts) == 1:
                last = "1"  # gpu:type
            else:
                raise SlurmUsage(f"Invalid {option} specification")
        total += int(last)
    return total


def parse_signal(text: str) -> dict[str, Any]:
    """--signal=[{R|B}:]SIG[@secs] -> {sig, secs, batch}."""
    from schedd_slurm.sigs import signal_number

    t = str(text)
    batch = False
    if len(t) > 2 and t[1] == ":" and t[0] in "RBrb":
        batch = t[0] in "Bb"
        t = t[2:]
    sig, _, secs = t.partition("@")
    try:
        num = signal_number(sig)
        s = int(secs) if secs else 60
    except (ValueError, SlurmUsage):
        raise SlurmUsage("Invalid --signal specification") from None
    if not 0 <= s <= 65535:
        raise SlurmUsage("Invalid --signal specification")
    return {"sig": num, "secs": s, "batch": batch}


def environment(export: str | None, environ: dict[str, str]) -> list[str]:
    """--export: ALL (default), NONE, or NAME[=VALUE] entries with or without ALL."""
    if export is None or export.upper() == "ALL":
        env = dict(environ)
    else:
        words = [w for w in export.split(",") if w]
        env = dict(environ) if words and words[0].upper() == "ALL" else {}
        for w in words:
            if w.upper() in ("ALL", "NONE", "NIL"):
                continue
            k, sep, v = w.partition("=")
            if sep:
                env[k] = v
            elif k in environ:
                env[k] = environ[k]
    # The GPUs of the shell or job sbatch runs in are not this job's: schedd names its own (or none).
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # A variable that is not UTF-8 (after `cd` into such a directory, OLDPWD) cannot go over D-Bus.
    return [f"{k}={v}" for k, v in env.items() if _utf8(k) and _utf8(v)]


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


async def dependencies(c, text: str) -> tuple[list[int], dict[str, Any]]:
    """--dependency -> (After ids for afterok, what the launcher waits for: {"afterany": ids, "after":
    ids, "afternotok": [ids per named job (an array: its tasks)], "singleton": True}); depend.py says why."""
    after: list[int] = []
    waits: dict[str, Any] = {}
    for kind, refs in depend.parse(text):
        if kind == "singleton":
            waits["singleton"] = True
            continue
        groups: list[list[int]] = []
        for ref in refs:
            jobs, missing = await common.resolve(c, [ref])
            if missing:
                raise depend.problem()
            groups.append([j["Id"] for j in jobs])
        ids_ = [i for g in groups for i in g]
        if kind == "afterok":
            after.extend(ids_)
        elif kind == "afternotok":  # per named job: an array's dependency holds once one of its tasks failed
            waits.setdefault(kind, []).extend(groups)
        else:
            waits.setdefault(kind, []).extend(ids_)
    return after, waits


def build(p: Parsed, body: str, script_args: list[str], default_name: str, environ: dict[str, str],
          cwd: str) -> tuple[dict[str, Any], dict[str, Any], TaskRanges | None]:
    """(spec values, launcher config, the array's tasks or None) -- everything but dependencies."""
    check_script(body)
    nodes = str(p.get("nodes") or "1")
    lo, _, hi = nodes.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        raise SlurmUsage("Invalid node count specification")
    if int(lo) > 1:
        raise SlurmUsage("Batch job submission failed: Requested node configuration is not available")
    ntasks_per_node = _int(p, "ntasks-per-node")
    ntasks = _int(p, "ntasks", ntasks_per_node or 1)
    cpt = _int(p, "cpus-per-task")
    cpus = max(ntasks * (cpt or 1), _int(p, "mincpus") or 1)
    values: dict[str, Any] = {"CPUs": cpus}
    gpus = 0
    for opt in ("gpus", "gpus-per-node"):
        if p.get(opt) is not None:
            gpus = max(gpus, gpu_count(p.get(opt), f"--{opt}"))
    if p.get("gpus-per-task") is not None:
        gpus = max(gpus, gpu_count(p.get("gpus-per-task"), "--gpus-per-task") * ntasks)
    if p.get("gres") is not None:
        gpus = max(gpus, gpu_count(p.get("gres"), "--gres"))
    if gpus:
        values["GPUs"] = gpus
    mem = None
    if p.get("mem") is not None:
        mem = parse_mem(str(p.get("mem")), "--mem")
    elif p.get("mem-per-cpu") is not None:
        mem = parse_mem(str(p.get("mem-per-cpu")), "--mem-per-cpu") * cpus
    elif p.get("mem-per-gpu") is not None:
        mem = parse_mem(str(p.get("mem-per-gpu")), "--mem-per-gpu") * max(gpus, 1)
    if mem:  # --mem=0: the node's default (Slurm: all of it)
        values["Memory"] = mem
    limit = parse_time(str(p.get("time")), "--time") if p.get("time") is not None else 0
    if limit:
        values["RuntimeMaxUSec"] = limit * 1_000_000
    name = str(p.get("job-name") or default_name)
    values["Name"] = name
    workdir = os.path.normpath(os.path.join(cwd, str(p.get("chdir")))) if p.get("chdir") else cwd
    values["WorkingDirectory"] = workdir
    values["Environment"] = environment(p.get("export"), environ)  # type: ignore[arg-type]
    if p.get("hold"):
        values["Hold"] = True
    if p.get("no-requeue"):
        values["Requeue"] = False
    elif p.get("requeue"):
        values["Requeue"] = True
    prio = 0
    if p.get("nice") is not None:
        nice = 100 if p.get("nice") is True else _int(p, "nice", minimum=-2147483645)
        prio -= int(nice)  # type: ignore[arg-type]
    if p.get("priority") is not None:
        prio = _int(p, "priority", minimum=0)  # type: ignore[assignment]
    if prio:
        values["Priority"] = prio
    if p.get("nodelist"):
        values["Node"] = str(p.get("nodelist")).split(",")[0]
    if p.get("uid") is not None:
        values["User"] = common.uid_of(str(p.get("uid")))
    tasks: TaskRanges | None = None
    if p.get("array") is not None:
        try:
            tasks = TaskRanges.parse(str(p.get("array")))
        except ValueError:
            raise SlurmUsage("Batch job submission failed: Invalid job array specification") from None
    output = str(p.get("output") or ("slurm-%A_%a.out" if tasks is not None else "slurm-%j.out"))
    open_mode = str(p.get("open-mode") or "truncate").lower()
    if open_mode not in ("append", "truncate", "a", "t"):
        raise SlurmUsage("Invalid --open-mode specification")
    config: dict[str, Any] = {
        "script": body, "args": script_args, "output": output, "error": p.get("error"),
        "input": p.get("input"), "append": open_mode.startswith("a"), "submit_dir": cwd,
        "submit_host": socket.gethostname().split(".")[0], "ntasks": ntasks, "ntasks_per_node": ntasks_per_node,
        "cpus_per_task": cpt, "mem": mem, "time": limit, "user_bus": common.user_bus(), "cpus": cpus,
        "path": p.get("_path"),
    }
    if p.get("signal") is not None:
        config["signal"] = parse_signal(p.get("signal"))
    if p.get("begin") is not None:
        # The daemon keeps the job PENDING (reason begin-time, squeue's BeginTime) until then, holding nothing.
        values["BeginTime"] = max(0, int(parse_date(str(p.get("begin")), "--begin") * 1_000_000))
    if tasks is not None:
        single = len(tasks.ranges) == 1
        config["array"] = {"min": tasks.ranges[0][0], "max": tasks.ranges[-1][1], "count": tasks.count,
                           "step": tasks.ranges[0][2] if single else 1}
    return values, config, tasks


SCRIPT_VAR = "SCHEDD_SLURM_SCRIPT"  # the script and its arguments, in the job's environment
PRIVATE = ("script", "args")


def launcher_command(config: dict[str, Any]) -> list[str]:
    """The launcher and its settings: what Slurm shows anyway (paths, counts). The script itself
    rides in the environment (SCRIPT_VAR): /proc/PID/environ is its owner's only, a command line
    is every local user's to read in ps."""
    public = {k: v for k, v in config.items() if k not in PRIVATE}
    settings = json.dumps(public, separators=(",", ":"))
    if schedd_slurm.PRIVATE_PATH:  # -I leaves it off sys.path: the launcher puts it back, then runs as -m would
        boot = (f"import runpy,sys;sys.path.insert(0,{schedd_slurm.PRIVATE_PATH!r});del sys.argv[1];"
                "runpy.run_module('schedd_slurm.job',run_name='__main__',alter_sys=True)")
        return [sys.executable, "-I", "-c", boot, "schedd_slurm.job", settings]
    return [sys.executable, "-I", "-m", "schedd_slurm.job", settings]


def script_entry(config: dict[str, Any]) -> str:
    return f"{SCRIPT_VAR}=" + json.dumps({k: config[k] for k in PRIVATE if k in config}, separators=(",", ":"))


def typed(values: dict[str, Any]) -> dict[str, Variant]:
    from schedctl.commands.submit import typed_spec

    return typed_spec(values)


async def submit(c, values: dict[str, Any], config: dict[str, Any], tasks: TaskRanges | None) -> int:
    """Queue it; the id Slurm's clients read. An array is one Submit with ArrayTasks (one record in
    schedd, tasks made jobs as they can start); its first task's id is the array's id."""
    values = {**values, "Command": launcher_command(config),
              "Environment": [*values.get("Environment", []), script_entry(config)]}
    spec = typed(values)
    if tasks is not None:
        spec["ArrayTasks"] = Variant("s", tasks.format())
    try:
        jid, _path = await c.submit(spec)
        return jid
    except DBusError as e:
        raise SlurmUsage(f"Batch job submission failed: {e.text}") from None


async def wait_for(c, jid: int) -> int:
    """-W/--wait: until the job (every task of an array) ends; sbatch -W exits with the highest exit
    code (a cancelled job: 1)."""
    await c.subscribe()  # before reading the states: an end in between still arrives
    jobs, _ = await common.resolve(c, [common.JobRef(jid)])
    code = 0
    for j in jobs:
        state = j["State"]
        while state not in ("COMPLETED", "FAILED", "CANCELLED"):
            try:
                cid, _p, new, _r = await c.next_change(5.0)
                if cid == j["Id"]:
                    state = new
            except TimeoutError:  # a missed signal costs at most 5 s
                state = (await c.get_job(j["Id"]))["State"]
        final = await c.get_job(j["Id"])
        if final["State"] == "FAILED":
            code = max(code, final["ExitCode"] or 1)
        elif final["State"] == "CANCELLED":
            code = max(code, 1)
    return code


def main(argv: list[str]) -> int:
    t = table()

    async def body() -> int:
        cli = t.parse(argv, stop_at_positional=True)
        if cli.get("help") or cli.get("usage"):
            print(USAGE)
            return 0
        if cli.get("version"):
            print(common.VERSION)
            return 0
        script, args, name = read_script(cli)
        p = parse_script_and_cli(t, script, cli)
        cwd = os.getcwd()
        values, config, tasks = build(p, script, args, name, dict(os.environ), cwd)
        async with common.connect() as c:
            if p.get("dependency"):
                after, waits = await dependencies(c, str(p.get("dependency")))
                if after:
                    values["After"] = after
                if waits.get("afterany"):  # the daemon's AfterAny: PENDING until they end, holding nothing
                    values["AfterAny"] = waits.pop("afterany")
                if waits:
                    config["waits"] = waits
            if p.get("test-only"):
                props = await c.properties()
                print(f"sbatch: Job 0 to start at now using {values['CPUs']} processors on nodes "
                      f"{props.get('NodeName')} in partition {common.CLUSTER}", file=sys.stderr)
                return 0
            jid = await submit(c, values, config, tasks)
            if p.get("parsable"):
                print(jid, flush=True)
            else:
                print(f"Submitted batch job {jid}", flush=True)
            if p.get("wait"):
                return await wait_for(c, jid)
        return 0

    return common.run(PROG, body)

"""srun. Inside a job (SLURM_JOB_ID set): run N tasks as child processes in the job's own scope
and allocation, each with its rank variables, %t in output names, -l labels, stdin to task 0,
signals passed on to the tasks, the highest exit code returned. Outside a job: submit the command,
stream its output in the foreground and exit with its code."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

from schedd_slurm import common
from schedd_slurm.options import NONE, OPTIONAL, Opt, SlurmUsage, Table
from schedd_slurm.patterns import expand

PROG = "srun"
_VALUED = ["ntasks:n", "nodes:N", "cpus-per-task:c", "output:o", "error:e", "input:i", "job-name:J", "chdir:D",
           "time:t", "mem", "mem-per-cpu", "gpus:G", "gres", "gpus-per-node", "gpus-per-task", "cpu-bind", "mpi",
           "ntasks-per-node", "partition:p", "account:A", "qos:q", "constraint:C", "nodelist:w", "exclude:x",
           "distribution:m", "kill-on-bad-exit:K", "export", "signal", "wait:W", "label-fmt", "mem-bind",
           "open-mode", "dependency:d", "cpus-per-gpu", "comment", "wckey", "reservation", "hint", "gpu-bind",
           "network", "threads-per-core", "jobid", "het-group", "propagate", "exclusive", "array:a"]
_FLAGS = ["label:l", "unbuffered:u", "overlap", "verbose:v", "quiet:Q", "pty", "exact", "overcommit:O",
          "no-kill:k", "version:V", "help:h", "usage", "whole", "oversubscribe:s", "hold:H", "test-only",
          "disable-status:X", "multi-prog", "immediate:I", "no-allocate:Z"]
_OPT = {"kill-on-bad-exit", "propagate", "exclusive"}


def _opts() -> list[Opt]:
    out = []
    for spec in _VALUED:
        name, _, short = spec.partition(":")
        out.append(Opt(name, short, OPTIONAL if name in _OPT else 1))
    for spec in _FLAGS:
        name, _, short = spec.partition(":")
        out.append(Opt(name, short, NONE))
    return out


TABLE = Table(PROG, _opts())
FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGALRM, signal.SIGCONT)


def _pump(src, dst, label: bytes, lock: threading.Lock) -> None:
    for line in iter(src.readline, b""):
        with lock:
            dst.write(label + line)
            dst.flush()
    src.close()


def step(p, argv: list[str]) -> int:
    """The tasks of one step, inside the allocation the batch job already holds."""
    env = dict(os.environ)
    n = int(str(p.get("ntasks") or env.get("SLURM_NTASKS") or 1))
    nodes = str(p.get("nodes") or "1").split("-")[0]
    if not nodes.isdigit() or int(nodes) > 1:
        raise SlurmUsage("Unable to create step for job: Requested node configuration is not available")
    jid = int(env.get("SLURM_JOB_ID", "0"))
    aid = int(env.get("SLURM_ARRAY_JOB_ID") or 0)
    task = env.get("SLURM_ARRAY_TASK_ID")
    common_kw = dict(job_id=jid, array_job_id=aid, task_id=int(task) if task else None,
                     name=env.get("SLURM_JOB_NAME", ""), user=env.get("USER", ""),
                     node=env.get("SLURM_JOB_NODELIST", ""), step="0")
    append = str(p.get("open-mode") or "append").startswith("a")
    cwd = str(p.get("chdir")) if p.get("chdir") else None
    label = bool(p.get("label"))
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    step_env = {"SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NUM_TASKS": str(n), "SLURM_NTASKS": str(n),
                "SLURM_NPROCS": str(n), "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NODELIST": common_kw["node"],
                "SLURM_STEP_TASKS_PER_NODE": str(n)}
    if p.get("cpus-per-task"):
        step_env["SLURM_CPUS_PER_TASK"] = str(p.get("cpus-per-task"))
    received: list[int] = []

    def forward(sig, _frame) -> None:
        received.append(sig)
        for pr in procs:
            try:
                pr.send_signal(sig)
            except OSError:
                pass

    for s in FORWARD:
        signal.signal(s, forward)
    for rank in range(n):
        tenv = {**env, **step_env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
                "SLURM_GTIDS": ",".join(map(str, range(n)))}
        files = []
        out = err = None
        if p.get("output") and str(p.get("output")) != "none":
            path = expand(str(p.get("output")), rank=rank, **common_kw)
            out = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
            files.append(out)
        if p.get("error") and str(p.get("error")) != "none":
            path = expand(str(p.get("error")), rank=rank, **common_kw)
            err = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
            files.append(err)
        elif out is not None:
            err = out
        if label and out is None:
            out = subprocess.PIPE
        if label and err is None:
            err = subprocess.PIPE
        stdin = None if rank == 0 else subprocess.DEVNULL
        if p.get("input"):
            stdin = open(expand(str(p.get("input")), rank=rank, **common_kw), "rb")
        try:
            pr = subprocess.Popen(argv, env=tenv, cwd=cwd, stdin=stdin, stdout=out, stderr=err,
                                  restore_signals=True)
        except OSError as e:
            print(f"slurmstepd: error: execve(): {argv[0]}: {e.strerror}", file=sys.stderr)
            for pr in procs:
                pr.kill()
            return 2
        for f in files:
            os.close(f)
        procs.append(pr)
        tag = f"{rank}: ".encode()
        if pr.stdout is not None:
            threads.append(threading.Thread(target=_pump, args=(pr.stdout, sys.stdout.buffer, tag, lock), daemon=True))
        if pr.stderr is not None:
            threads.append(threading.Thread(target=_pump, args=(pr.stderr, sys.stderr.buffer, tag, lock), daemon=True))
    for t in threads:
        t.start()
    codes = []
    for pr in procs:
        while True:
            try:
                codes.append(pr.wait())
                break
            except InterruptedError:
                continue
    for t in threads:
        t.join()
    worst = 0
    for c in codes:
        worst = max(worst, c if c >= 0 else 128 - c)
    return worst


async def allocate_and_run(p, argv: list[str]) -> int:
    """Outside a job: one job of the command, its output streamed here, its exit code ours."""
    from schedctl.commands.logs import _follow
    from schedctl.logs.local import Tail
    from schedctl.logs.sinks import Raw
    from schedd_slurm import sbatch

    script = "#!/bin/sh\nexec \"$@\"\n"
    cli = sbatch.table().parse([])
    for k in ("ntasks", "cpus-per-task", "mem", "mem-per-cpu", "gpus", "gres", "gpus-per-node", "time", "job-name",
              "chdir", "export", "nodes", "dependency", "nodelist", "signal"):
        if p.get(k) is not None:
            cli.values[k] = p.get(k)
    cli.values.setdefault("job-name", os.path.basename(argv[0]))
    values, config, _tasks = sbatch.build(cli, script, argv, "srun", dict(os.environ), os.getcwd())
    config["output"] = "/dev/stdout"  # the daemon's output file: streamed from there
    config["direct"] = True
    async with common.connect() as c:
        if cli.get("dependency"):
            after, waits = await sbatch.dependencies(c, str(cli.get("dependency")))
            if after:
                values["After"] = after
            if waits:
                config["waits"] = waits
        await c.subscribe()
        jid = await sbatch.submit(c, values, config, None)
        if not p.get("quiet"):
            print(f"srun: job {jid} queued and waiting for resources", file=sys.stderr)
        job = await c.get_job(jid)
        try:
            await _follow(c, jid, job["State"], Tail(job["StdoutPath"]), Raw())
        except asyncio.CancelledError:  # Ctrl-C: the job goes with srun, as Slurm's does
            await c.call("Cancel", "t", [jid])
            raise
        final = await c.get_job(jid)
    if final["State"] == "COMPLETED":
        return 0
    if final["State"] == "CANCELLED":
        print(f"srun: error: job {jid} was cancelled", file=sys.stderr)
    return final.get("ExitCode") or 1


def main(argv: list[str]) -> int:
    try:
        p = TABLE.parse(argv, stop_at_positional=True)
    except SlurmUsage as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    if p.get("version"):
        print(common.VERSION)
        return 0
    if not p.args:
        print(f"{PROG}: fatal: No command given to execute.", file=sys.stderr)
        return 1
    inside = bool(os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"))
    if p.get("pty") and not inside:
        print(f"{PROG}: error: --pty: schedd runs no interactive sessions; submit a batch job (sbatch) instead",
              file=sys.stderr)
        return 1
    if inside:
        try:
            return step(p, p.args)
        except (SlurmUsage, ValueError, OSError) as e:  # a bad -n, an -o/-i that cannot be opened
            print(f"{PROG}: error: {str(e)[:200]}", file=sys.stderr)
            return 1
    return common.run(PROG, lambda: allocate_and_run(p, p.args))

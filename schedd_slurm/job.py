"""The launcher a batch job runs (`python -I -m schedd_slurm.job CONFIG`): sets Slurm's environment,
opens the -o/-e files as the job's user, and runs the copied script from a memfd.

It stays the script's parent so that `--signal=SIG@secs` can reach the steps (or with B: the batch
shell) that long before the time limit, and exits with the script's status (a signal death is
re-raised on itself so schedd records it as one).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from schedd_slurm import common, depend, procs
from schedd_slurm.patterns import expand

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT,
             signal.SIGCONT)


async def _job_record(job_id: int, user_bus: bool) -> dict[str, Any]:
    from schedctl.client import Client

    async with Client(user_bus) as c:
        return await asyncio.wait_for(c.get_job(job_id), 10)


def job_record(job_id: int, user_bus: bool) -> dict[str, Any]:
    """This job as schedd tells it (Restarts, Node): {} if schedd does not answer (the job still runs)."""
    try:
        return asyncio.run(_job_record(job_id, user_bus))
    except Exception as e:  # noqa: BLE001 -- a job must not fail because the bus was slow
        print(f"schedd-slurm: could not read job {job_id} from schedd ({e}); SLURM_RESTART_COUNT=0", file=sys.stderr)
        return {}


POLL_S = 1.0  # dependencies may take days: a poll a second, no deadline of its own


RETRY_S = 5.0  # schedd restarting (an upgrade) while a job waits: ask again this much later


async def _wait_dependencies(waits: dict[str, Any], job_id: int, name: str, uid: int, user_bus: bool) -> str | None:
    """Wait until every dependency the launcher handles holds (depend.py); None then, or why one never can.
    A schedd that stops answering for a while (restarted) is waited for: the job waits on."""
    from schedctl.client import Client, Unreachable

    left: dict[str, Any] = {"afterany": list(waits.get("afterany", [])), "after": list(waits.get("after", [])),
                            "afternotok": [list(g) for g in waits.get("afternotok", [])],
                            "singleton": bool(waits.get("singleton"))}
    while True:
        try:
            async with Client(user_bus) as c:
                return await _poll_dependencies(c, left, job_id, name, uid)
        except (Unreachable, OSError, EOFError) as e:
            print(f"schedd-slurm: job {job_id}: schedd does not answer ({e}); its dependencies are checked again "
                  f"in {RETRY_S:.0f} s", file=sys.stderr, flush=True)
            await asyncio.sleep(RETRY_S)


async def _poll_dependencies(c, left: dict[str, Any], job_id: int, name: str, uid: int) -> str | None:
    """The polls; `left` keeps what still waits (a reconnect resumes from it)."""
    while True:
        left["afterany"] = [j for j in left["afterany"] if not depend.ended(await common.get_job(c, j))]
        left["after"] = [j for j in left["after"] if not depend.started(await common.get_job(c, j))]
        groups = []
        for g in left["afternotok"]:
            states = [(await common.get_job(c, j) or {"State": depend.GONE})["State"] for j in g]
            verdict = depend.not_ok_verdict(states)
            if verdict is False:
                return f"afternotok:{g[0]}: it COMPLETED" if len(g) == 1 else \
                    f"afternotok:{g[0]}: every task of the array COMPLETED"
            if verdict is None:
                groups.append(g)
        left["afternotok"] = groups
        waiting = bool(left["afterany"] or left["after"] or groups)
        if left["singleton"] and not waiting:
            rows: list[dict[str, Any]] = []
            async for page in c.job_pages(list(depend.UNFINISHED), uid):
                rows.extend(page)
                if page[-1]["Id"] >= job_id:  # oldest first: later jobs never block a singleton
                    break
            waiting = bool(depend.singleton_blockers(rows, job_id, name, uid))
        if not waiting:
            return None
        await asyncio.sleep(POLL_S)


def never_satisfied(job_id: int, why: str, user_bus: bool) -> int:
    """A dependency that can never hold: the job is cancelled before its script runs (Slurm's
    kill_invalid_depend), so it ends CANCELLED rather than waiting for ever on the CPUs it holds.
    The stop that Cancel makes reaches this process too (SIGTERM, default action): the job ends
    CANCELLED either way, because schedd records a stop it was asked for as a cancel."""
    print(f"schedd-slurm: job {job_id}: dependency never satisfied ({why}); cancelling the job without "
          f"running its script (DependencyNeverSatisfied)", file=sys.stderr, flush=True)

    async def cancel() -> None:
        from schedctl.client import Client

        async with Client(user_bus) as c:
            await c.call("Cancel", "t", [job_id])

    try:
        asyncio.run(cancel())
    except Exception as e:  # noqa: BLE001 -- the job must still end, and not as a success
        print(f"schedd-slurm: could not cancel job {job_id} ({e}); failing it instead", file=sys.stderr)
    return 1


def slurm_env(cfg: dict[str, Any], env: dict[str, str], job: dict[str, Any]) -> dict[str, str]:
    """The environment the script sees: the submitter's (inherited SLURM_* dropped) plus Slurm's own."""
    out = {k: v for k, v in env.items() if not k.startswith("SLURM_") and k != "SCHEDD_SLURM_SCRIPT"}
    jid = env.get("SCHEDD_JOB_ID", "0")
    node = job.get("Node") or cfg.get("submit_host", "localhost")
    cpus = str(len([c for c in env.get("SCHEDD_CPUS", "").split(",") if c]) or cfg.get("cpus", 1))
    ntasks = str(cfg.get("ntasks") or 1)
    s = {
        "SLURM_JOB_ID": jid, "SLURM_JOBID": jid, "SLURM_JOB_NAME": env.get("SCHEDD_JOB_NAME", ""),
        "SLURM_SUBMIT_DIR": cfg.get("submit_dir", ""), "SLURM_SUBMIT_HOST": cfg.get("submit_host", ""),
        "SLURM_CPUS_ON_NODE": cpus, "SLURM_JOB_CPUS_PER_NODE": cpus, "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": node, "SLURM_NODELIST": node, "SLURMD_NODENAME": node,
        "SLURM_NTASKS": ntasks, "SLURM_NPROCS": ntasks, "SLURM_NTASKS_PER_NODE": str(cfg.get("ntasks_per_node") or ntasks),
        "SLURM_TASKS_PER_NODE": ntasks, "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_RESTART_COUNT": str(job.get("Restarts", 0)), "SLURM_CLUSTER_NAME": common.CLUSTER,
        "SLURM_JOB_PARTITION": common.CLUSTER, "SLURM_JOB_USER": env.get("USER", ""),
        "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()), "SLURM_GTIDS": "0",
        "SLURM_JOB_ACCOUNT": "", "SLURM_JOB_QOS": "normal",
    }
    if cfg.get("cpus_per_task"):
        s["SLURM_CPUS_PER_TASK"] = str(cfg["cpus_per_task"])
    if cfg.get("mem"):
        s["SLURM_MEM_PER_NODE"] = str(cfg["mem"] >> 20)
    if env.get("CUDA_VISIBLE_DEVICES"):
        gpus = env["CUDA_VISIBLE_DEVICES"]
        s["SLURM_JOB_GPUS"] = s["SLURM_STEP_GPUS"] = gpus
        s["SLURM_GPUS_ON_NODE"] = str(len(gpus.split(",")))
    if env.get("SCHEDD_ARRAY_JOB_ID") and cfg.get("array"):
        a = cfg["array"]
        s.update({"SLURM_ARRAY_JOB_ID": env["SCHEDD_ARRAY_JOB_ID"], "SLURM_ARRAY_TASK_ID": env["SCHEDD_ARRAY_TASK_ID"],
                  "SLURM_ARRAY_TASK_MIN": str(a["min"]), "SLURM_ARRAY_TASK_MAX": str(a["max"]),
                  "SLURM_ARRAY_TASK_STEP": str(a["step"]), "SLURM_ARRAY_TASK_COUNT": str(a["count"])})
    out.update(s)
    return out


def output_path(pattern: str, env: dict[str, str], workdir: str) -> str:
    task = env.get("SLURM_ARRAY_TASK_ID")
    path = expand(pattern, job_id=int(env["SLURM_JOB_ID"]), array_job_id=int(env.get("SLURM_ARRAY_JOB_ID") or 0),
                  task_id=int(task) if task else None, name=env["SLURM_JOB_NAME"], user=env.get("USER", ""),
                  node=env["SLURM_JOB_NODELIST"])
    return os.path.join(workdir, path)


DIR_WAIT_S = 30.0  # how long a missing output directory is waited for


def _open(path: str, append: bool) -> int:
    """Open an output file as the job's user. A directory that does not exist yet is waited for a
    while: clients make theirs right after sbatch answers (submitit's per-job `%j` folders), and
    schedd starts a job within milliseconds where a Slurm cluster takes seconds."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    deadline = time.monotonic() + DIR_WAIT_S
    while True:
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            if time.monotonic() > deadline or os.path.isdir(os.path.dirname(path) or "."):
                raise
            time.sleep(0.05)


def redirect(cfg: dict[str, Any], env: dict[str, str]) -> None:
    """stdout (and stderr, with it unless -e) to the Slurm files; stdin from -i or /dev/null."""
    cwd = os.getcwd()
    append = bool(cfg.get("append"))
    out = output_path(cfg["output"], env, cwd)
    fd = _open(out, append)
    efd = _open(output_path(cfg["error"], env, cwd), append) if cfg.get("error") else fd
    os.dup2(fd, 1)
    os.dup2(efd, 2)
    inp = os.open(output_path(cfg["input"], env, cwd) if cfg.get("input") else os.devnull, os.O_RDONLY)
    os.dup2(inp, 0)
    for f in {fd, efd, inp}:
        if f > 2:
            os.close(f)


def _deliver(sig: int, batch_pid: int, batch: bool) -> None:
    """--signal: the steps (srun processes, which pass it on to their tasks), or with B: the batch shell."""
    if batch:
        targets = [batch_pid]
    else:
        targets = [p for p in procs.descendants(os.getpid()) if procs.is_srun(p)]
    for p in targets:
        try:
            os.kill(p, sig)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    env = dict(os.environ)
    try:  # the script and its arguments (sbatch.script_entry), kept out of the world-readable argv
        cfg.update(json.loads(env.pop("SCHEDD_SLURM_SCRIPT")))
    except (KeyError, ValueError):
        print("schedd-slurm: this job has no script (SCHEDD_SLURM_SCRIPT is missing or damaged)", file=sys.stderr)
        return 1
    job_id = int(env.get("SCHEDD_JOB_ID", "0"))
    # Run by a real Slurm for a schedd node (a Slurm peer: SCHEDD_ORIGIN, and slurmd's SLURM_JOB_ID): the
    # job's record is on its origin's bus, not this machine's; Slurm's own environment stands.
    on_slurm_peer = bool(env.get("SCHEDD_ORIGIN")) and "SLURM_JOB_ID" in env
    job = job_record(job_id, bool(cfg.get("user_bus"))) if job_id and not on_slurm_peer else {}
    waits = cfg.get("waits") or {}
    if waits:
        name = job.get("Name") or env.get("SCHEDD_JOB_NAME", "")
        why = asyncio.run(_wait_dependencies(waits, job_id, name, int(job.get("User", os.getuid())),
                                             bool(cfg.get("user_bus"))))
        if why is not None:
            return never_satisfied(job_id, why, bool(cfg.get("user_bus")))
    if cfg.get("begin"):  # a launcher config written by an older sbatch (now the daemon's BeginTime)
        while time.time() < cfg["begin"]:
            time.sleep(min(60.0, cfg["begin"] - time.time()))
    senv = slurm_env(cfg, env, job)
    if not cfg.get("direct"):  # srun outside a job: the daemon's own output file, which srun streams
        try:
            redirect(cfg, senv)
        except OSError as e:
            print(f"slurmstepd: error: cannot open output: {e}", file=sys.stderr)
            return 1
    script = cfg["script"].encode("utf-8", "surrogateescape")
    mfd = os.memfd_create("slurm_script", 0)  # not CLOEXEC: the kernel hands /dev/fd/N to the #! interpreter
    os.write(mfd, script)
    os.lseek(mfd, 0, os.SEEK_SET)
    for s in FORWARDED:
        signal.signal(s, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        try:
            for s in FORWARDED:
                signal.signal(s, signal.SIG_DFL)
            os.execve(f"/proc/self/fd/{mfd}", [f"/proc/self/fd/{mfd}", *cfg.get("args", [])], senv)
        except OSError as e:
            os.write(2, f"slurmstepd: error: execve(): {cfg.get('script', '')[:60].splitlines()[0]}: {e.strerror}\n".encode())
            os._exit(127)
    os.close(mfd)
    sig = cfg.get("signal")
    # The limit schedd enforces (also a configured default), counted from the scope's start.
    limit = (job.get("RuntimeMaxUSec") or 0) / 1e6 or float(cfg.get("time") or 0)
    if sig and limit:
        started = (job.get("StartTime") or 0) / 1e6 or time.time()
        delay = limit - sig["secs"] - max(0.0, time.time() - started)
        signal.signal(signal.SIGALRM, lambda *_: _deliver(sig["sig"], pid, sig["batch"]))
        if delay < 10**9:  # ~30 years: setitimer overflows long before a limit that far would end
            signal.setitimer(signal.ITIMER_REAL, max(delay, 0.01))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    if os.WIFSIGNALED(status):
        s = os.WTERMSIG(status)
        if s not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(s, signal.SIG_DFL)
        os.kill(os.getpid(), s)  # die of the same signal: schedd records `signal`, sacct 0:N
        return 128 + s
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

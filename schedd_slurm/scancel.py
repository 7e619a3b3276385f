"""scancel: cancel jobs, array tasks (A_i) or a user's jobs, or send them a signal. A finished or
unknown id is not an error (exit 0), as in Slurm."""

from __future__ import annotations

import os
import signal
import sys

from dbus_fast.errors import DBusError

from schedd import unit_name
from schedd_slurm import common, procs
from schedd_slurm.options import NONE, Opt, SlurmUsage, Table
from schedd_slurm.sigs import signal_number
from schedd_slurm.states import parse_states
from schedd_slurm.formats import state as slurm_state

PROG = "scancel"
TABLE = Table(PROG, [
    Opt("signal", "s"), Opt("batch", "b", NONE), Opt("full", "f", NONE), Opt("user", "u"), Opt("me", "", NONE),
    Opt("name", "n"), Opt("state", "t"), Opt("partition", "p"), Opt("account", "A"), Opt("qos", "q"),
    Opt("quiet", "Q", NONE), Opt("verbose", "v", NONE), Opt("interactive", "i", NONE), Opt("clusters", "M"),
    Opt("reservation", "R"), Opt("nodelist", "w"), Opt("wckey", ""), Opt("hurry", "H", NONE),
    Opt("version", "V", NONE), Opt("help", "h", NONE), Opt("usage", "", NONE), Opt("jobname", ""),
    Opt("sibling", ""), Opt("ctld", "", NONE),
])


def signal_job(job: dict, sig: int, batch: bool, full: bool) -> str | None:
    """Deliver sig inside the job's scope: its srun steps (default), the batch shell (-b) or all (-f).
    Same user: a plain kill(2), no daemon call. None, or why it could not."""
    pids = procs.in_scope(job.get("Unit") or unit_name(job["Id"]), int(job.get("User", -1)))
    launcher = [p for p in pids if procs.is_launcher(p)]
    if full:
        targets = [p for p in pids if p not in launcher]
    elif batch:
        targets = [p for p in pids if procs.parent(p) in launcher] or [p for p in pids if p not in launcher][:1]
    else:
        targets = [p for p in pids if procs.is_srun(p)]
    denied = False
    for p in targets:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied = True  # the others still get it
    return f"Kill job error on job id {common.slurm_id(job)}: Access/permission denied" if denied else None


async def cancel_whole_arrays(c, refs: list[common.JobRef], uid: int | None, name) -> list[common.JobRef]:
    """`scancel A` of an array: one CancelArray (every task, also those not yet jobs); the other refs back."""
    rest = []
    for ref in refs:
        job = await common.get_job(c, ref.id) if ref.tasks is None and uid is None and not name else None
        if job is not None and job.get("ArrayJobId") == job["Id"]:
            try:
                await c.call("CancelArray", "t", [ref.id])
            except DBusError as e:
                if "InvalidState" not in e.type:
                    raise
            continue
        rest.append(ref)
    return rest


def main(argv: list[str]) -> int:
    async def body() -> int:
        if (p := common.parsed(TABLE, argv)) is None:
            return 0
        sig = signal_number(str(p.get("signal"))) if p.get("signal") else None
        refs = common.parse_refs(list(p.args), PROG)
        uid = os.getuid() if p.get("me") else common.uid_of(str(p.get("user"))) if p.get("user") else None
        name = p.get("name") or p.get("jobname")
        if not refs and uid is None and not name and not p.get("state"):
            raise SlurmUsage("No job identification provided")
        status = 0
        async with common.connect() as c:
            if refs:
                if sig is None or sig == signal.SIGKILL:
                    refs = await cancel_whole_arrays(c, refs, uid, name)
                jobs, _missing = await common.resolve(c, refs)  # unknown ids: silently nothing, as Slurm
            else:
                jobs = await c.list_jobs(states=["PENDING", "HELD", "RUNNING", "SUSPENDED"], uid=uid)
            if uid is not None:
                jobs = [j for j in jobs if j.get("User") == uid]
            if name:
                jobs = [j for j in jobs if j.get("Name") == name]
            if p.get("state"):
                want = parse_states(str(p.get("state")), PROG)
                jobs = [j for j in jobs if slurm_state(j) in want]
            for j in jobs:
                if j["State"] in ("COMPLETED", "FAILED", "CANCELLED"):
                    continue
                if sig is not None and sig != signal.SIGKILL:
                    if j["State"] in ("RUNNING", "SUSPENDED"):
                        why = signal_job(j, sig, bool(p.get("batch")), bool(p.get("full")))
                        if why:
                            print(f"{PROG}: error: {why}", file=sys.stderr)
                            status = 1
                    continue
                try:
                    await c.call("Cancel", "t", [j["Id"]])
                except DBusError as e:
                    if "InvalidState" in e.type:
                        continue  # it ended meanwhile
                    print(f"{PROG}: error: Kill job error on job id {common.slurm_id(j)}: {e.text}", file=sys.stderr)
                    status = 1
        return status

    return common.run(PROG, body)

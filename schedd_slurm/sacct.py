"""sacct: finished and live jobs (GetJob answers from the store for ever) in sacct's fields and layouts."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime

from schedd_slurm import common, formats
from schedd_slurm.options import NONE, OPTIONAL, Opt, Table
from schedd_slurm.states import SCHEDD_STATES, parse_states
from schedd_slurm.timespec import parse_date

PROG = "sacct"
TABLE = Table(PROG, [
    Opt("jobs", "j", repeat=True), Opt("allocations", "X", NONE), Opt("format", "o", repeat=True),
    Opt("parsable2", "P", NONE), Opt("parsable", "p", NONE), Opt("noheader", "n", NONE), Opt("name", ""),
    Opt("starttime", "S"), Opt("endtime", "E"), Opt("user", "u"), Opt("uid", ""), Opt("allusers", "a", NONE),
    Opt("state", "s"), Opt("brief", "b", NONE), Opt("long", "l", NONE), Opt("allclusters", "L", NONE),
    Opt("clusters", "M"), Opt("noconvert", "", NONE), Opt("duplicates", "D", NONE), Opt("partition", "r"),
    Opt("accounts", "A"), Opt("units", ""), Opt("helpformat", "e", NONE), Opt("truncate", "T", NONE),
    Opt("delimiter", ""), Opt("version", "V", NONE), Opt("help", "h", NONE), Opt("usage", "", NONE),
    Opt("verbose", "v", NONE), Opt("qos", "q"), Opt("nodelist", "N"), Opt("json", "", OPTIONAL),
    Opt("yaml", "", OPTIONAL), Opt("array", "", NONE), Opt("local", "", NONE), Opt("federation", "", NONE),
    Opt("wckeys", "W"), Opt("group", "g"), Opt("associations", "x"), Opt("completion", "c", NONE),
    Opt("timelimit-min", "k"), Opt("timelimit-max", "K"), Opt("reason", "R"), Opt("cluster", ""),
])
BRIEF = "JobID,State,ExitCode"
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")
LONG = ("JobID,JobIDRaw,JobName,Partition,MaxVMSize,AveRSS,MaxRSS,AveCPU,NTasks,AllocCPUS,Elapsed,State,ExitCode,"
        "ReqMem,AllocTRES")


def with_steps(jobs: list[dict], allocations: bool) -> list[dict]:
    """Each job row, then (without -X) its batch step for a job that started, as sacct lists them."""
    rows = []
    for j in jobs:
        rows.append(j)
        if not allocations and j.get("StartTime") and j["State"] not in ("PENDING", "HELD"):
            rows.append({**j, "_step": "batch"})
    return rows


def main(argv: list[str]) -> int:
    async def body() -> int:
        if (p := common.parsed(TABLE, argv)) is None:
            return 0
        if p.get("helpformat"):
            names = [f.name for f in formats.SACCT_FIELDS.values()]
            for i in range(0, len(names), 5):
                print(" ".join(n.ljust(20) for n in names[i:i + 5]).rstrip())
            return 0
        fmt = ",".join(p.get("format") or []) or (BRIEF if p.get("brief") else LONG if p.get("long")
                                                    else formats.SACCT_DEFAULT)
        cols = formats.parse_sacct_format(fmt)
        refs = common.parse_refs(list(p.get("jobs") or []), PROG)
        states = parse_states(str(p.get("state")), PROG) if p.get("state") else None
        uid = None
        if p.get("user") or p.get("uid"):
            uid = common.uid_of(str(p.get("user") or p.get("uid")).split(",")[0])
        elif not p.get("allusers") and not refs and os.getuid() != 0:
            uid = os.getuid()
        now = time.time()
        if p.get("starttime"):
            start = parse_date(str(p.get("starttime")), "--starttime", now)
        elif refs:
            start = 0.0
        else:  # Slurm: since midnight today
            start = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        end = parse_date(str(p.get("endtime")), "--endtime", now) if p.get("endtime") else None
        names = set(str(p.get("name")).split(",")) if p.get("name") else None
        start_us, end_us = int(start * 1e6), int(end * 1e6) if end is not None else None

        def kept(page: list[dict]) -> list[dict]:
            return [j for j in page if (not states or formats.state(j) in states)
                    and (names is None or j.get("Name") in names)
                    and (not j.get("EndTime") or j["EndTime"] >= start_us or j["State"] not in FINISHED)
                    and (end_us is None or j.get("SubmitTime", 0) <= end_us)]

        sep = str(p.get("delimiter")) if p.get("delimiter") else "|"
        sep, trailing = (sep, False) if p.get("parsable2") else (sep, True) if p.get("parsable") else (None, False)
        allocations = bool(p.get("allocations"))
        out = common.Listing(PROG, lambda: [] if p.get("noheader") else
                             formats.sacct_lines(cols, [], header=True, sep=sep, trailing=trailing))

        def write(page: list[dict]) -> None:
            jobs = kept(page)
            out.write(formats.sacct_lines(cols, with_steps(jobs, allocations), header=False, sep=sep,
                                          trailing=trailing), len(jobs))

        with out:
            async with common.connect() as c:
                if refs:
                    write((await common.resolve(c, refs))[0])
                else:
                    sched = sorted({s for w in states for s in SCHEDD_STATES.get(w, ())}) if states else None
                    async for page in c.job_pages(states=sched, uid=uid, properties=formats.sacct_properties(cols)):
                        write(page)
            out.end()
        return 0

    return common.run(PROG, body)

"""squeue: the queue in Slurm's columns (-o codes, headers, -h), filtered as Slurm filters it."""

from __future__ import annotations

import os
import sys

from schedd_slurm import common, formats
from schedd_slurm.options import NONE, OPTIONAL, Opt, SlurmUsage, Table
from schedd_slurm.states import QUEUE_DEFAULT, SCHEDD_STATES, parse_states

PROG = "squeue"
TABLE = Table(PROG, [
    Opt("format", "o"), Opt("Format", "O"), Opt("noheader", "h", NONE), Opt("states", "t"), Opt("jobs", "j", OPTIONAL, True),
    Opt("user", "u", repeat=True), Opt("me", "", NONE), Opt("name", "n"), Opt("array", "r", NONE),
    Opt("all", "a", NONE), Opt("long", "l", NONE), Opt("partition", "p"), Opt("account", "A"), Opt("qos", "q"),
    Opt("clusters", "M"), Opt("sort", "S"), Opt("iterate", "i"), Opt("verbose", "v", NONE), Opt("version", "V", NONE),
    Opt("help", "", NONE), Opt("usage", "", NONE), Opt("local", "", NONE), Opt("federation", "", NONE),
    Opt("steps", "s", OPTIONAL), Opt("start", "", NONE), Opt("nodelist", "w"), Opt("reservation", "R"),
    Opt("json", "", NONE), Opt("yaml", "", NONE), Opt("hide", "", NONE), Opt("noconvert", "", NONE),
    Opt("array-unique", "", NONE), Opt("licenses", "L"), Opt("only-job-state", "", NONE),
])
LONG = "%.18i %.9P %.8j %.8u %.8T %.10M %.9l %.6D %R"


def main(argv: list[str]) -> int:
    async def body() -> int:
        if (p := common.parsed(TABLE, argv)) is None:
            return 0
        if p.get("Format"):
            raise SlurmUsage("--Format is not supported by schedd's squeue; use -o/--format codes")
        fmt = str(p.get("format") or (LONG if p.get("long") else formats.SQUEUE_DEFAULT))
        cols, tail = formats.parse_squeue_format(fmt)
        want = parse_states(str(p.get("states")), PROG) if p.get("states") else set(QUEUE_DEFAULT)
        jobs_given = [v for v in (p.get("jobs") or []) if v is not True] + list(p.args)
        refs = common.parse_refs(jobs_given, PROG)
        uids = None
        if p.get("me"):
            uids = {os.getuid()}
        if p.get("user"):
            uids = {common.uid_of(u) for v in p.get("user") for u in str(v).split(",") if u}
        names = set(str(p.get("name")).split(",")) if p.get("name") else None

        def kept(page: list[dict]) -> list[dict]:
            return [j for j in page if formats.state(j) in want and (uids is None or j.get("User") in uids)
                    and (names is None or j.get("Name") in names)]

        def head() -> list[str]:
            lines = []
            if p.get("long"):
                import time

                lines.append(time.strftime("%a %b %d %H:%M:%S %Y"))
            if not p.get("noheader"):
                lines.append(formats.squeue_line(cols, tail, None))
            return lines

        out, folder = common.Listing(PROG, head), formats.ArrayFolder()

        def write(rows: list[dict]) -> None:
            out.write([formats.squeue_line(cols, tail, j) for j in rows], len(rows))

        fold = (lambda rows: rows) if p.get("array") else folder.feed
        with out:
            async with common.connect() as c:
                if refs:
                    jobs, missing = await common.resolve(c, refs)
                    if missing and not jobs:
                        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
                        return 1
                    rows = kept(jobs)
                    write(rows if p.get("array") else formats.collapse_pending_arrays(rows))
                else:  # each page printed as it comes: a long queue is never held whole
                    schedd_states = sorted({s for w in want for s in SCHEDD_STATES.get(w, ())})
                    uid = next(iter(uids)) if uids and len(uids) == 1 else None
                    async for page in c.job_pages(schedd_states, uid, fold=not p.get("array"),
                                                  properties=formats.squeue_properties(cols)):
                        write(fold(kept(page)))
            write(folder.end())
            out.end()
        return 0

    return common.run(PROG, body)

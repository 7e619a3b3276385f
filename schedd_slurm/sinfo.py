"""sinfo: this node (or the federation's nodes) as one partition, the default one (`*`)."""

from __future__ import annotations

import re

from schedd_slurm import common
from schedd_slurm.options import NONE, Opt, SlurmUsage, Table

PROG = "sinfo"
TABLE = Table(PROG, [
    Opt("format", "o"), Opt("Format", "O"), Opt("noheader", "h", NONE), Opt("partition", "p"), Opt("long", "l", NONE),
    Opt("Node", "N", NONE), Opt("summarize", "s", NONE), Opt("all", "a", NONE), Opt("exact", "e", NONE),
    Opt("states", "t"), Opt("nodes", "n"), Opt("dead", "d", NONE), Opt("responding", "r", NONE),
    Opt("iterate", "i"), Opt("version", "V", NONE), Opt("help", "", NONE), Opt("usage", "", NONE),
    Opt("verbose", "v", NONE), Opt("clusters", "M"), Opt("hide", "", NONE), Opt("local", "", NONE),
    Opt("federation", "", NONE), Opt("list-reasons", "R", NONE), Opt("noconvert", "", NONE),
    Opt("json", "", NONE), Opt("yaml", "", NONE), Opt("sort", "S"), Opt("reservation", "T", NONE),
])
DEFAULT = "%9P %.5a %.10l %.6D %.6t %N"
_CODE = re.compile(r"%(\.?)(\d*)([A-Za-z])")


def node_state(n: dict) -> str:
    if n.get("State") == "down":
        return "down"
    if n.get("State") in ("draining", "drained"):  # schedctl drain: Slurm's short forms (sinfo %t)
        return "drng" if n["State"] == "draining" else "drain"
    if n.get("RunningJobs"):
        return "alloc" if not n.get("AvailableCPUs") else "mix"
    return "idle"


def main(argv: list[str]) -> int:
    async def body() -> int:
        if (p := common.parsed(TABLE, argv)) is None:
            return 0
        fmt = str(p.get("format") or DEFAULT)
        async with common.connect() as c:
            nodes = await c.list_nodes()
        groups: dict[str, list[dict]] = {}
        per_node = bool(p.get("Node"))
        for n in nodes:
            groups.setdefault(n.get("Name", "") if per_node else node_state(n), []).append(n)
        if per_node:
            rows = [(node_state(ns[0]), ns) for ns in groups.values()]
        else:
            rows = list(groups.items())

        def value(code: str, st: str | None, ns: list[dict] | None) -> str:
            header = st is None
            table = {
                "P": ("PARTITION", lambda: common.CLUSTER + "*"), "R": ("PARTITION", lambda: common.CLUSTER),
                "a": ("AVAIL", lambda: "up"), "l": ("TIMELIMIT", lambda: "infinite"),
                "D": ("NODES", lambda: str(len(ns))), "t": ("STATE", lambda: st), "T": ("STATE", lambda: st),
                "N": ("NODELIST", lambda: ",".join(n.get("Name", "") for n in ns)),
                "n": ("HOSTNAMES", lambda: ",".join(n.get("Name", "") for n in ns)),
                "c": ("CPUS", lambda: str(max(n.get("TotalCPUs", 0) for n in ns))),
                "C": ("CPUS(A/I/O/T)", lambda: "{}/{}/0/{}".format(
                    sum(n.get("TotalCPUs", 0) - n.get("AvailableCPUs", 0) for n in ns),
                    sum(n.get("AvailableCPUs", 0) for n in ns), sum(n.get("TotalCPUs", 0) for n in ns))),
                "m": ("MEMORY", lambda: str(max(n.get("TotalMemory", 0) for n in ns) >> 20)),
                "G": ("GRES", lambda: f"gpu:{max(n.get('TotalGPUs', 0) for n in ns)}"
                      if any(n.get("TotalGPUs") for n in ns) else "(null)"),
                "F": ("NODES(A/I/O/T)", lambda: "{}/{}/0/{}".format(
                    sum(1 for n in ns if n.get("RunningJobs")), sum(1 for n in ns if not n.get("RunningJobs")), len(ns))),
                "A": ("NODES(A/I)", lambda: "{}/{}".format(sum(1 for n in ns if n.get("RunningJobs")),
                                                          sum(1 for n in ns if not n.get("RunningJobs")))),
                "E": ("REASON", lambda: "none"), "f": ("AVAIL_FEATURES", lambda: "(null)"),
                "s": ("JOB_SIZE", lambda: "1"), "O": ("CPU_LOAD", lambda: "0.00"),
            }
            if code not in table:
                raise SlurmUsage(f"Invalid node format specification: {code}")
            h, f = table[code]
            return h if header else f()

        def line(st: str | None, ns: list[dict] | None) -> str:
            out, pos = [], 0
            for m in _CODE.finditer(fmt):
                out.append(fmt[pos:m.start()])
                text = value(m.group(3), st, ns)
                if m.group(2):
                    w = int(m.group(2))
                    text = text[:w].rjust(w) if m.group(1) else text[:w].ljust(w)
                out.append(text)
                pos = m.end()
            return "".join(out) + fmt[pos:]

        if not p.get("noheader"):
            print(line(None, None))
        for st, ns in rows:
            print(line(st, ns))
        return 0

    return common.run(PROG, body)

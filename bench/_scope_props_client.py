"""Client of bench/scope_props.py: inside the booted test systemd, as root. Prints one JSON object:
per property set, the p50 ms of one scope start (StartTransientUnit until its job is done, the gate
spawned beforehand), the sets interleaved round by round so the machine's drift hits them alike."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time

from dbus_fast import Variant

from _client import SD, spawn_floor_gate, watch_jobs_removed
from schedd import bus as dbus

BARE = [["Slice", Variant("s", "bench.slice")], ["MemoryAccounting", Variant("b", True)],
        ["MemoryMax", Variant("t", 256 << 20)], ["CollectMode", Variant("s", "inactive-or-failed")]]
EXTRA = {  # what schedd's scope adds to the floor's (schedd/executor/systemd.py _scope_properties)
    "Description": ["Description", Variant("s", "schedd job 1 (bench) of root")],
    "MemorySwapMax": ["MemorySwapMax", Variant("t", 0)],
    "CPUAccounting": ["CPUAccounting", Variant("b", True)],
    "TasksAccounting": ["TasksAccounting", Variant("b", True)],
    "AllowedCPUs": ["AllowedCPUs", Variant("ay", b"\x01")],
    "OOMPolicy": ["OOMPolicy", Variant("s", "continue")],
    "TimeoutStopUSec": ["TimeoutStopUSec", Variant("t", 10_000_000)],
    "SendSIGKILL": ["SendSIGKILL", Variant("b", True)],
}
SETS = {"floor": [], **{f"+{k}": [v] for k, v in EXTRA.items()}, "schedd's": list(EXTRA.values())}


async def main() -> None:
    n, rounds = int(sys.argv[1]), int(sys.argv[2])
    bus, removed = await watch_jobs_removed()
    per: dict[str, list[float]] = {k: [] for k in SETS}
    tag = f"props{os.getpid()}"
    i = 0
    for _ in range(rounds):
        for name, extra in SETS.items():
            out = []
            for _ in range(n):
                pid, w = spawn_floor_gate()
                t0 = time.perf_counter()
                (path,) = await dbus.call(bus, *SD, "StartTransientUnit", "ssa(sv)a(sa(sv))", [
                    f"{tag}-{i}.scope", "fail", [["PIDs", Variant("au", [pid])], *BARE, *extra], []])
                t1 = await removed.wait(path)
                out.append((t1 - t0) * 1000)
                os.write(w, b"\n")
                os.close(w)
                os.waitpid(pid, 0)
                i += 1
            per[name].append(statistics.median(out))
    bus.disconnect()
    print(json.dumps({k: statistics.median(v) for k, v in per.items()}))


asyncio.run(main())

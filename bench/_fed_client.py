"""Federation benchmark client: runs inside node a's test systemd as an ordinary user.

Prints one JSON object with, for local jobs (no Node) and forwarded ones (Node=b), in one run:
  submit_ms     Submit call latency (held jobs: the call alone), p50/p99
  start_ms      submit -> the job's StartTime (as the origin shows it), p50/p99, one job at a time
  jobs_per_s    `true` jobs submitted by 32 concurrent callers, until the origin shows all COMPLETED
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from dbus_fast import Variant

from _client import Schedd, pct  # the single-node benchmark's D-Bus helper


def spec(cmd: list[str], node: str | None, **extra) -> dict:
    d = {"Command": Variant("as", cmd), "Memory": Variant("t", 64 << 20)}
    if node:
        d["Node"] = Variant("s", node)
    d.update(extra)
    return d


async def submit_latency(s: Schedd, node: str | None, n: int) -> list[float]:
    out, ids = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        ((jid, _),) = await s.call("Submit", "a{sv}", [spec(["true"], node, Hold=Variant("b", True))])
        out.append((time.perf_counter() - t0) * 1000)
        ids.append(jid)
    for jid in ids:
        await s.call("Cancel", "t", [jid])
    return out


async def start_latency(s: Schedd, node: str | None, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.time_ns() // 1000
        ((jid, _),) = await s.call("Submit", "a{sv}", [spec(["true"], node)])
        await s.wait_state(jid, "COMPLETED")
        (job,) = await s.call("GetJob", "t", [jid])
        out.append((job["StartTime"].value - t0) / 1000)
    return out


async def throughput(s: Schedd, node: str | None, n: int, concurrency: int = 32) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> float:
        async with sem:
            ((jid, _),) = await s.call("Submit", "a{sv}", [spec(["true"], node)])
        return await s.wait_state(jid, "COMPLETED")

    t0 = time.perf_counter()
    ends = await asyncio.gather(*(one() for _ in range(n)))
    return n / (max(ends) - t0)


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    s = Schedd()
    await s.open()
    res: dict = {"n": n}
    for label, node in (("local", None), ("forwarded", "b")):
        sub = await submit_latency(s, node, n)
        start = await start_latency(s, node, max(50, n // 3))
        res[label] = {"submit_p50": pct(sub, 50), "submit_p99": pct(sub, 99), "start_p50": pct(start, 50),
                      "start_p99": pct(start, 99), "jobs_per_s": await throughput(s, node, n)}
    print(json.dumps(res))


if __name__ == "__main__":
    asyncio.run(main())

"""Container-cost client: runs inside the booted test systemd as root, next to the schedd under test.

Jobs run as user nobody in /tmp, `true` each, 64 MiB, one CPU. Interleaved rounds of:
  seq    one job at a time, Submit -> COMPLETED, ms (plain, then the same in the image)
  batch  N jobs submitted at once (SubmitMany), jobs/s until the last COMPLETED
Prints one JSON object (medians over rounds).
"""

from __future__ import annotations

import asyncio
import json
import pwd
import statistics
import sys
import time
from pathlib import Path

from dbus_fast import Variant

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _client import Schedd  # noqa: E402


def spec(image: str) -> dict:
    nobody = pwd.getpwnam("nobody")
    d = {"Command": Variant("as", ["true"]), "Memory": Variant("t", 64 << 20), "User": Variant("u", nobody.pw_uid),
         "WorkingDirectory": Variant("s", "/tmp")}
    if image:
        d["Container"] = Variant("s", image)
    return d


async def finished(s: Schedd, jid: int) -> float:
    done = [asyncio.ensure_future(s.wait_state(jid, st)) for st in ("COMPLETED", "FAILED")]
    end, _ = await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
    job = await s.call("GetJob", "t", [jid])
    if job[0]["State"].value != "COMPLETED":
        raise SystemExit(f"job {jid} ended {job[0]['State'].value} {job[0]['Reason'].value}")
    return next(iter(end)).result()


async def seq(s: Schedd, image: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        ((jid, _),) = await s.call("Submit", "a{sv}", [spec(image)])
        out.append((await finished(s, jid) - t0) * 1000)
    return out


async def batch(s: Schedd, image: str, n: int) -> float:
    t0 = time.perf_counter()
    (ids,) = await s.call("SubmitMany", "aa{sv}", [[spec(image) for _ in range(n)]])
    ends = await asyncio.gather(*(finished(s, i) for i in ids))
    return n / (max(ends) - t0)


async def main(argv: list[str]) -> None:
    image, n, rounds = argv[0], int(argv[1]), int(argv[2])
    s = Schedd()
    await s.open()
    await seq(s, image, 2)  # warm: podman's first run sets up its store
    res: dict[str, list[float]] = {"plain_ms": [], "container_ms": [], "plain_jobs_s": [], "container_jobs_s": []}
    for _ in range(rounds):
        res["plain_ms"].append(statistics.median(await seq(s, "", n)))
        res["container_ms"].append(statistics.median(await seq(s, image, n)))
        res["plain_jobs_s"].append(await batch(s, "", n))
        res["container_jobs_s"].append(await batch(s, image, n))
    out = {k: round(statistics.median(v), 2) for k, v in res.items()}
    out["n"], out["rounds"] = n, rounds
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

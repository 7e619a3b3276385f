"""Run inside the sandbox: C connections each keep N Submit calls in flight at once; print the ids as JSON."""

import asyncio
import json
import sys

from dbus_fast import Variant

from schedd import bus as dbus

SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")


async def client(n: int) -> list[int]:
    b = await dbus.connect(dbus.bus_address(False))
    spec = {"Command": Variant("as", ["true"]), "Hold": Variant("b", True), "Memory": Variant("t", 16 << 20)}
    replies = await asyncio.gather(*(dbus.call(b, *SCHEDD, "Submit", "a{sv}", [spec]) for _ in range(n)))
    ids = [r[0][0] for r in replies]
    await asyncio.gather(*(dbus.call(b, *SCHEDD, "Cancel", "t", [i]) for i in ids))
    b.disconnect()
    return ids


async def main() -> None:
    conns, each = int(sys.argv[1]), int(sys.argv[2])
    results = await asyncio.gather(*(client(each) for _ in range(conns)))
    print(json.dumps([i for r in results for i in r]))


asyncio.run(main())

"""C clients, each keeping K Submit calls in flight until it has M ids; prints every id the moment it is
acknowledged (so a test can kill the daemon mid-burst), and 'ERR <name>' when a client's calls start failing."""

import asyncio
import sys

from dbus_fast import Variant
from dbus_fast.errors import DBusError

from schedd import bus as dbus

SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")


async def client(m: int, k: int, command: list[str]) -> None:
    b = await dbus.connect(dbus.bus_address(False))
    spec = {"Command": Variant("as", command), "Memory": Variant("t", 16 << 20)}
    left = m
    failed = False

    async def worker() -> None:
        nonlocal left, failed
        while left > 0 and not failed:
            left -= 1
            try:
                ((jid, _),) = await dbus.call(b, *SCHEDD, "Submit", "a{sv}", [spec])
            except (DBusError, OSError, EOFError) as e:
                failed = True
                print(f"ERR {getattr(e, 'type', type(e).__name__)}", flush=True)
                return
            print(jid, flush=True)

    await asyncio.gather(*(worker() for _ in range(k)))
    b.disconnect()


async def main() -> None:
    c, m, k = (int(x) for x in sys.argv[1:4])
    await asyncio.gather(*(client(m, k, sys.argv[4:]) for _ in range(c)), return_exceptions=True)


asyncio.run(main())

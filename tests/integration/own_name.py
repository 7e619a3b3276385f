"""Try to own org.schedd.Schedd1 on the system bus; print the outcome (run as a non-root user)."""

import asyncio

from dbus_fast import NameFlag
from dbus_fast.errors import DBusError

from schedd import bus as dbus


async def main() -> None:
    b = await dbus.connect(dbus.bus_address(False))
    try:
        reply = await b.request_name("org.schedd.Schedd1", NameFlag.DO_NOT_QUEUE)
        print(f"reply {reply.name}")
    except DBusError as e:
        print(f"error {e.type}: {e.text}")


asyncio.run(main())

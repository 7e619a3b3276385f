"""Print schedd's signals as a subscriber sees them, one JSON line each (run inside the sandbox, as any user).

Prints "ready" once the match rule is in place; then {"member", "path", "body"} per signal.
Stops when its stdin closes (the test is done) or after argv[1] seconds (default 60).
"""

import asyncio
import json
import os
import sys

from dbus_fast import Message, MessageType

from schedctl.client import plain
from schedd import bus as dbus




async def main() -> None:
    b = await dbus.connect(dbus.bus_address(False))

    def on(msg: Message):
        if msg.message_type is MessageType.SIGNAL and msg.path.startswith("/org/schedd/Schedd1"):
            print(json.dumps({"member": msg.member, "path": msg.path, "body": plain(msg.body)}), flush=True)

    b.add_message_handler(on)
    await dbus.add_match(b, "type='signal',sender='org.schedd.Schedd1',path_namespace='/org/schedd/Schedd1'")
    print("ready", flush=True)
    eof = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.wait([eof], timeout=float(sys.argv[1]) if len(sys.argv) > 1 else 60)
    os._exit(0)  # the reader thread may still block on stdin


asyncio.run(main())

"""Make Manager calls described as JSON on stdin; print one JSON result per call (run inside the sandbox).

Input: {"calls": [{"member": "Submit", "signature": "a{sv}", "body": [{"Command": ["as", ["true"]]}]}],
        "concurrency": 8}. Variants are written ["sig", value]. Output: a JSON list of
{"ok": body} or {"error": name, "message": text}, in call order.
"""

import asyncio
import json
import sys

from dbus_fast import Variant
from dbus_fast.errors import DBusError

from schedctl.client import plain
from schedd import bus as dbus


def variants(x):
    """An a{sv} is written {"Key": ["sig", value]}; lists of them (aa{sv}) likewise."""
    if isinstance(x, dict):
        return {k: Variant(v[0], v[1]) for k, v in x.items()}
    if isinstance(x, list):
        return [variants(v) for v in x]
    return x




async def main() -> None:
    req = json.load(sys.stdin)
    b = await dbus.connect(dbus.bus_address(False))
    sem = asyncio.Semaphore(req.get("concurrency", 1))

    async def one(call):
        async with sem:
            try:
                body = await dbus.call(b, "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager",
                                       call["member"], call.get("signature", ""),
                                       [variants(a) for a in call.get("body", [])])
                return {"ok": plain(body)}
            except DBusError as e:
                return {"error": e.type, "message": e.text}

    print(json.dumps(await asyncio.gather(*(one(c) for c in req["calls"]))))


asyncio.run(main())

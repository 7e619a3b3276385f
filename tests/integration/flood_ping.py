"""One user's huge SubmitMany while another connection pings the daemon (run inside the sandbox).

`flood_ping.py N`: a child process sends one SubmitMany of N small held specs (marshalling
them in another process, so the client's own work never delays the pings); this process
meanwhile probes the daemon in a loop over its own connection, alternating
org.freedesktop.DBus.Peer.Ping (answered by the daemon's event loop like any call) and
Manager.GetJob of an unknown id (which goes through the engine), and times each round trip.
Prints one JSON object: the SubmitMany outcome and the pings' count, worst and median
latency (seconds), and errors (a ping that got an error, e.g. NoReply, instead of its answer).
"""

import asyncio
import json
import statistics
import sys
import time

from dbus_fast import Message, MessageType, Variant

from schedd import bus as dbus

DEST, PATH, MANAGER = "org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager"


async def submit(n: int) -> None:
    b = await dbus.connect(dbus.bus_address(False))
    spec = {"Command": Variant("as", ["true"]), "Hold": Variant("b", True)}
    t0 = time.monotonic()
    reply = await b.call(Message(destination=DEST, path=PATH, interface=MANAGER, member="SubmitMany",
                                 signature="aa{sv}", body=[[spec] * n]))
    took = time.monotonic() - t0
    if reply.message_type == MessageType.ERROR:
        out = {"error": reply.error_name, "message": reply.body[0] if reply.body else "", "seconds": took}
    else:
        ids = reply.body[0]
        out = {"count": len(ids), "first": ids[0] if ids else 0, "last": ids[-1] if ids else 0, "seconds": took}
    print(json.dumps(out), flush=True)


def ping() -> Message:
    return Message(destination=DEST, path=PATH, interface="org.freedesktop.DBus.Peer", member="Ping")


def get_job() -> Message:
    return Message(destination=DEST, path=PATH, interface=MANAGER, member="GetJob", signature="t", body=[2**62])


async def probe(n: int) -> None:
    b = await dbus.connect(dbus.bus_address(False))
    child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--submit", str(n),
                                                 stdout=asyncio.subprocess.PIPE)
    waiter = asyncio.ensure_future(child.communicate())
    latencies: list[float] = []
    errors: list[str] = []
    i = 0
    while not waiter.done():
        i += 1
        t0 = time.monotonic()
        reply = await b.call(ping() if i % 2 else get_job())
        latencies.append(time.monotonic() - t0)
        if reply.message_type == MessageType.ERROR and not reply.error_name.endswith(".NotFound"):
            errors.append(f"{reply.error_name}: {reply.body[0] if reply.body else ''}")
        await asyncio.sleep(0.01)
    stdout, _ = await waiter
    print(json.dumps({
        "submit": json.loads(stdout or b"null"), "pings": len(latencies), "errors": errors,
        "max": max(latencies, default=0.0), "median": statistics.median(latencies) if latencies else 0.0,
    }))


if __name__ == "__main__":
    if sys.argv[1] == "--submit":
        asyncio.run(submit(int(sys.argv[2])))
    else:
        asyncio.run(probe(int(sys.argv[1])))

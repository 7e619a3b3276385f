"""schedd: the daemon's entry point. One asyncio loop for D-Bus, child watching and HTTP.

Start-up order matters (Type=notify): recover the store and re-adopt running
scopes first, then export the objects and take the bus name, then READY=1,
so no client ever sees a half-recovered daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from schedd import __version__
from schedd import bus as dbus
from schedd.config import ConfigError, load
from schedd.api.dbus.service import DBusService, ServiceBus
from schedd.core.engine import Engine
from schedd.gpus import device_paths
from schedd.executor import ExecutorError, make_executor
from schedd.core.store import Store, default_path
from schedd.logs import setup_logging

log = logging.getLogger("schedd")

def sd_notify(state: str) -> bool:
    """READY=1, STATUS=..., WATCHDOG=1, STOPPING=1 to $NOTIFY_SOCKET (a datagram; '@' = abstract)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("sd_notify(%s): %s", state, e)
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="schedd", description="The schedd job scheduler daemon.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--system", dest="user", action="store_false", help="system daemon on the system bus (default)")
    mode.add_argument("--user", dest="user", action="store_true", help="per-user daemon on the session bus")
    p.add_argument("--config", type=Path, help="configuration file (default /etc/schedd/schedd.toml)")
    p.add_argument("--state-dir", type=Path, help="state directory (overrides the configuration)")
    p.add_argument("--executor", choices=("auto", "systemd", "plain"), help="how jobs are run (default auto)")
    p.add_argument("--bus-address", help="D-Bus address to serve on (default: the system or session bus)")
    p.add_argument("--replace", action="store_true", help="take the bus name over from a running instance")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"schedd {__version__}")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    cfg = load(args.config, args.user)
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.executor:
        cfg.executor = args.executor
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _l, ctx: log.error("unhandled: %s", ctx.get("exception") or ctx["message"],
                                                         exc_info=ctx.get("exception")))
    address = args.bus_address or dbus.bus_address(args.user)
    store = Store(default_path(cfg.state_dir))
    engine = Engine(cfg, store, user_mode=args.user)
    executor = await make_executor(
        cfg.executor, engine.on_exit, address=dbus.bus_address(args.user),
        status_dir=cfg.state_dir / "exits", kill_wait_usec=cfg.kill_wait_usec,
        gpu_devices=(lambda idx: device_paths(cfg.gpu_device, idx, cfg.gpu_minors)) if cfg.gpu_ids else None,
        containers=cfg.containers,
    )
    await engine.recover(executor)
    bus = await dbus.connect(address, bus_class=ServiceBus)
    service = DBusService(engine, bus)
    gc.collect()
    gc.freeze()  # what recovery loaded stays: keep it out of the cyclic collector's full passes (engine._Slicer)
    await service.take_name(args.replace)
    web = await _start_web(cfg, engine, service)
    gates = getattr(executor, "gates", None)
    log.info("schedd %s ready on %s: node %s, executor %s (gate %s), %d CPUs, %d MiB, %d GPUs, state %s",
             __version__, address, cfg.node_name, executor.name, gates.kind if gates else "-",
             engine.ledger.total_cpus,
             engine.ledger.total_memory >> 20, engine.ledger.total_gpus, cfg.state_dir)
    sd_notify(f"READY=1\nSTATUS=executor {executor.name}, {engine.ledger.total_cpus} CPUs")

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: (engine.begin_shutdown(), stop.set()))  # no start from now on
    watchdog = _start_watchdog(loop)
    disconnected = loop.create_task(bus.wait_for_disconnect())
    stopping = loop.create_task(stop.wait())
    done, _ = await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    if disconnected in done:
        log.error("lost the D-Bus connection; exiting so systemd restarts us")
        rc = 1
    sd_notify("STOPPING=1")
    if watchdog:
        watchdog.cancel()
    if web:
        if getattr(web, "federation", None):
            await web.federation.stop()
        await web.stop()
    await engine.shutdown()
    await dbus.flush(bus)  # the last signals, queued for the end of the loop's turn
    bus.disconnect()
    store.close()
    log.info("stopped; running jobs continue in their scopes and will be re-adopted")
    return rc


async def _start_web(cfg, engine: Engine, service: DBusService):
    """The HTTP server, when [http] listen is set; each feature adds its routes here. With peers,
    metrics and the dashboard get the federation's ListNodes-style rows of them."""
    if cfg.http.listen is None:
        return None
    from aiohttp import web as aioweb  # aiohttp is only imported by daemons that serve HTTP

    from schedd.api.http.dashboard import Dashboard
    from schedd.api.http.metrics import CONTENT_TYPE, Metrics
    from schedd.api.http.web import Web

    web = Web(cfg.http, node_name=cfg.node_name)
    peers = None
    if cfg.federated:
        from schedd.cluster.federation import Federation
        from schedd.cluster.api import FederationApi

        web.federation = Federation(engine, cfg, web)
        FederationApi(web.federation, web)
        peers = web.federation.node_rows
    metrics = Metrics(engine, peers)

    async def serve_metrics(_request):
        # On the loop, not a thread: the collector reads the engine's live state.
        return aioweb.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    web.app.router.add_get("/metrics", serve_metrics)
    from schedd.api.http.history import History

    history = History(engine, peers, interval=cfg.http.history_interval_usec / 1e6,
                      path=cfg.state_dir / "history.json", nodes=1 + len(cfg.peers))

    async def start_history(_app) -> None:
        history.start()

    async def stop_history(_app) -> None:
        await history.stop()

    web.app.on_startup.append(start_history)
    web.app.on_cleanup.append(stop_history)
    dashboard = Dashboard(engine, web, peers, local_node=service.local_node, history=history)
    if cfg.federated:
        web.federation.node_listeners.append(dashboard.nodes_changed)  # a peer up/down shows without a job event
    await web.start()
    if cfg.federated:
        await web.federation.start()
    return web


def _start_watchdog(loop: asyncio.AbstractEventLoop) -> asyncio.Task | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None

    async def pet() -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(int(usec) / 2e6)

    return loop.create_task(pet())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        return asyncio.run(run(args))
    except ConfigError as e:
        log.error("configuration: %s", e)
        return 78  # EX_CONFIG
    except (ExecutorError, RuntimeError, OSError) as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection for the crash tests: die by SIGKILL at a named point, once.

Off unless $SCHEDD_FAULT_FILE is set (tests set it with a drop-in); then, at
each point, if that file exists and names the point, the file is removed and
the daemon kills itself, exactly as `systemctl kill -s KILL` would.
"""

from __future__ import annotations

import os
import signal

_FILE = os.environ.get("SCHEDD_FAULT_FILE")


def point(name: str) -> None:
    if _FILE is None:
        return
    try:
        with open(_FILE) as f:
            wanted = f.read().strip()
    except FileNotFoundError:
        return
    if wanted == name:
        os.unlink(_FILE)
        os.kill(os.getpid(), signal.SIGKILL)

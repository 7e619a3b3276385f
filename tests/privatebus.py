"""A private D-Bus daemon for tests that need a bus but no systemd.

Its configuration lists no service directories, so a call made before the daemon
under test owns its name fails fast instead of D-Bus-activating an installed schedd.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def start(root: Path) -> tuple[subprocess.Popen, str]:
    """Start dbus-daemon with a socket under root; returns (process, address)."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "bus.conf"
    conf.write_text(BUS_CONFIG.format(dir=root))
    bus = subprocess.Popen(["dbus-daemon", "--config-file", str(conf), "--nofork", "--print-address=1"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = bus.stdout.readline().strip()
    if not address:
        bus.kill()
        raise RuntimeError("dbus-daemon printed no address")
    return bus, address

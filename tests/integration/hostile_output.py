"""Run inside the sandbox as an unprivileged user: make output paths that are not files (a pty of
this user's, a FIFO, a symlink to someone else's file), submit held jobs that name them, and
ReadOutput each through the system bus. Prints one JSON line, then keeps the pty open until
stdin closes (the test looks at the daemon meanwhile), then hangs it up.
"""

import json
import os
import subprocess
import shutil
import sys
import tempfile
import time


def gdbus(member: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["gdbus", "call", "--system", "--dest", "org.schedd.Schedd1", "--object-path",
                           "/org/schedd/Schedd1", "--method", f"org.schedd.Schedd1.Manager.{member}", *args],
                          capture_output=True, text=True, timeout=60)


def main() -> None:
    home = os.environ["HOME"]
    d = tempfile.mkdtemp(prefix="hostile-output-", dir=home)
    fifo, link = os.path.join(d, "fifo"), os.path.join(d, "link")
    os.mkfifo(fifo)
    os.symlink("/etc/shadow", link)
    master, slave = os.openpty()
    tty = os.ttyname(slave)
    os.close(slave)
    results = {}
    for what, path in (("tty", tty), ("fifo", fifo), ("symlink", link)):
        r = gdbus("Submit", f"{{'Command': <['true']>, 'Hold': <true>, 'StdoutPath': <'{path}'>}}")
        if r.returncode != 0:
            results[what] = {"submit_error": r.stderr.strip()}
            continue
        jid = r.stdout.split("(")[2].split(",")[0].replace("uint64", "").strip()
        t0 = time.monotonic()
        r = gdbus("ReadOutput", jid, "false", "0")
        results[what] = {"id": int(jid), "rc": r.returncode, "stderr": r.stderr.strip(), "stdout": r.stdout,
                         "seconds": time.monotonic() - t0}
        gdbus("Cancel", jid)
    print(json.dumps({"tty": tty, "results": results}), flush=True)
    sys.stdin.read()  # until the test has looked at the daemon
    os.close(master)  # hangs the pty up: its session leader, if the daemon had taken it, gets SIGHUP
    shutil.rmtree(d)
    print("closed", flush=True)


main()

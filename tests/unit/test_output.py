"""Reading job output for clients: only a regular file of the job's user is ever opened, off the loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from schedd.core import output
from schedd.errors import AccessDenied, InvalidState
from schedd.core.output import read_output, read_output_blocking, read_tail_blocking

ME = os.getuid()


def test_a_regular_file_of_the_user_is_read(tmp_path: Path):
    f = tmp_path / "out"
    f.write_bytes(b"hello world")
    assert read_output_blocking(str(f), ME, 6) == b"world"
    assert read_tail_blocking(str(f), ME, 5) == b"world"
    assert read_output_blocking(str(tmp_path / "not-yet"), ME, 0) == b""


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling-symlink", "directory", "dev-null", "ptmx"])
def test_anything_but_a_regular_file_is_refused_without_being_opened(tmp_path: Path, kind: str):
    target = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "real").write_text("data")
        target.symlink_to(tmp_path / "real")
    elif kind == "dangling-symlink":
        target.symlink_to(tmp_path / "nowhere")
    elif kind == "directory":
        target.mkdir()
    else:
        target = Path("/dev/null" if kind == "dev-null" else "/dev/ptmx")
    for read in (lambda: read_output_blocking(str(target), ME, 0), lambda: read_tail_blocking(str(target), ME, 10)):
        with pytest.raises(AccessDenied, match="not a regular file"):
            read()


def test_a_fifo_is_not_opened_so_a_waiting_writer_stays_blocked(tmp_path: Path):
    """Opening a FIFO for reading (even O_NONBLOCK) would release a writer blocked in open()."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(AccessDenied):
        read_output_blocking(str(fifo), ME, 0)
    # A non-blocking open for writing fails with ENXIO exactly when no reader has it open.
    with pytest.raises(OSError) as e:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert e.value.errno == 6  # ENXIO


def test_a_tty_never_becomes_the_daemons_controlling_terminal(tmp_path: Path):
    """The daemon is a session leader without a terminal: opening a tty without O_NOCTTY would make
    it the daemon's, and its hang-up would then kill the daemon (SIGHUP)."""
    code = (
        "import os, sys\n"
        "from schedd.errors import AccessDenied\n"
        "from schedd.core.output import read_output_blocking\n"
        "master, slave = os.openpty()\n"
        "name = os.ttyname(slave)\n"
        "os.close(slave)\n"
        "try:\n"
        "    read_output_blocking(name, os.getuid(), 0)\n"
        "    print('read')\n"
        "except AccessDenied as e:\n"
        "    print('denied', e)\n"
        "print('tty_nr', open('/proc/self/stat').read().rsplit(')', 1)[1].split()[4])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       start_new_session=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "tty_nr 0" in r.stdout, r.stdout
    assert "denied" in r.stdout and "character device" in r.stdout, r.stdout


def test_files_of_others_are_refused(tmp_path: Path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(AccessDenied, match="not owned"):
        read_output_blocking(str(f), ME + 1, 0)
    if ME == 0:
        with pytest.raises(AccessDenied, match="not owned"):
            read_output_blocking("/etc/shadow", 1000, 0)


async def test_reads_run_off_the_loop_and_a_stalled_one_times_out(monkeypatch, tmp_path: Path):
    release = threading.Event()
    threads: list[int] = []

    def stalled(path: str, uid: int, offset: int, limit: int) -> bytes:
        threads.append(threading.get_ident())
        release.wait(10)
        return b"late"

    monkeypatch.setattr(output, "read_output_blocking", stalled)
    monkeypatch.setattr(output, "READ_TIMEOUT_S", 0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.get_running_loop().create_task(ticker())
    try:
        with pytest.raises(InvalidState, match="stalled"):
            await read_output("/stalled/mount/out", ME, 0)
    finally:
        release.set()
        t.cancel()
    assert threads and threads[0] != threading.get_ident()
    assert ticks > 5  # the loop kept running while the read was stuck


async def test_one_users_stalled_reads_leave_the_others_their_threads(monkeypatch, tmp_path: Path):
    release = threading.Event()

    def blocking(path: str, uid: int, offset: int, limit: int) -> bytes:
        if path.startswith("/stalled/"):
            release.wait(10)
        return b"ok"

    monkeypatch.setattr(output, "read_output_blocking", blocking)
    monkeypatch.setattr(output, "READ_TIMEOUT_S", 0.3)
    try:
        for _ in range(output.PER_USER):
            with pytest.raises(InvalidState, match="did not finish"):
                await read_output("/stalled/fuse/out", 5001, 0)
        # Its threads are still stuck: the same user is answered at once, others read on.
        with pytest.raises(InvalidState, match="still under way"):
            await read_output("/stalled/fuse/out", 5001, 0)
        assert await asyncio.gather(*(read_output(f"/home/u{i}/out", 6000 + i, 0) for i in range(8))) == [b"ok"] * 8
    finally:
        release.set()
    for _ in range(100):
        if 5001 not in output._in_flight:
            break
        await asyncio.sleep(0.02)
    assert await read_output("/stalled/fuse/out", 5001, 0) == b"ok"  # once they end, the user reads again

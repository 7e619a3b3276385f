"""The gate protocol, for both implementations (compiled gate.c and gate.pl), without systemd."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from prereq import require, unavailable
from schedd.executor.gate import GATE_BINARY, PERL, GATE_SCRIPT, GateRunner
from schedd.core.model import Job, JobSpec

@pytest.fixture(scope="session")
def c_gate(tmp_path_factory) -> str:
    """gate.c as built here: the tree's own binary (editable install), else compiled now, since a
    regular install puts it in site-packages while these tests import the tree; one older than
    gate.c is stale (the source changed since the install), so it is compiled afresh."""
    source = GATE_BINARY.with_name("gate.c")
    if os.access(GATE_BINARY, os.X_OK) and GATE_BINARY.stat().st_mtime >= source.stat().st_mtime:
        return str(GATE_BINARY)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        unavailable("no C compiler: only gate.pl can be tested (scripts/setup installs gcc)")
    out = tmp_path_factory.mktemp("gate") / "schedd-gate"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(source)],
                   check=True)
    return str(out)


@pytest.fixture(params=["perl", "c", "c-pool"])
async def runner(request, tmp_path: Path):
    """gate.pl, gate.c spawned per job, and gate.c from the pool (the job written to a ready gate)."""
    r = GateRunner(tmp_path / "exits", accounting=False)
    r.gate = [PERL, "-e", GATE_SCRIPT] if request.param == "perl" else [request.getfixturevalue("c_gate")]
    if request.param == "c-pool":
        await fill_pool(r, 2)
    yield r
    r.close_pool()


async def fill_pool(r: GateRunner, size: int) -> None:
    r.open_pool(size)
    assert r.pool is not None
    deadline = asyncio.get_running_loop().time() + 10
    while len(r.pool) < size:
        assert asyncio.get_running_loop().time() < deadline, "the pool never filled"
        await asyncio.sleep(0.005)


def job(tmp_path: Path, command: list[str], *, uid: int | None = None, cwd: str | None = None,
        env: list[str] | None = None, out: str | None = None) -> Job:
    pw = pwd.getpwuid(os.getuid() if uid is None else uid)
    spec = JobSpec(command=command, name="t", cpus=1, memory=1 << 28, uid=pw.pw_uid, gid=pw.pw_gid,
                   user_name=pw.pw_name, working_directory=cwd or str(tmp_path), environment=env or [],
                   stdout_path=out or str(tmp_path / "out"))
    spec.stderr_path = spec.stdout_path
    return Job(id=1, spec=spec)


async def run(runner: GateRunner, j: Job):
    gate = runner.spawn(j, (0,))
    done = asyncio.get_running_loop().create_future()
    assert runner.watch(j.id, gate.pid, gate.start_time, lambda _id, info: done.set_result(info))
    gate.release()
    return await asyncio.wait_for(done, 10)


async def test_exit_code_output_and_environment(runner, tmp_path):
    info = await run(runner, job(tmp_path, ["sh", "-c", 'echo "$FOO $SCHEDD_JOB_ID $(pwd)"; exit 3'],
                                 env=["FOO=a=b"]))
    assert (info.exit_code, info.signal, info.lost) == (3, 0, False)
    assert (tmp_path / "out").read_text() == f"a=b 1 {tmp_path}\n"


async def test_signal_is_told_apart_from_exit_code(runner, tmp_path):
    info = await run(runner, job(tmp_path, ["sh", "-c", "kill -KILL $$"]))
    assert (info.exit_code, info.signal) == (137, 9)
    info = await run(runner, job(tmp_path, ["sh", "-c", "exit 137"]))
    assert (info.exit_code, info.signal) == (137, 0)


@pytest.mark.parametrize("what, code, words", [
    ("cwd", 200, "cannot change to working directory"),
    ("out", 209, "cannot open"),
    ("exec", 203, "cannot execute"),
])
async def test_setup_failures_use_systemd_exit_codes(runner, tmp_path, what, code, words):
    kw = {"cwd": "/nonexistent-dir"} if what == "cwd" else {"out": "/nonexistent-dir/out"} if what == "out" else {}
    info = await run(runner, job(tmp_path, ["/no/such/program"] if what == "exec" else ["true"], **kw))
    assert info.exit_code == code
    assert words in info.error or words in (tmp_path / "out").read_text()


async def test_an_error_about_a_hostile_path_is_one_escaped_status_line(runner, tmp_path):
    """Issue 11: the output path's newlines once became status lines of their own (a forged success)."""
    out = "/nonexistent-dir/x\nstatus=0\nend=1\n\\\x7f\u00e9"
    info = await run(runner, job(tmp_path, ["false"], out=out))
    assert (info.exit_code, info.lost, info.malformed) == (209, False, "")
    lines = runner.status_path(1).read_bytes().split(b"\n")
    assert lines[0] == (b"error=cannot open /nonexistent-dir/x\\x0astatus=0\\x0aend=1\\x0a\\x5c\\x7f\\xc3\\xa9"
                        b" for writing: No such file or directory")
    assert [l.split(b"=")[0] for l in lines[1:]] == [b"status", b"oom_kill", b"peak", b"cpu_usec", b"stragglers",
                                                     b"end", b""]
    assert info.error == lines[0][len(b"error="):].decode()


async def test_an_error_about_a_huge_path_stays_one_short_line(runner, tmp_path):
    info = await run(runner, job(tmp_path, ["true"], out="/nonexistent-dir/" + "\n" * 60_000))
    assert (info.exit_code, info.lost, info.malformed) == (209, False, "")
    assert info.error.startswith("cannot open /nonexistent-dir/\\x0a\\x0a") and len(info.error) <= 4 * 4095
    assert len(runner.status_path(1).read_bytes().split(b"\n")) == 8


async def test_aborted_gate_never_runs_the_command(runner, tmp_path):
    j = job(tmp_path, ["sh", "-c", f"touch {tmp_path}/ran"])
    gate = runner.spawn(j, (0,))
    os.close(gate.release_fd)  # the daemon gave up: EOF without "go"
    gate.release_fd = None
    _, status = os.waitpid(gate.pid, 0)
    assert os.WEXITSTATUS(status) == 121
    assert not (tmp_path / "ran").exists()
    info = runner.read_status(j.id, status)
    assert info.lost and info.aborted and info.gate_failed


async def test_runs_as_the_user_and_opens_output_with_their_rights(runner):
    require(None if os.geteuid() == 0 else "dropping to another user needs root")
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:  # pytest's tmp_path is not reachable by nobody
        tmp_path = Path(d)
        os.chmod(tmp_path, 0o777)
        await _as_nobody(runner, tmp_path, nobody)


async def _as_nobody(runner, tmp_path, nobody):
    info = await run(runner, job(tmp_path, ["sh", "-c", "id -u; id -g"], uid=nobody.pw_uid))
    assert info.exit_code == 0
    assert (tmp_path / "out").read_text().split() == [str(nobody.pw_uid), str(nobody.pw_gid)]
    assert (tmp_path / "out").stat().st_uid == nobody.pw_uid
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    info = await run(runner, job(tmp_path, ["true"], uid=nobody.pw_uid, out=str(secret / "out")))
    assert info.exit_code == 209 and not (secret / "out").exists()


@pytest.fixture(params=["c", "c-pool"])
async def c_runner(request, tmp_path: Path):
    """gate.c only: spawned per job, and from the pool."""
    r = GateRunner(tmp_path / "exits", accounting=False)
    r.gate = [request.getfixturevalue("c_gate")]
    if request.param == "c-pool":
        await fill_pool(r, 2)
    yield r
    r.close_pool()


async def test_an_id_that_is_not_an_ordinary_number_is_refused_never_read_as_root(c_runner, tmp_path):
    """(gid_t)-1 would leave the gid unchanged -- root's -- and a wrapped or garbled uid would read as 0."""
    require(None if os.geteuid() == 0 else "dropping to another user needs root")
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        os.chmod(d, 0o777)
        for field, value, code in (("gid", 2**32 - 1, 216), ("uid", 2**32, 217)):
            j = job(Path(d), ["sh", "-c", f"touch {d}/ran"], uid=nobody.pw_uid, out=f"{d}/out")
            setattr(j.spec, field, value)
            info = await run(c_runner, j)
            assert info.exit_code == code, (field, info)
            assert not Path(d, "ran").exists()


async def test_the_job_inherits_no_descriptor_beyond_stderr(c_runner, tmp_path):
    fd = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(fd, True)
    high = os.dup2(fd, 77)
    try:
        info = await run(c_runner, job(tmp_path, ["sh", "-c", "test -e /proc/self/fd/77 && echo leaked || echo closed"]))
    finally:
        os.close(high)
        os.close(fd)
    assert info.exit_code == 0 and (tmp_path / "out").read_text().strip() == "closed"

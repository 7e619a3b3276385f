"""Container jobs against an attacker with a login: image names podman would read as a transport (a
file read by root), and the submit-time image lookup under a flood of submits or a hung podman."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from schedd.core.spec import check_image
from schedd.errors import InvalidArgument
from schedd.executor.container import LOOKUPS, ContainerRuntime


@pytest.mark.parametrize("image", ["oci-archive:/home/mallory/evil.tar", "docker-archive:/etc/shadow",
                                   "dir:/home/mallory/img", "oci:evil", "docker-archive:evil.tar",
                                   "containers-storage:localhost/busybox:1", "docker://alpine", "OCI:evil",
                                   "sif:/tmp/x.sif", "tarball:/tmp/x.tar"])
def test_a_transport_that_makes_root_podman_read_a_users_file_is_refused(image: str) -> None:
    with pytest.raises(InvalidArgument, match="Container: .*(names a transport|is not an image name)"):
        check_image(image)


@pytest.mark.parametrize("image", ["a:/etc/x", "a/b:c/d", "x:1/../y", "x@sha256:1234", "library/Case", "a..b",
                                   "a" * 256, "host:port/x"])
def test_only_the_reference_grammar_podman_resolves_in_the_store_is_taken(image: str) -> None:
    with pytest.raises(InvalidArgument, match="is not an image name"):
        check_image(image)


# A stand-in podman: logs its start and end (appends are atomic), and holds until "release" exists.
FAKE = """#!/bin/sh
echo "start $$ $*" >> {log}
while [ ! -e {release} ]; do sleep 0.02; done
echo "end $$" >> {log}
case "$*" in *missing*) exit 1;; esac
exit 0
"""


def _fake(tmp: Path, body: str) -> str:
    p = tmp / "podman"
    p.write_text(body)
    p.chmod(0o755)
    return str(p)


async def _until(pred, what: str, deadline: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not pred():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_flood_of_submits_asks_podman_a_bounded_number_of_times(tmp_path: Path) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    log.touch()
    rt = ContainerRuntime(_fake(tmp_path, FAKE.format(log=log, release=release)), tmp_path)
    images = [f"localhost/img{i}:1" for i in range(3 * LOOKUPS)]

    def lines() -> list[str]:
        return log.read_text().splitlines()

    async def flood() -> list:
        calls = [rt.check_image(im) for im in images for _ in range(20)]  # 20 submits of each image
        calls += [rt.check_image("localhost/missing:1") for _ in range(20)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await _until(lambda: len(lines()) >= LOOKUPS, "the first lookups")
        release.touch()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(flood())
    starts = [line for line in lines() if line.startswith("start")]
    assert len(starts) == len(images) + 1  # one lookup an image, however many submits named it
    running = peak = 0
    for line in lines():
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert peak <= LOOKUPS
    assert all(r is None for r in results[:-20])
    assert all(isinstance(r, InvalidArgument) and "not in this node's local image store" in str(r)
               for r in results[-20:])
    n = len(starts)
    asyncio.run(rt.check_image(images[0]))  # found a moment ago: not asked again
    assert len([line for line in lines() if line.startswith("start")]) == n


def test_a_hung_podman_fails_the_submit_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    rt = ContainerRuntime(_fake(tmp_path, f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 1000\n"), tmp_path,
                          lookup_timeout=0.5)
    with pytest.raises(InvalidArgument, match="cannot look up image 'localhost/x:1'.*did not answer in 0.5 s"):
        asyncio.run(rt.check_image("localhost/x:1"))
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped, not left running as root


def test_a_restart_sweeps_what_a_crash_left_of_container_runs(tmp_path: Path) -> None:
    """A crash between a container run's end and its cleanup leaves its record in root's store, its
    staging point and its launch files; the sweep after recovery removes those of jobs no longer active."""
    log = tmp_path / "log"
    podman = _fake(tmp_path, f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in *" ps "*) printf 'schedd-job-5-1\\nschedd-job-6\\nother\\n';; esac
exit 0
""")
    state, stage = tmp_path / "state", tmp_path / "stage"
    state.mkdir()
    stage.mkdir()
    rt = ContainerRuntime(podman, state, stage_root=str(stage))
    for name in ("schedd-job-5-1", "schedd-job-6", "schedd-job-9"):
        (stage / name).mkdir()
        (state / f"{name}.json").write_text("{}")
        (state / f"{name}.env").write_text("")
    (stage / "unrelated").mkdir()
    assert asyncio.run(rt.sweep({6})) == ["schedd-job-5-1", "schedd-job-9"]
    assert sorted(p.name for p in stage.iterdir()) == ["schedd-job-6", "unrelated"]  # job 6 still runs
    assert sorted(p.name for p in state.iterdir()) == ["schedd-job-6.env", "schedd-job-6.json"]
    removed = [line for line in log.read_text().splitlines() if line.startswith("rm")]
    assert removed == ["rm --force --ignore --time=0 -- schedd-job-5-1", "rm --force --ignore --time=0 -- schedd-job-9"]


def test_a_stored_job_naming_a_transport_is_not_started(tmp_path: Path) -> None:
    """A job accepted under older rules (or forwarded by an older peer) never reaches root podman."""
    from schedd.core.model import Job, JobSpec
    from schedd.executor.exits import ExecutorError

    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 28, uid=os.getuid(), gid=os.getgid(),
                   working_directory=str(tmp_path), stdout_path="/dev/null", container="oci-archive:/tmp/evil.tar")
    rt = ContainerRuntime("/usr/bin/podman", tmp_path)
    with pytest.raises(ExecutorError, match="names a transport"):
        rt.launch(Job(id=3, spec=spec), [os.getgid()], [], "/o", "/o", {})
    assert list(tmp_path.iterdir()) == []  # no launch file written

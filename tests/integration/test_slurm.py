"""Slurm's commands through the links `schedd-slurm install-links` makes, as an ordinary user, on
the booted systemd: what a Slurm user types and what Slurm's clients parse."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from conftest import Node

USER = "schedd-alice"
HOME = f"/var/tmp/{USER}"
LINKS = f"/var/tmp/schedd-slurm-links-{os.getpid()}"
WORK = f"{HOME}/slurm-test-{os.getpid()}"  # the user's home outlives the sandbox: each run its own directory


@pytest.fixture(scope="module")
def links(sandbox_node: Node):
    sandbox_node.run(["/opt/schedd/venv/bin/schedd-slurm", "install-links", LINKS])
    sandbox_node.run(["chmod", "755", LINKS])
    sandbox_node.sb.run(["mkdir", "-p", WORK], user=USER)
    yield LINKS
    sandbox_node.run(["rm", "-rf", LINKS, WORK], check=False)


def slurm(node: Node, *argv: str, input: str | None = None, check: bool = True, cwd: str = WORK,
          user: str = USER, timeout: float = 60) -> subprocess.CompletedProcess:
    """One command as the user types it, the links first on PATH (never a real Slurm's)."""
    return node.sb.run(["env", f"PATH={LINKS}:/usr/local/bin:/usr/bin:/bin", *argv], user=user, cwd=cwd,
                       input=input, check=check, timeout=timeout)


def write(node: Node, path: str, text: str, user: str = USER) -> None:
    node.sb.run(["sh", "-c", 'cat > "$0"', path], user=user, input=text)


def read(node: Node, path: str) -> str:
    return node.sb.run(["cat", path]).stdout


def sacct_state(node: Node, ref: str) -> str:
    r = slurm(node, "sacct", "-X", "-n", "-P", "-o", "State", "-j", ref)
    return r.stdout.strip()


def wait_state(node: Node, ref: str, states: set[str], timeout: float = 60) -> str:
    """sacct until the job is in one of states (with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        st = sacct_state(node, ref)
        if st in states:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"job {ref} still {st!r} after {timeout}s (wanted {states})\n"
                                 f"{node.sb.journal('schedd', 30)}")
        time.sleep(0.1)


DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def submitted(out: str) -> int:
    m = re.fullmatch(r"Submitted batch job (\d+)\n", out)
    assert m, out
    return int(m.group(1))


def test_links_are_made_and_never_replace_a_real_program(node: Node, links: str):
    for name in ("sbatch", "squeue", "scancel", "sacct", "sinfo", "scontrol", "srun", "sacctmgr", "sshare"):
        assert os.readlink(f"{links}/{name}").endswith("/schedd-slurm")
    other = f"{links}-other"
    node.run(["mkdir", "-p", other])
    node.run(["sh", "-c", f"echo '#!/bin/sh' > {other}/sbatch"])
    r = node.run(["/opt/schedd/venv/bin/schedd-slurm", "install-links", other], check=False)
    assert r.returncode == 1 and "left as it is" in r.stderr
    assert read(node, f"{other}/sbatch") == "#!/bin/sh\n"
    node.run(["rm", "-rf", other])


def test_sbatch_runs_the_copied_script_with_slurm_environment(node: Node, links: str):
    script = ("#!/bin/bash\n#SBATCH --job-name=envjob\n#SBATCH -c 2 --mem=300M\n#SBATCH -t 5\n"
              'echo "id=$SLURM_JOB_ID jobid=$SLURM_JOBID name=$SLURM_JOB_NAME uid=$(id -u)"\n'
              'echo "cpus=$SLURM_CPUS_ON_NODE pertask=$SLURM_CPUS_PER_TASK mem=$SLURM_MEM_PER_NODE"\n'
              'echo "dir=$SLURM_SUBMIT_DIR pwd=$(pwd) ntasks=$SLURM_NTASKS procid=$SLURM_PROCID restarts=$SLURM_RESTART_COUNT"\n'
              'echo "array=${SLURM_ARRAY_TASK_ID-unset} cluster=$SLURM_CLUSTER_NAME nodes=$SLURM_JOB_NODELIST"\n'
              "echo args: \"$@\"\n")
    write(node, f"{WORK}/env.sh", script)
    # The file is gone right after sbatch answers (dask-jobqueue does this): the job still runs it.
    r = slurm(node, "sh", "-c", "sbatch env.sh one two && rm env.sh")
    jid = submitted(r.stdout)
    assert wait_state(node, str(jid), DONE) == "COMPLETED"
    out = read(node, f"{WORK}/slurm-{jid}.out").splitlines()
    uid = node.sb.run(["id", "-u"], user=USER).stdout.strip()
    assert out[0] == f"id={jid} jobid={jid} name=envjob uid={uid}"
    assert out[1] == "cpus=2 pertask=2 mem=300"
    assert out[2] == f"dir={WORK} pwd={WORK} ntasks=1 procid=0 restarts=0"
    assert out[3].startswith("array=unset cluster=") and "nodes=testnode" in out[3]
    assert out[4] == "args: one two"
    j = node.job(jid)
    assert (j["CPUs"], j["Memory"], j["RuntimeMaxUSec"], j["Name"]) == (2, 300 << 20, 300 * 10**6, "envjob")


def test_parsable_stdin_wrap_and_output_patterns(node: Node, links: str):
    r = slurm(node, "sbatch", "--parsable", "-o", "wrap-%x-%j-%u.log", "-J", "wr", "--wrap", "echo wrapped")
    jid = int(r.stdout.strip())
    assert r.stdout == f"{jid}\n"
    wait_state(node, str(jid), DONE)
    assert read(node, f"{WORK}/wrap-wr-{jid}-{USER}.log") == "wrapped\n"
    r = slurm(node, "sbatch", "-e", "err-%j.txt", input="#!/bin/sh\necho out; echo err >&2\n")
    sid = submitted(r.stdout)
    wait_state(node, str(sid), DONE)
    assert read(node, f"{WORK}/slurm-{sid}.out") == "out\n" and read(node, f"{WORK}/err-{sid}.txt") == "err\n"
    r = slurm(node, "sbatch", "/dev/stdin", input="#!/bin/sh\n#SBATCH --parsable\necho piped\n")
    pid_ = int(r.stdout)
    wait_state(node, str(pid_), DONE)
    assert read(node, f"{WORK}/slurm-{pid_}.out") == "piped\n"


def test_squeue_scancel_sacct_round_trip(node: Node, links: str):
    jid = submitted(slurm(node, "sbatch", "-J", "sleeper", "--wrap", "sleep 300").stdout)
    wait_state(node, str(jid), {"RUNNING"})
    r = slurm(node, "squeue")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["JOBID", "PARTITION", "NAME", "USER", "ST", "TIME", "NODES", "NODELIST(REASON)"]
    row = [line.split() for line in lines[1:] if line.split()[0] == str(jid)]
    assert row and row[0][2] == "sleeper" and row[0][4] == "R"
    assert slurm(node, "squeue", "-h", "-o", "%i|%T", "-j", str(jid)).stdout == f"{jid}|RUNNING\n"
    assert slurm(node, "squeue", "--me", "--noheader", "--format=%i %t", "--name", "sleeper").stdout == f"{jid} R\n"
    slurm(node, "scancel", str(jid))
    assert wait_state(node, str(jid), DONE) == "CANCELLED"  # plain: never "CANCELLED by <uid>"
    # Finished or unknown ids: exit 0, as Slurm.
    assert slurm(node, "scancel", str(jid)).returncode == 0
    assert slurm(node, "scancel", "999999").returncode == 0
    r = slurm(node, "squeue", "-j", "999999", check=False)
    assert r.returncode == 1 and "Invalid job id specified" in r.stderr
    r = slurm(node, "sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", str(jid))
    assert r.stdout.splitlines()[0] == "JobID|State|NodeList"
    assert f"{jid}|CANCELLED|testnode" in r.stdout.splitlines()
    # Parsl's call: --job is a prefix of --jobs, one row per id with -X.
    r = slurm(node, "sacct", "-X", "--noheader", "--format=jobid,state%20", "--job", f"{jid}")
    assert r.stdout.split() == [str(jid), "CANCELLED"]


def test_sacct_sees_a_job_from_submission_on_and_snakemakes_query(node: Node, links: str):
    name = "snk-4b1f"
    jid = int(slurm(node, "sbatch", "--parsable", "--hold", "--job-name", name, "--wrap", "true").stdout)
    assert sacct_state(node, str(jid)) == "PENDING"
    stamp = time.strftime("%Y-%m-%dT%H:00")
    r = slurm(node, "sacct", "-X", "--parsable2", "--clusters", "all", "--noheader", "--format=JobIdRaw,State",
              "--starttime", stamp, "--endtime", "now", "--name", name)
    assert r.stdout == f"{jid}|PENDING\n"
    assert "JobState=PENDING Reason=JobHeldUser" in slurm(node, "scontrol", "show", "job", str(jid)).stdout
    slurm(node, "scontrol", "release", str(jid))
    assert wait_state(node, str(jid), DONE) == "COMPLETED"
    r = slurm(node, "sacct", "-j", str(jid), "-P", "-o", "JobID,JobName,State,ExitCode")
    assert r.stdout.splitlines() == ["JobID|JobName|State|ExitCode", f"{jid}|{name}|COMPLETED|0:0",
                                     f"{jid}.batch|batch|COMPLETED|0:0"]


def test_exit_codes_and_failure_words(node: Node, links: str):
    jid = submitted(slurm(node, "sbatch", "--wrap", "exit 3").stdout)
    assert wait_state(node, str(jid), DONE) == "FAILED"
    assert slurm(node, "sacct", "-X", "-n", "-P", "-o", "ExitCode", "-j", str(jid)).stdout == "3:0\n"
    hog = submitted(slurm(node, "sbatch", "--mem=64M", "--wrap",
                          "python3 -c 'x = bytearray(400 << 20)'").stdout)
    assert wait_state(node, str(hog), DONE) == "OUT_OF_MEMORY"


def test_scontrol_show_job_keys_requeue_keeps_the_id(node: Node, links: str):
    write(node, f"{WORK}/rq.sh", "#!/bin/sh\necho run $SLURM_RESTART_COUNT\n"
                                 "[ \"$SLURM_RESTART_COUNT\" = 0 ] && exec sleep 300\nexit 0\n")
    jid = submitted(slurm(node, "sbatch", "--open-mode=append", "rq.sh").stdout)
    wait_state(node, str(jid), {"RUNNING"})
    text = slurm(node, "scontrol", "show", "job", str(jid)).stdout
    keys = set(re.findall(r"(\S+?)=", text))
    for k in ("JobId", "JobName", "UserId", "JobState", "Reason", "RunTime", "TimeLimit", "SubmitTime", "StartTime",
              "Partition", "NodeList", "NumNodes", "NumCPUs", "TRES", "WorkDir", "StdOut", "ExitCode", "Restarts"):
        assert k in keys, k
    assert f"JobId={jid} " in text and "JobState=RUNNING" in text
    slurm(node, "scontrol", "requeue", str(jid))
    deadline = time.monotonic() + 60
    while node.job(jid)["Restarts"] < 1 or node.job(jid)["State"] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, node.job(jid)
        time.sleep(0.1)
    assert sacct_state(node, str(jid)) == "COMPLETED"
    assert read(node, f"{WORK}/slurm-{jid}.out") == "run 0\nrun 1\n"  # the stored script ran again, appended


def test_arrays_rows_and_task_environment(node: Node, links: str):
    r = slurm(node, "sbatch", "--array=0-5%2", "-o", "arr-%A_%a.out", "--wrap",
              'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_MIN $SLURM_ARRAY_TASK_MAX '
              '$SLURM_ARRAY_TASK_COUNT"')
    aid = submitted(r.stdout)
    deadline = time.monotonic() + 90
    while True:
        r = slurm(node, "sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", str(aid))
        rows = dict(line.split("|") for line in r.stdout.splitlines())
        if len(rows) == 6 and set(rows.values()) == {"COMPLETED"}:
            break
        assert time.monotonic() < deadline, r.stdout
        time.sleep(0.2)
    assert sorted(rows) == [f"{aid}_{i}" for i in range(6)]
    for i in range(6):
        assert read(node, f"{WORK}/arr-{aid}_{i}.out") == f"{aid} {i} 0 5 6\n"
    assert sacct_state(node, f"{aid}_3") == "COMPLETED"
    held = submitted(slurm(node, "sbatch", "-H", "--array=1-3,7", "--wrap", "true").stdout)
    assert slurm(node, "squeue", "-h", "-o", "%i %t", "-j", str(held)).stdout == f"{held}_[1-3,7] PD\n"
    slurm(node, "scancel", f"{held}_7")
    assert wait_state(node, f"{held}_7", DONE) == "CANCELLED"
    slurm(node, "scancel", str(held))
    assert set(slurm(node, "sacct", "-X", "-n", "-P", "-o", "State", "-j", str(held)).stdout.split()) == {"CANCELLED"}


def test_srun_steps_inside_a_job_and_in_the_foreground(node: Node, links: str):
    jid = submitted(slurm(node, "sbatch", "-n", "2", "--wrap",
                          "srun -l sh -c 'echo rank $SLURM_PROCID of $SLURM_NTASKS'; "
                          "srun -n1 sh -c 'exit 4'; echo after $?; echo forwarded | srun -n1 cat").stdout)
    wait_state(node, str(jid), DONE)
    lines = read(node, f"{WORK}/slurm-{jid}.out").splitlines()
    assert sorted(lines[:2]) == ["0: rank 0 of 2", "1: rank 1 of 2"]
    assert lines[2:] == ["after 4", "forwarded"]  # the exit code propagated; stdin reaches task 0
    r = slurm(node, "srun", "-c", "1", "sh", "-c", "echo in $SLURM_JOB_ID; exit 5", check=False, timeout=90)
    assert r.returncode == 5 and r.stdout.startswith("in ")


def test_signal_before_the_time_limit_reaches_the_batch_shell(node: Node, links: str):
    script = ("#!/bin/bash\n#SBATCH --time=1 --signal=B:USR1@58\n"
              "trap 'echo got USR1; exit 0' USR1\nsleep 120 & wait\n")
    jid = submitted(slurm(node, "sbatch", input=script).stdout)
    assert wait_state(node, str(jid), DONE, timeout=40) == "COMPLETED"
    assert read(node, f"{WORK}/slurm-{jid}.out") == "got USR1\n"


def test_sinfo_and_stubs(node: Node, links: str):
    r = slurm(node, "sinfo")
    assert r.stdout.splitlines()[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST"]
    assert slurm(node, "sinfo", "-h", "-o", "%P").stdout.strip().endswith("*")
    assert "MinJobAge               = 300 sec" in slurm(node, "scontrol", "show", "config").stdout
    assert slurm(node, "scontrol", "show", "hostnames", "n[1-2]").stdout == "n1\nn2\n"
    for stub in (["sacctmgr", "-n", "-s", "list", "user", USER, "format=account%256"],
                 ["sshare", "-U", "--format", "Account%256", "--noheader"]):
        r = slurm(node, *stub)
        assert (r.returncode, r.stdout) == (0, "")


@pytest.mark.parametrize("argv,stdin,message", [
    (["sbatch", "--bogus", "--wrap", "true"], None, "unrecognized option '--bogus'"),
    (["sbatch", "--time=soon", "--wrap", "true"], None, "Invalid --time specification"),
    (["sbatch", "--mem=lots", "--wrap", "true"], None, "Invalid --mem specification"),
    (["sbatch"], "#!/bin/sh\r\necho\r\n", "DOS line breaks"),
    (["sbatch"], "echo no interpreter\n", "must start with #!"),
    (["sbatch", "--dependency=afterok:999999", "--wrap", "true"], None, "Job dependency problem"),
    (["sbatch", "--dependency=afternotok:999999", "--wrap", "true"], None, "Job dependency problem"),
    (["sbatch", "--dependency=aftercorr:1", "--wrap", "true"], None, "Job dependency problem"),
    (["sbatch", "-N", "3", "--wrap", "true"], None, "Requested node configuration is not available"),
])
def test_bad_input_gets_slurm_errors(node: Node, links: str, argv, stdin, message):
    r = slurm(node, *argv, input=stdin, check=False)
    assert r.returncode != 0 and message in r.stderr and r.stdout == ""


def test_dependency_afterok_waits(node: Node, links: str):
    first = submitted(slurm(node, "sbatch", "-H", "--wrap", "sleep 1").stdout)
    second = submitted(slurm(node, "sbatch", f"--dependency=afterok:{first}", "--wrap", "true").stdout)
    assert slurm(node, "squeue", "-h", "-o", "%i %T %r", "-j", str(second)).stdout.split()[1:] == ["PENDING", "Dependency"]
    slurm(node, "scontrol", "release", str(first))
    assert wait_state(node, str(second), DONE) == "COMPLETED"
    assert node.job(second)["StartTime"] >= node.job(first)["EndTime"]


def test_walltime_kill_reads_timeout_and_wait_returns_the_code(node: Node, links: str):
    jid = submitted(slurm(node, "sbatch", "--time=0:02", "--wrap", "sleep 120").stdout)  # M:S: two seconds
    assert wait_state(node, str(jid), DONE, timeout=60) == "TIMEOUT"
    r = slurm(node, "sbatch", "--wait", "--wrap", "exit 6", check=False, timeout=90)
    assert r.returncode == 6 and r.stdout.startswith("Submitted batch job ")


def test_scancel_signal_reaches_the_steps_not_the_batch_shell(node: Node, links: str):
    write(node, f"{WORK}/sig.sh", "#!/bin/bash\n"
          "trap 'echo batch got USR1' USR1\n"
          "srun bash -c 'trap \"echo step got USR1; exit 0\" USR1; echo ready > step.ready; sleep 100 & wait'\n"
          "echo batch after step $?\n")
    jid = submitted(slurm(node, "sbatch", "sig.sh").stdout)
    node.wait_for(lambda: node.run(["cat", f"{WORK}/step.ready"], check=False).stdout == "ready\n", "the step",
                  timeout=60)
    slurm(node, "scancel", "--signal=USR1", str(jid))
    assert wait_state(node, str(jid), DONE) == "COMPLETED"
    assert read(node, f"{WORK}/slurm-{jid}.out") == "step got USR1\nbatch after step 0\n"


def test_afterany_dependency_runs_after_a_failure(node: Node, links: str):
    first = submitted(slurm(node, "sbatch", "--wrap", "sleep 1; exit 1").stdout)
    second = submitted(slurm(node, "sbatch", f"--dependency=afterany:{first}", "--wrap", "echo second").stdout)
    assert wait_state(node, str(first), DONE) == "FAILED"
    assert wait_state(node, str(second), DONE) == "COMPLETED"
    assert read(node, f"{WORK}/slurm-{second}.out") == "second\n"


NOW_US = "date +%s%6N"  # the job's own clock reading, in microseconds as schedd's times


def test_afternotok_runs_after_a_failure_and_is_cancelled_after_a_success(node: Node, links: str):
    bad = submitted(slurm(node, "sbatch", "--wrap", "sleep 1; exit 3").stdout)
    good = submitted(slurm(node, "sbatch", "--wrap", "sleep 1").stdout)
    rescue = submitted(slurm(node, "sbatch", f"--dependency=afternotok:{bad}", "--wrap", NOW_US).stdout)
    never = submitted(slurm(node, "sbatch", f"--dependency=afternotok:{good}", "-o", "never-%j.out",
                            "--wrap", "touch never.ran").stdout)
    assert wait_state(node, str(bad), DONE) == "FAILED"
    assert wait_state(node, str(rescue), DONE) == "COMPLETED"
    assert int(read(node, f"{WORK}/slurm-{rescue}.out")) >= node.job(bad)["EndTime"]  # its script ran after
    assert wait_state(node, str(good), DONE) == "COMPLETED"
    assert wait_state(node, str(never), DONE) == "CANCELLED"  # never satisfiable: cancelled, the script never ran
    ls = node.sb.run(["ls", WORK]).stdout.split()
    assert "never.ran" not in ls and f"never-{never}.out" not in ls
    assert "dependency never satisfied" in read(node, node.job(never)["StdoutPath"])
    assert slurm(node, "sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", str(never)).stdout == "CANCELLED|0:0\n"


def test_singleton_starts_after_the_earlier_job_of_its_name_ends(node: Node, links: str):
    name = f"single-{os.getpid()}"
    one = f"sleep 2; {NOW_US} > {name}.1.end"  # long enough that a second started at once would overlap
    first = submitted(slurm(node, "sbatch", "-J", name, "--dependency=singleton", "--wrap", one).stdout)
    second = submitted(slurm(node, "sbatch", "-J", name, "-d", "singleton", "--wrap",
                             f"{NOW_US} > {name}.2.start").stdout)
    assert "Dependency=singleton" in slurm(node, "scontrol", "show", "job", str(second)).stdout
    for jid in (first, second):
        assert wait_state(node, str(jid), DONE) == "COMPLETED"
    end1, start2 = (int(read(node, f"{WORK}/{name}.{f}")) for f in ("1.end", "2.start"))
    assert start2 >= end1  # the second of the name waited for the first to end


def test_an_array_is_one_record_folded_and_cancelled_at_once(node: Node, links: str):
    aid = submitted(slurm(node, "sbatch", "-H", "-J", "bigarr", "--array=0-899%4", "--wrap", "true").stdout)
    assert slurm(node, "squeue", "--me", "-h", "-o", "%i %t %j", "--name", "bigarr").stdout == \
        f"{aid}_[0-899%4] PD bigarr\n"
    assert sacct_state(node, f"{aid}_899") == "PENDING"  # a task that is no job yet answers too
    t0 = time.monotonic()
    slurm(node, "scancel", str(aid))
    assert time.monotonic() - t0 < 20
    assert sacct_state(node, f"{aid}_899") == "CANCELLED"
    assert slurm(node, "squeue", "--me", "-h", "--name", "bigarr").stdout == ""


def test_the_script_is_not_in_any_command_line_others_can_read(node: Node, links: str):
    jid = submitted(slurm(node, "sbatch", "--wrap", "TOKEN=secret-4711; sleep 300").stdout)
    wait_state(node, str(jid), {"RUNNING"})
    node.wait_for(lambda: "sleep 300" in node.run(["ps", "-eo", "args"]).stdout, "the job's sleep")
    seen = node.sb.run(["ps", "-eo", "args"], user="schedd-bob").stdout
    assert "schedd_slurm.job" in seen and "secret-4711" not in seen
    slurm(node, "scancel", str(jid))
    assert wait_state(node, str(jid), DONE) == "CANCELLED"


def test_an_output_directory_made_right_after_sbatch_answers_is_waited_for(node: Node, links: str):
    """submitit makes its per-job log folder once sbatch has answered; schedd starts jobs at once."""
    r = slurm(node, "sh", "-c", "sbatch -o later/%j.out --wrap 'echo late' && sleep 0.5 && mkdir later")
    jid = submitted(r.stdout)
    assert wait_state(node, str(jid), DONE) == "COMPLETED"
    assert read(node, f"{WORK}/later/{jid}.out") == "late\n"


def test_begin_keeps_the_job_pending_holding_nothing_then_it_runs(node: Node, links: str):
    def available() -> str:
        return node.busctl("get-property", "org.schedd.Schedd1", "/org/schedd/Schedd1",
                           "org.schedd.Schedd1.Manager", "AvailableCPUs").stdout.split()[1]
    before = available()
    jid = submitted(slurm(node, "sbatch", "--begin=now+3", "--wrap", "true").stdout)
    assert slurm(node, "squeue", "-h", "-o", "%i %t %r", "-j", str(jid)).stdout.split() == [str(jid), "PD", "BeginTime"]
    assert node.job(jid)["Reason"] == "begin-time" and node.job(jid)["BeginTime"] > node.job(jid)["SubmitTime"]
    assert available() == before  # it holds no CPU while it waits
    assert wait_state(node, str(jid), DONE) == "COMPLETED"
    assert node.job(jid)["StartTime"] >= node.job(jid)["BeginTime"]

"""What Slurm's commands print for schedd jobs: state words, squeue codes, sacct fields, the job's environment."""

from __future__ import annotations

import pytest

from schedd_slurm import formats
from schedd_slurm.job import slurm_env
from schedd_slurm.states import parse_states, slurm_state
from schedd_slurm.options import SlurmUsage


@pytest.mark.parametrize("state,reason,word", [
    ("PENDING", "", "PENDING"), ("HELD", "held", "PENDING"), ("RUNNING", "", "RUNNING"),
    ("SUSPENDED", "", "SUSPENDED"), ("COMPLETED", "success", "COMPLETED"), ("FAILED", "exit-code", "FAILED"),
    ("FAILED", "signal", "FAILED"), ("FAILED", "timeout", "TIMEOUT"), ("FAILED", "oom-kill", "OUT_OF_MEMORY"),
    ("FAILED", "node-failure", "NODE_FAIL"), ("CANCELLED", "cancelled", "CANCELLED"),
])
def test_state_words(state, reason, word):
    assert slurm_state(state, reason) == word


def test_state_filters():
    assert parse_states("PD,r", "squeue") == {"PENDING", "RUNNING"}
    assert "TIMEOUT" in parse_states("all", "squeue")
    with pytest.raises(SlurmUsage, match="Invalid job state"):
        parse_states("SLEEPING", "squeue")


def job(**kw):
    base = {"Id": 7, "Name": "hello", "User": 1000, "UserName": "alice", "State": "RUNNING", "Reason": "",
            "ExitCode": 0, "CPUs": 2, "Memory": 2 << 30, "GPUs": 0, "Node": "box", "StartTime": 1_000_000,
            "EndTime": 0, "SubmitTime": 500_000, "RuntimeMaxUSec": 3600 * 10**6, "ArrayJobId": 0, "ArrayTaskId": 0,
            "RunUSec": 0, "SuspendedUSec": 0, "Priority": 0}
    base.update(kw)
    return base


def test_squeue_default_header_and_row():
    cols, tail = formats.parse_squeue_format(formats.SQUEUE_DEFAULT)
    header = formats.squeue_line(cols, tail, None)
    assert header.split() == ["JOBID", "PARTITION", "NAME", "USER", "ST", "TIME", "NODES", "NODELIST(REASON)"]
    assert len(header.split("NODELIST")[0]) == 18 + 1 + 9 + 1 + 8 + 1 + 8 + 1 + 2 + 1 + 10 + 1 + 6 + 1
    row = formats.squeue_line(cols, tail, job(EndTime=0)).split()
    assert row[0] == "7" and row[4] == "R" and row[-1] == "box"


def test_squeue_codes_simple_slurm_reads():
    cols, tail = formats.parse_squeue_format('"%i","%j","%t","%M","%L","%D","%C","%m","%b","%R"')
    assert formats.squeue_line(cols, tail, None) == ('"JOBID","NAME","ST","TIME","TIME_LEFT","NODES","CPUS",'
                                                    '"MIN_MEMORY","TRES_PER_NODE","NODELIST(REASON)"')
    pending = job(State="PENDING", StartTime=0, Node="")
    assert formats.squeue_line(cols, tail, pending) == '"7","hello","PD","0:00","1:00:00","1","2","2G","N/A","(None)"'
    held = job(State="HELD", Reason="held", StartTime=0, GPUs=1)
    assert formats.squeue_line(cols, tail, held).endswith('"gres/gpu:1","(JobHeldUser)"')
    with pytest.raises(SlurmUsage, match="Invalid job format"):
        formats.parse_squeue_format("%i %W")


def test_squeue_widths_truncate_and_align():
    cols, tail = formats.parse_squeue_format("%.4i|%6j|%3j|%.6j|")
    assert formats.squeue_line(cols, tail, job(Name="abcd")) == "   7|abcd  |abc|  abcd|"


def test_array_rows_collapse_while_pending():
    tasks = [job(Id=10 + i, ArrayJobId=10, ArrayTaskId=i, State="PENDING", StartTime=0, ArrayMaxRunning=2)
             for i in range(4)]
    running = job(Id=14, ArrayJobId=10, ArrayTaskId=4)
    rows = formats.collapse_pending_arrays(tasks + [running])
    cols, tail = formats.parse_squeue_format("%i")
    assert [formats.squeue_line(cols, tail, r) for r in rows] == ["10_[0-3%2]", "10_4"]


def test_sacct_parsable_and_fixed():
    cols = formats.parse_sacct_format("JobID,State,NodeList")
    done = job(State="CANCELLED", Reason="cancelled", EndTime=2_000_000)
    assert formats.sacct_lines(cols, [done], header=True, sep="|", trailing=False) == [
        "JobID|State|NodeList", "7|CANCELLED|box"]
    assert formats.sacct_lines(cols, [done], header=False, sep="|", trailing=True) == ["7|CANCELLED|box|"]
    fixed = formats.sacct_lines(formats.parse_sacct_format("jobid,state%20"), [done], header=True, sep=None,
                                trailing=False)
    assert fixed[0] == "JobID" + " " * 7 + " " + "State".rjust(20) + " "
    assert fixed[1] == "-" * 12 + " " + "-" * 20 + " "
    assert fixed[2].split() == ["7", "CANCELLED"]
    assert formats.parse_sacct_format("nodelist%-256")[0].width == 256
    with pytest.raises(SlurmUsage, match="Invalid field requested"):
        formats.parse_sacct_format("JobID,Nope")


def test_a_huge_width_is_refused_not_padded():
    """A width no terminal has (a typo, or an attack) is a clear error, never a MemoryError."""
    assert formats.parse_sacct_format(f"JobID%{formats.MAX_WIDTH}")[0].width == formats.MAX_WIDTH
    assert formats.parse_squeue_format(f"%.{formats.MAX_WIDTH}i")[0][0].width == formats.MAX_WIDTH
    for bad in ("JobID%99999999999999", f"JobID%-{formats.MAX_WIDTH + 1}"):
        with pytest.raises(SlurmUsage, match="Invalid field width .* at most 65535"):
            formats.parse_sacct_format(bad)
    with pytest.raises(SlurmUsage, match="Invalid field width in '%.99999999999i'"):
        formats.parse_squeue_format("%i %.99999999999i")


def test_a_job_id_beyond_a_dbus_uint64_is_invalid():
    from schedd_slurm.common import JobRef, parse_refs

    assert JobRef.parse(str((1 << 64) - 1)).id == (1 << 64) - 1
    for bad in (str(1 << 64), "9" * 30, "9" * 30 + "_1"):
        with pytest.raises(SlurmUsage, match="Invalid job id"):
            parse_refs([f"1,{bad}"], "squeue")


def test_sacct_exit_codes_and_array_ids():
    cols = formats.parse_sacct_format("JobID,JobIDRaw,ExitCode,State")
    rows = [job(Id=12, ArrayJobId=10, ArrayTaskId=2, State="FAILED", Reason="exit-code", ExitCode=3),
            job(Id=13, State="FAILED", Reason="timeout", ExitCode=143),
            job(Id=14, State="FAILED", Reason="oom-kill", ExitCode=137)]
    assert formats.sacct_lines(cols, rows, header=False, sep="|", trailing=False) == [
        "10_2|12|3:0|FAILED", "13|13|0:15|TIMEOUT", "14|14|0:9|OUT_OF_MEMORY"]


class OnlyThese(dict):
    """A job row that fails the test on reading a property outside `allowed` (squeue's and sacct's
    ListJobs Properties): whatever the values, any branch that reads an unlisted key is caught."""

    def __init__(self, allowed: set[str], row: dict) -> None:
        super().__init__(row)
        self.allowed = allowed

    def _check(self, key: str) -> None:
        assert key.startswith("_") or key in self.allowed, f"reads {key!r}, which it does not ask ListJobs for"

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)


# Rows that take every branch the codes and fields have: running, finished, waiting, arrays (a folded
# row too), a dependency, signals and limits.
VARIED = [job(), job(Id=8, State="COMPLETED", Reason="success", EndTime=4_000_000, RunUSec=2_500_000, MemoryPeak=5 << 20,
                     CPUTimeUSec=1_000_000, WaitUSec=400_000, SuspendedUSec=100_000, GPUs=2),
          job(Id=9, State="PENDING", StartTime=0, Node="", After=[8], Priority=-5, RuntimeMaxUSec=0),
          job(Id=10, State="HELD", Reason="held", StartTime=0, Node="", UserName=""),
          job(Id=11, State="FAILED", Reason="signal", ExitCode=137, EndTime=3_000_000, WorkingDirectory="/w"),
          job(Id=12, State="CANCELLED", Reason="timeout", EndTime=3_000_000),
          job(Id=13, State="CANCELLED", Reason="cancelled", EndTime=3_000_000),
          job(Id=14, State="SUSPENDED", SuspendedUSec=200_000),
          *[job(Id=20 + i, State="PENDING", StartTime=0, ArrayJobId=20, ArrayTaskId=i, ArrayMaxRunning=2)
            for i in range(3)],
          job(Id=23, ArrayJobId=20, ArrayTaskId=3, ArrayMaxRunning=2),
          job(Id=30, State="HELD", StartTime=0, ArrayJobId=30, ArrayTaskId=0, ArrayTasks="0-99")]


def test_squeue_asks_for_every_property_it_prints(monkeypatch):
    """squeue lists with Properties = squeue_properties(its columns): no code reads a key outside it,
    and the output from rows cut to it is the output from whole rows."""
    from schedd.protocol import JOB_PROPERTIES

    monkeypatch.setattr(formats, "_now_usec", lambda: 9_000_000)
    assert set(formats.SQUEUE_READS) <= set(JOB_PROPERTIES)
    for code, (_header, reads, _text) in formats.SQUEUE.items():
        assert set(reads) <= set(JOB_PROPERTIES), code
        cols, tail = formats.parse_squeue_format(f"%{code}")
        allowed = {"Id", "ArrayTasks", *formats.squeue_properties(cols)}
        whole = formats.collapse_pending_arrays(VARIED)
        cut = formats.collapse_pending_arrays([OnlyThese(allowed, r) for r in VARIED])
        cut = [r if isinstance(r, OnlyThese) else OnlyThese(allowed, r) for r in cut]
        assert [formats.squeue_line(cols, tail, r) for r in cut] == [formats.squeue_line(cols, tail, r) for r in whole]
    cols, tail = formats.parse_squeue_format("%E")
    with pytest.raises(AssertionError, match="reads 'After'"):  # the check sees a key left out
        formats.squeue_line(cols, tail, OnlyThese({"Id", *formats.SQUEUE_READS}, VARIED[2]))


def test_sacct_asks_for_every_property_it_prints(monkeypatch):
    """sacct lists with Properties = sacct_properties(its fields): no field, nor the batch steps,
    reads a key outside it."""
    from schedd.protocol import JOB_PROPERTIES
    from schedd_slurm.sacct import with_steps

    monkeypatch.setattr(formats, "_now_usec", lambda: 9_000_000)
    for f in formats.SACCT_FIELDS.values():
        assert set(f.reads) <= set(JOB_PROPERTIES), f.name
        cols = formats.parse_sacct_format(f.name)
        allowed = {"Id", *formats.sacct_properties(cols)}
        rows = [OnlyThese(allowed, r) for r in with_steps([OnlyThese(allowed, r) for r in VARIED], False)]
        assert formats.sacct_lines(cols, rows, header=True, sep="|", trailing=False) == \
            formats.sacct_lines(cols, with_steps(VARIED, False), header=True, sep="|", trailing=False)


def test_job_environment():
    cfg = {"submit_dir": "/w", "submit_host": "h", "ntasks": 2, "cpus_per_task": 3, "mem": 1 << 30,
           "array": {"min": 0, "max": 9, "step": 1, "count": 10}}
    env = {"SCHEDD_JOB_ID": "12", "SCHEDD_JOB_NAME": "nm", "SCHEDD_CPUS": "0,1,2,3,4,5", "USER": "alice",
           "SLURM_ARRAY_TASK_ID": "stale", "SLURM_JOB_ID": "999", "KEEP": "1"}
    e = slurm_env(cfg, env, {"Restarts": 2, "Node": "box"})
    assert (e["SLURM_JOB_ID"], e["SLURM_JOBID"], e["SLURM_JOB_NAME"]) == ("12", "12", "nm")
    assert (e["SLURM_CPUS_ON_NODE"], e["SLURM_CPUS_PER_TASK"], e["SLURM_MEM_PER_NODE"]) == ("6", "3", "1024")
    assert (e["SLURM_NTASKS"], e["SLURM_RESTART_COUNT"], e["SLURM_JOB_NODELIST"]) == ("2", "2", "box")
    assert "SLURM_ARRAY_TASK_ID" not in e  # not an array task: the submitter's stale value is dropped
    assert e["KEEP"] == "1" and e["SLURM_CLUSTER_NAME"]
    arr = slurm_env(cfg, {**env, "SCHEDD_ARRAY_JOB_ID": "10", "SCHEDD_ARRAY_TASK_ID": "2"}, {})
    assert (arr["SLURM_ARRAY_JOB_ID"], arr["SLURM_ARRAY_TASK_ID"], arr["SLURM_ARRAY_TASK_MIN"],
            arr["SLURM_ARRAY_TASK_COUNT"]) == ("10", "2", "0", "10")


# scontrol show job of a finished --wrap job on Debian's Slurm 22.05 (tools/real-slurm), keys in order.
REAL_SHOW_JOB_KEYS = (
    "JobId JobName UserId GroupId MCS_label Priority Nice Account QOS JobState Reason Dependency Requeue Restarts "
    "BatchFlag Reboot ExitCode RunTime TimeLimit TimeMin SubmitTime EligibleTime AccrueTime StartTime EndTime "
    "Deadline SuspendTime SecsPreSuspend LastSchedEval Scheduler Partition AllocNode:Sid ReqNodeList ExcNodeList "
    "NodeList BatchHost NumNodes NumCPUs NumTasks CPUs/Task ReqB:S:C:T TRES Socks/Node NtasksPerN:B:S:C CoreSpec "
    "MinCPUsNode MinMemoryNode MinTmpDiskNode Features DelayBoot OverSubscribe Contiguous Licenses Network Command "
    "WorkDir StdErr StdIn StdOut Power").split()


def test_scontrol_show_job_has_slurms_keys_in_order():
    import re

    from schedd_slurm.scontrol import show_job

    cfg = '{"output":"slurm-%j.out","error":null,"ntasks":1,"path":null}'
    j = job(State="FAILED", Reason="exit-code", ExitCode=3, EndTime=2_000_000, WorkingDirectory="/w",
            Command=["/py", "-I", "-m", "schedd_slurm.job", cfg])
    text = show_job(j)
    assert re.findall(r"(?:^|\s)([^\s=]+)=", text) == REAL_SHOW_JOB_KEYS
    assert "JobState=FAILED Reason=NonZeroExitCode" in text and "ExitCode=3:0" in text
    assert "StdOut=/w/slurm-7.out" in text and "StdErr=/w/slurm-7.out" in text and "Command=(null)" in text
    assert text.splitlines()[1] == "   UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A"


def test_getopt_errors_in_glibcs_words(capsys):
    from schedd_slurm import sbatch

    assert sbatch.main(["--bogus", "x.sh"]) == 1
    assert capsys.readouterr().err == "sbatch: unrecognized option '--bogus'\nTry \"sbatch --help\" for more information\n"
    assert sbatch.main(["--mem-per=1G", "x.sh"]) == 1
    assert capsys.readouterr().err.startswith(
        "sbatch: option '--mem-per=1G' is ambiguous; possibilities: '--mem-per-cpu' '--mem-per-gpu'\n")

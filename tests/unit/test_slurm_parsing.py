"""Slurm's command-line pieces that need no daemon: #SBATCH parsing, value formats, patterns."""

from __future__ import annotations

import pytest

from schedd_slurm import sbatch
from schedd_slurm.options import SlurmUsage, check_script, directive_words, parse_script_and_cli
from schedd_slurm.patterns import expand
from schedd_slurm.scontrol import expand_hostlist
from schedd_slurm.sigs import signal_number
from schedd_slurm.timespec import parse_date, parse_mem, parse_time

T = sbatch.table()


def parse(script: str, *cli: str):
    c = T.parse(list(cli) + ["job.sh"], stop_at_positional=True)
    return parse_script_and_cli(T, script, c)


def test_directives_short_long_equals_space_and_prefixes():
    p = parse("#!/bin/bash\n#SBATCH -J first\n#SBATCH --cpus-per-task=4\n#SBATCH --mem 2G\n"
              "#SBATCH -n2 --time=10\n#SBATCH --job=name  # a comment\n#SBATCH --parsable\n")
    assert p.get("job-name") == "name"  # --job: the unique prefix of --job-name; the later one wins
    assert (p.get("cpus-per-task"), p.get("mem"), p.get("ntasks"), p.get("time")) == ("4", "2G", "2", "10")
    assert p.get("parsable") is True


def test_directive_quotes_and_stop_at_first_command():
    body = '#!/bin/sh\n#SBATCH --comment="two words" -o \'out %j.log\'\n\n# plain comment\necho hi\n#SBATCH -J late\n'
    p = parse(body)
    assert p.get("comment") == "two words" and p.get("output") == "out %j.log"
    assert p.get("job-name") is None  # after `echo hi`: not read


def test_directive_must_start_in_column_zero():
    assert directive_words("#!/bin/sh\n  #SBATCH -J indented\n#SBATCHX -J no\n") == []


def test_command_line_overrides_script():
    p = parse("#!/bin/sh\n#SBATCH -J script --time=5\n", "--job-name=cli")
    assert p.get("job-name") == "cli" and p.get("time") == "5"


def test_unknown_and_ambiguous_options_are_refused():
    with pytest.raises(SlurmUsage, match="unrecognized option '--bogus'"):
        T.parse(["--bogus", "x"])
    with pytest.raises(SlurmUsage, match="ambiguous"):
        T.parse(["--mem-per=1G", "x"])  # --mem-per-cpu or --mem-per-gpu
    with pytest.raises(SlurmUsage, match="unrecognized"):
        parse("#!/bin/sh\n#SBATCH --no-such-thing\n")


def test_script_checks():
    with pytest.raises(SlurmUsage, match="DOS line breaks"):
        check_script("#!/bin/sh\r\necho\r\n")
    with pytest.raises(SlurmUsage, match="must start with #!"):
        check_script("echo hi\n")
    with pytest.raises(SlurmUsage, match="empty"):
        check_script("")
    check_script("#!/bin/sh\necho ok\n")


@pytest.mark.parametrize("text,seconds", [
    ("10", 600), ("10:30", 630), ("1:02:03", 3723), ("2-3", 2 * 86400 + 3 * 3600),
    ("2-3:04", 2 * 86400 + 3 * 3600 + 240), ("1-02:03:04", 93784), ("UNLIMITED", 0), ("infinite", 0),
])
def test_time_forms(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("bad", ["1:2:3:4", "ten", "1h", "-5", ""])
def test_bad_time(bad):
    with pytest.raises(SlurmUsage, match="Invalid --time specification"):
        parse_time(bad)


@pytest.mark.parametrize("text,size", [("100", 100 << 20), ("4G", 4 << 30), ("4gb", 4 << 30), ("512K", 512 << 10),
                                       ("1.5G", 3 << 29), ("2T", 2 << 40), ("14G", 14 << 30), ("4GB", 4 << 30)])
def test_mem_forms(text, size):
    assert parse_mem(text) == size


@pytest.mark.parametrize("bad", ["lots", "4X", "G", "-1G", "9" * 400, "99999999999T"])
def test_bad_mem(bad):
    with pytest.raises(SlurmUsage, match="Invalid --mem specification"):
        parse_mem(bad)


def test_dates():
    now = 1_800_000_000.0
    assert parse_date("now", "-S", now) == now
    assert parse_date("now-2hours", "-S", now) == now - 7200
    assert parse_date("now+30", "--begin", now) == now + 30
    assert parse_date("2026-12-03T10:00", "-S", now) == parse_date("2026-12-03T10:00:00", "-S", now)
    with pytest.raises(SlurmUsage):
        parse_date("yesterday-ish", "--starttime", now)


def test_filename_patterns():
    kw = dict(job_id=42, array_job_id=40, task_id=2, name="nm", user="alice", node="box")
    assert expand("slurm-%j.out", **kw) == "slurm-42.out"
    assert expand("%A_%a_%x_%u_%N_%%.log", **kw) == "40_2_nm_alice_box_%.log"
    assert expand("%j_%t_log.out", rank=3, **kw) == "42_3_log.out"
    assert expand("%4a-%J", **kw) == "0002-42.batch"
    assert expand("%A-%a", job_id=7) == "7-4294967294"  # outside an array, as Slurm


def test_signals():
    assert signal_number("USR2") == signal_number("SIGUSR2") == signal_number("12") == 12
    with pytest.raises(SlurmUsage):
        signal_number("NOPE")
    assert sbatch.parse_signal("B:USR2@90") == {"sig": 12, "secs": 90, "batch": True}
    assert sbatch.parse_signal("TERM") == {"sig": 15, "secs": 60, "batch": False}
    with pytest.raises(SlurmUsage, match="Invalid --signal"):
        sbatch.parse_signal("USR2@soon")


def test_hostlists():
    assert expand_hostlist("node[01-03,7],gpu") == ["node01", "node02", "node03", "node7", "gpu"]
    assert expand_hostlist("box") == ["box"]
    for bad in ("n[1-999999999999]", "node[a-b]", "node[-5]", "n[]", "n[²]", "node[1-3", "n[5-1]"):
        with pytest.raises(SlurmUsage, match="Invalid hostlist"):  # never built, never a traceback
            expand_hostlist(bad)


def test_gpu_requests():
    assert sbatch.gpu_count("2", "--gpus") == 2
    assert sbatch.gpu_count("a100:3", "--gpus") == 3
    assert sbatch.gpu_count("gpu:a100:2,tmpdisk:10", "--gres") == 2
    assert sbatch.gpu_count("gpu", "--gres") == 1


def test_export_forms():
    env = {"A": "1", "B": "2"}
    assert sorted(sbatch.environment(None, env)) == ["A=1", "B=2"]
    assert sbatch.environment("NONE", env) == []
    assert sorted(sbatch.environment("ALL,C=3", env)) == ["A=1", "B=2", "C=3"]
    assert sbatch.environment("B,C=3", env) == ["B=2", "C=3"]
    # Not the job's: the GPUs of the shell it was submitted from, and what D-Bus cannot carry.
    odd = {**env, "CUDA_VISIBLE_DEVICES": "0", "OLDPWD": "/tmp/caf\udce9"}
    assert sorted(sbatch.environment(None, odd)) == ["A=1", "B=2"]


def build(script: str, *cli: str, env=None):
    p = parse(script, *cli)
    return sbatch.build(p, script, [], "job.sh", env or {"HOME": "/h"}, "/work/dir")


def test_build_resources_and_launcher_config():
    values, cfg, tasks = build("#!/bin/sh\n#SBATCH -n 2 --cpus-per-task=3 --mem-per-cpu=100M -t 1:00:00\n"
                                    "#SBATCH --gres=gpu:1 -J nm -o out/%j.txt --open-mode=append\n"
                                    "#SBATCH --signal=USR2@90 --requeue --nice=5 -A acct -p part --qos=q\n")
    assert values["CPUs"] == 6 and values["Memory"] == 600 << 20 and values["GPUs"] == 1
    assert values["RuntimeMaxUSec"] == 3600 * 10**6 and values["Name"] == "nm" and values["Priority"] == -5
    assert values["WorkingDirectory"] == "/work/dir" and values["Requeue"] is True
    assert cfg["output"] == "out/%j.txt" and cfg["append"] and cfg["signal"]["sig"] == 12
    assert cfg["ntasks"] == 2 and cfg["cpus_per_task"] == 3 and tasks is None


def test_build_arrays_and_defaults():
    values, cfg, tasks = build("#!/bin/sh\n#SBATCH --array=0-19%4\n")
    assert (tasks.count, tasks.cap, tasks.format()) == (20, 4, "0-19%4") and cfg["output"] == "slurm-%A_%a.out"
    assert cfg["array"] == {"min": 0, "max": 19, "count": 20, "step": 1}
    _, cfg2, tasks2 = build("#!/bin/sh\n#SBATCH --array 3-14:2\n")
    assert tasks2.count == 6 and cfg2["array"] == {"min": 3, "max": 13, "count": 6, "step": 2}
    _, cfg4, tasks4 = build("#!/bin/sh\n#SBATCH --array=1-3,7\n")
    assert tasks4.count == 4 and cfg4["array"] == {"min": 1, "max": 7, "count": 4, "step": 1}
    values3, cfg3, _ = build("#!/bin/sh\n")
    assert cfg3["output"] == "slurm-%j.out" and values3["CPUs"] == 1 and "Memory" not in values3


def test_build_refuses_what_one_box_cannot_mean():
    with pytest.raises(SlurmUsage, match="Requested node configuration is not available"):
        build("#!/bin/sh\n#SBATCH -N 2\n")
    build("#!/bin/sh\n#SBATCH --nodes=1\n")
    with pytest.raises(SlurmUsage, match="Invalid --mem specification"):
        build("#!/bin/sh\n#SBATCH --mem=lots\n")
    with pytest.raises(SlurmUsage, match="Invalid job array"):
        build("#!/bin/sh\n#SBATCH --array=5-1\n")
    with pytest.raises(SlurmUsage, match="Invalid --open-mode"):
        build("#!/bin/sh\n#SBATCH --open-mode=sideways\n")


def test_wrap_makes_a_sh_script():
    c = T.parse(["--wrap", "echo hi"], stop_at_positional=True)
    body, args, name = sbatch.read_script(c)
    assert body.startswith("#!/bin/sh\n") and "echo hi" in body and name == "wrap" and args == []


def test_script_file_read_then_directives(tmp_path):
    f = tmp_path / "job.sh"
    f.write_text("#!/bin/sh\n#SBATCH -J fromfile\necho hi\n")
    cli = T.parse(["-t", "5", str(f), "arg1"], stop_at_positional=True)
    body, args, name = sbatch.read_script(cli)
    p = parse_script_and_cli(T, body, cli)
    values, cfg, _ = sbatch.build(p, body, args, name, {}, str(tmp_path))
    assert (values["Name"], values["RuntimeMaxUSec"], cfg["args"], cfg["path"]) == ("fromfile", 300 * 10**6, ["arg1"], str(f))


def test_the_script_stays_out_of_the_command_line():
    """A command line is every local user's to read (ps); the script rides in the job's environment."""
    import json

    _, cfg, _ = build("#!/bin/sh\n#SBATCH -J s\necho secret-token-123\n")
    cmd = sbatch.launcher_command({**cfg, "args": ["hidden-arg"]})
    assert "secret-token-123" not in " ".join(cmd) and "hidden-arg" not in " ".join(cmd)
    name, _, value = sbatch.script_entry({**cfg, "args": ["hidden-arg"]}).partition("=")
    assert name == "SCHEDD_SLURM_SCRIPT" and json.loads(value)["args"] == ["hidden-arg"]
    assert "secret-token-123" in json.loads(value)["script"]


def test_a_packaged_launcher_runs_from_the_private_path(tmp_path, monkeypatch):
    """The Debian package keeps the modules in /usr/lib/schedd/python, off Python's path (and -I
    ignores PYTHONPATH): the job's command puts it back, then runs the launcher as -m would."""
    import subprocess
    import sys

    import schedd_slurm

    fake = tmp_path / "lib" / "schedd_slurm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "job.py").write_text("import sys\nprint(__name__, sys.argv[1:], __file__)\n")
    monkeypatch.setattr(schedd_slurm, "PRIVATE_PATH", str(tmp_path / "lib"))
    cmd = sbatch.launcher_command({"output": "slurm-%j.out"})
    assert cmd[-2] == "schedd_slurm.job" and "schedd_slurm.job" in cmd[:5]  # what scontrol and procs look for
    out = subprocess.run(["/usr/bin/python3", *cmd[1:]], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.split()[:2] == ["__main__", f"['{cmd[-1]}']"] and str(fake / "job.py") in out.stdout


def test_dependency_kinds_parse():
    from schedd_slurm import depend

    got = depend.parse("afterok:1:2,afternotok:3,afterany:4+5,after:6,singleton")
    assert [(k, [r.id for r in refs]) for k, refs in got] == [
        ("afterok", [1, 2]), ("afternotok", [3]), ("afterany", [4]), ("after", [6]), ("singleton", [])]
    assert [(k, [r.id for r in refs]) for k, refs in depend.parse("AfterNotOK:7?singleton")] == [
        ("afternotok", [7]), ("singleton", [])]
    assert depend.parse("afternotok:8_2")[0][1][0].tasks == (2,)


@pytest.mark.parametrize("text,detail", [
    ("aftercorr:1", "aftercorr is not supported by schedd"),
    ("afterwards:1", "'afterwards' is not a dependency kind"),
    ("singleton:5", "singleton takes no job ids"),
    ("afternotok:", "afternotok needs a job id"),
    ("afternotok", "afternotok needs a job id"),
])
def test_bad_dependencies_are_a_dependency_problem(text, detail):
    from schedd_slurm import depend

    with pytest.raises(SlurmUsage, match="Job dependency problem") as e:
        depend.parse(text)
    assert detail in str(e.value)


def test_afternotok_verdicts():
    from schedd_slurm.depend import GONE, not_ok_verdict

    assert not_ok_verdict(["RUNNING"]) is None and not_ok_verdict(["PENDING"]) is None
    assert not_ok_verdict(["FAILED"]) is True and not_ok_verdict(["CANCELLED"]) is True  # TIMEOUT, OOM: FAILED
    assert not_ok_verdict(["COMPLETED"]) is False  # never satisfiable
    assert not_ok_verdict([GONE]) is True  # purged: the dependency is lifted, as in Slurm
    assert not_ok_verdict(["COMPLETED", "FAILED"]) is True  # an array: one failed task is enough
    assert not_ok_verdict(["COMPLETED", "RUNNING"]) is None  # ... once every task ended
    assert not_ok_verdict(["COMPLETED", "COMPLETED"]) is False


def test_singleton_waits_only_for_earlier_unfinished_jobs_of_its_user_and_name():
    from schedd_slurm.depend import singleton_blockers

    rows = [{"Id": 3, "Name": "train", "User": 1000, "State": "RUNNING"},
            {"Id": 4, "Name": "train", "User": 1000, "State": "HELD"},
            {"Id": 5, "Name": "other", "User": 1000, "State": "RUNNING"},
            {"Id": 6, "Name": "train", "User": 1001, "State": "RUNNING"},
            {"Id": 7, "Name": "train", "User": 1000, "State": "COMPLETED"},
            {"Id": 9, "Name": "train", "User": 1000, "State": "PENDING"}]  # later: never waited for
    assert singleton_blockers(rows, 8, "train", 1000) == [3, 4]
    assert singleton_blockers(rows, 3, "train", 1000) == []


class _Jobs:
    """GetJob of a few plain jobs; NotFound for the rest."""

    def __init__(self, *ids: int) -> None:
        self.ids = ids

    async def get_job(self, jid: int) -> dict:
        from dbus_fast.errors import DBusError

        from schedd_slurm.common import NOT_FOUND

        if jid not in self.ids:
            raise DBusError(NOT_FOUND, f"no job {jid}")
        return {"Id": jid, "State": "RUNNING", "Name": "x"}


def test_dependencies_split_between_after_and_the_launcher():
    import asyncio

    from schedd_slurm import depend

    after, waits = asyncio.run(sbatch.dependencies(_Jobs(1, 2, 3, 4), "afterok:1,afternotok:2:3,after:4,singleton"))
    assert after == [1]
    assert waits == {"afternotok": [[2], [3]], "after": [4], "singleton": True}
    assert depend.describe(after, waits) == "afterok:1,after:4,afternotok:2,afternotok:3,singleton"
    with pytest.raises(SlurmUsage, match=r"^Batch job submission failed: Job dependency problem$"):
        asyncio.run(sbatch.dependencies(_Jobs(1), "afternotok:1:99"))


def test_values_no_parser_foresaw_get_one_error_line_not_a_traceback(capsys):
    """A huge or non-ASCII number (or any value that breaks a conversion) ends as `prog: error: ...`."""
    from schedd_slurm import common

    async def body() -> int:
        int("²")  # str.isdigit() says yes, int() says no
        return 0

    assert common.run("sbatch", body) == 1
    err = capsys.readouterr().err
    assert err.startswith("sbatch: error: ") and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_huge_array_range_is_refused_before_it_is_built():
    from schedd.protocol import MAX_ARRAY_TASKS, parse_array

    with pytest.raises(ValueError, match=f"more than {MAX_ARRAY_TASKS}"):
        parse_array("0-4294967294")  # 4e9 ids: refused at once, not built in a set


def test_scancel_signal_reaches_only_the_owners_processes_in_the_job_scope(monkeypatch, tmp_path):
    """A scope of the same name outside schedd.slice (systemd-run --user --scope --unit=schedd-job-5
    by anyone) or another user's process there is not the job's."""
    from schedd_slurm import procs

    table = {
        101: ("0::/schedd.slice/schedd-job-5.scope\n", 1000),
        102: ("0::/user.slice/user-1001.slice/user@1001.service/app.slice/schedd-job-5.scope\n", 1001),
        103: ("0::/schedd.slice/schedd-job-5.scope\n", 1001),
        104: ("1:name=systemd:/schedd.slice/schedd-job-5.scope\n0::/schedd.slice/schedd-job-5.scope\n", 1000),
        105: ("0::/schedd.slice/schedd-job-55.scope\n", 1000),
    }
    monkeypatch.setattr(procs, "pids", lambda: list(table))
    monkeypatch.setattr(procs, "_uid", lambda pid: table[pid][1])
    real_open = open

    def fake_open(path, *a, **k):
        if str(path).startswith("/proc/") and str(path).endswith("/cgroup"):
            f = tmp_path / "cg"
            f.write_text(table[int(str(path).split("/")[2])][0])
            return real_open(f, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert procs.in_scope("schedd-job-5.scope", 1000) == [101, 104]

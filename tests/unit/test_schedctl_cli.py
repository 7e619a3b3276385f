"""schedctl without a daemon: spec building, exit codes, rendering."""

from __future__ import annotations

import json

import pytest

from schedctl import render
from schedctl.cli import UsageError, build_spec, parse, wait_exit_code


def spec(argv: list[str], environ=None, cwd="/home/u/work"):
    return build_spec(parse(["submit", *argv]), environ or {"PATH": "/usr/bin", "LANG": "C"}, cwd)


def test_types_are_the_contracts():
    s = spec(["--cpus", "2", "--mem", "4G", "--gpus", "1", "--priority", "-3", "--time", "1h30m", "--after",
              "12,13", "--name", "n", "--hold", "--", "python3", "train.py", "--lr", "0.1"])
    sig = {k: v.signature for k, v in s.items()}
    assert sig == {"Command": "as", "CPUs": "u", "Memory": "t", "GPUs": "u", "Priority": "i",
                   "RuntimeMaxUSec": "t", "After": "at", "Name": "s", "Hold": "b", "WorkingDirectory": "s",
                   "Environment": "as"}
    assert s["Command"].value == ["python3", "train.py", "--lr", "0.1"]
    assert (s["Memory"].value, s["RuntimeMaxUSec"].value, s["After"].value) == (4 << 30, 5400_000_000, [12, 13])


def test_environment_and_paths():
    s = spec(["--env", "A=1=2", "-o", "out/%j.log", "--chdir", "sub", "--", "true"])
    assert set(s["Environment"].value) == {"PATH=/usr/bin", "LANG=C", "A=1=2"}
    assert s["StdoutPath"].value == "/home/u/work/out/%j.log"
    assert s["WorkingDirectory"].value == "/home/u/work/sub"
    assert spec(["--no-env", "--", "true"])["Environment"].value == []


def test_job_file_merge(tmp_path):
    f = tmp_path / "job.json"
    f.write_text(json.dumps({"command": "python script.py --x 'a b'", "resources": {"cpu": 4, "memory": "8G"},
                             "priority": 1, "output": "/tmp/o.log"}))
    s = spec(["--file", str(f), "--priority", "5"])
    assert s["Command"].value == ["python", "script.py", "--x", "a b"]
    assert (s["CPUs"].value, s["Memory"].value, s["Priority"].value) == (4, 8 << 30, 5)
    assert s["StdoutPath"].value == "/tmp/o.log"


@pytest.mark.parametrize("argv, words", [
    (["--mem", "lots", "--", "true"], "not a size"),
    (["--time", "soon", "--", "true"], "not a duration"),
    (["--after", "x", "--", "true"], "--after"),
    (["--env", "NOEQ", "--", "true"], "NAME=VALUE"),
    ([], "give the command"),
])
def test_bad_input_is_caught_before_any_call(argv, words):
    with pytest.raises(UsageError, match=words):
        spec(argv)


def test_global_options_anywhere():
    a = parse(["queue", "--json", "--user"])
    assert (a.json, a.user_bus) == (True, True)
    b = parse(["--json", "status"])
    assert (b.json, b.user_bus) == (True, False)


def job(state, code=0, **kw):
    return {"State": state, "ExitCode": code, "Reason": "", **kw}


@pytest.mark.parametrize("jobs, rc", [
    ([job("COMPLETED")], 0), ([job("FAILED", 3)], 3), ([job("FAILED", 0)], 1), ([job("CANCELLED", 143)], 1),
    ([job("COMPLETED"), job("COMPLETED")], 0), ([job("COMPLETED"), job("FAILED", 2)], 1),
])
def test_wait_exit_codes(jobs, rc):
    assert wait_exit_code(jobs) == rc


def test_queue_table_is_aligned_and_counted():
    now = render.now_usec()
    rows = [dict(Id=i, Name=f"job{i}", User=1000, UserName="alice", State=s, Reason="", CPUs=1, Memory=1 << 30,
                 Priority=0, SubmitTime=now - 5_000_000, StartTime=now - 2_000_000 if s == "RUNNING" else 0,
                 EndTime=0, Node="n1") for i, s in ((7, "RUNNING"), (12, "PENDING"))]
    out = render.queue(rows, tty=False).splitlines()
    assert out[0].split() == ["ID", "NAME", "USER", "STATE", "REASON", "CPUS", "MEM", "PRIO", "TIME", "NODE"]
    assert out[1].split()[:4] == ["7", "job7", "alice", "RUNNING"] and out[1].split()[-2] == "2s"
    assert out[0].index("STATE") == out[1].index("RUNNING") == out[2].index("PENDING")
    assert out[-1] == "2 jobs listed."


def test_show_is_key_value():
    text = render.show({"Id": 3, "Command": ["sleep", "1"], "Memory": 1 << 20, "SubmitTime": 0})
    assert text.splitlines()[:3] == ["Id=3", "Command=sleep 1", "Memory=1048576  # 1M"]


def test_stats_per_user():
    js = [dict(State="COMPLETED", User=1, UserName="a", SubmitTime=0, StartTime=2_000_000, CPUTimeUSec=3_600_000_000),
          dict(State="FAILED", User=1, UserName="a", SubmitTime=0, StartTime=4_000_000, CPUTimeUSec=0),
          dict(State="PENDING", User=2, UserName="b", SubmitTime=0, StartTime=0, CPUTimeUSec=0)]
    s = render.stats(js)
    assert s["Users"]["a"]["SuccessRate"] == 0.5 and s["Users"]["a"]["MeanWaitSec"] == 3.0
    assert s["Total"]["CPUHours"] == 1.0 and s["Users"]["b"]["SuccessRate"] is None

"""schedctl without a daemon: argv -> a{sv}, option parsing, rendering, wait/logs logic on a fake client.

(Named test_schedctl_cli.py: tests/integration/test_schedctl.py exists, and pytest's default
import mode refuses two test modules with the same basename.)
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from dbus_fast import Variant

from schedctl import cli, render
from schedctl.cli import parse
from schedctl.commands.jobs import prepare_queue
from schedctl.commands.logs import _print_log, cmd_logs
from schedctl.commands.submit import build_spec
from schedctl.commands.wait import cmd_wait, wait_exit_code
from schedctl.errors import Failure, UsageError
from schedctl.client import Client, plain
from schedd.protocol import JOB_PROPERTIES, SPEC_KEYS

ENV = {"PATH": "/usr/bin", "LANG": "C", "HOME": "/home/u"}
CWD = "/home/u/work"
ANSI = re.compile(r"\033\[")


def spec(argv: list[str], environ=None, cwd=CWD) -> dict[str, Variant]:
    return build_spec(parse(["submit", *argv]), ENV if environ is None else environ, cwd)


def values(s: dict[str, Variant]) -> dict:
    return {k: v.value for k, v in s.items()}


# -- argv -> a{sv} ------------------------------------------------------------------------------


def test_every_option_has_the_contracts_type():
    s = spec(["--cpus", "2", "--mem", "4G", "--gpus", "1", "--priority", "-3", "--time", "1h30m", "--after",
              "12,13", "--name", "n", "--hold", "--node", "any", "--chdir", "/data", "-o", "/o/%j.log", "-e",
              "/o/%j.err", "--", "python3", "train.py", "--lr", "0.1"])
    assert {k: v.signature for k, v in s.items()} == {k: SPEC_KEYS[k] for k in s}
    assert set(s) == {"Command", "CPUs", "Memory", "GPUs", "Priority", "RuntimeMaxUSec", "After", "Name", "Hold",
                      "Node", "WorkingDirectory", "StdoutPath", "StderrPath", "Environment"}
    v = values(s)
    assert v["Command"] == ["python3", "train.py", "--lr", "0.1"]  # options after the command are the command's
    assert (v["CPUs"], v["Memory"], v["GPUs"], v["Priority"]) == (2, 4 << 30, 1, -3)
    assert (v["RuntimeMaxUSec"], v["After"], v["Hold"]) == (5400 * 10**6, [12, 13], True)
    assert (v["WorkingDirectory"], v["StdoutPath"], v["StderrPath"]) == ("/data", "/o/%j.log", "/o/%j.err")


def test_defaults_send_the_callers_environment_and_directory():
    v = values(spec(["--", "true"]))
    assert v == {"Command": ["true"], "WorkingDirectory": CWD,
                 "Environment": ["PATH=/usr/bin", "LANG=C", "HOME=/home/u"]}


def test_command_without_double_dash_and_with_options_after_it():
    assert values(spec(["--cpus", "1", "sh", "-c", "echo --cpus 9"]))["Command"] == ["sh", "-c", "echo --cpus 9"]


def test_environment_options():
    env = values(spec(["--env", "A=1=2", "--env", "LANG=de_DE", "--", "true"]))["Environment"]
    assert env == ["PATH=/usr/bin", "LANG=de_DE", "HOME=/home/u", "A=1=2"]
    assert values(spec(["--no-env", "--", "true"]))["Environment"] == []
    assert values(spec(["--no-env", "--env", "HOME", "--env", "X=", "--", "true"]))["Environment"] == [
        "HOME=/home/u", "X="]  # a bare name passes the caller's value on


def test_relative_paths_are_the_callers():
    v = values(spec(["-o", "out/%j.log", "--error", "../err.log", "--chdir", "sub/./dir", "--", "true"]))
    assert (v["StdoutPath"], v["StderrPath"], v["WorkingDirectory"]) == (
        "/home/u/work/out/%j.log", "/home/u/err.log", "/home/u/work/sub/dir")


def test_job_file_is_merged_under_the_command_line(tmp_path, capsys):
    f = tmp_path / "job.json"
    f.write_text(json.dumps({"job_id": "123", "command": "python script.py --x 'a b' $HOME; rm -rf /",
                             "resources": {"cpu": 4, "memory": "8G", "gpu": 1}, "priority": 1,
                             "output": "logs/o.log", "time": "2h", "environment": {"K": "v", "LANG": "fr"}}))
    v = values(spec(["--file", str(f), "--priority", "5", "--gpus", "0"]))
    assert v["Command"] == ["python", "script.py", "--x", "a b", "$HOME;", "rm", "-rf", "/"]  # shlex, no shell
    assert (v["CPUs"], v["Memory"], v["GPUs"], v["Priority"]) == (4, 8 << 30, 0, 5)
    assert (v["RuntimeMaxUSec"], v["StdoutPath"]) == (7200 * 10**6, "/home/u/work/logs/o.log")
    assert v["Environment"] == ["PATH=/usr/bin", "LANG=fr", "HOME=/home/u", "K=v"]
    assert "job ids are assigned by the daemon" in capsys.readouterr().err
    assert values(spec(["--file", str(f), "--", "echo", "x"]))["Command"] == ["echo", "x"]


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "one JSON object"),
    ('{"command": "true", "colour": "red"}', "unknown key 'colour'"),
    ('{"command": "echo \'unclosed"}', "closing quotation"),
    ('{"command": "true", "resources": {"cpu": "four"}}', "CPUs must be a whole number"),
    ('{"command": "true", "resources": {"cpu": true}}', "CPUs must be a whole number"),
    ('{"command": "true", "resources": {"memory": "lots"}}', "not a size"),
    ('{"command": "true", "time": "soon"}', "not a duration"),
    ('{"command": "true", "hold": "yes"}', "Hold must be true or false"),
    ('{"command": "true", "environment": ["NOEQUALS_UNSET"]}', "NAME=VALUE"),
    ('{"command": [1, 2]}', "Command must be a list of strings"),
])
def test_bad_job_files(tmp_path, content, words):
    f = tmp_path / "job.json"
    f.write_text(content)
    with pytest.raises(UsageError, match=re.escape(words)):
        spec(["--file", str(f)])


def test_missing_job_file(tmp_path):
    with pytest.raises(UsageError, match="No such file"):
        spec(["--file", str(tmp_path / "nope.json")])


@pytest.mark.parametrize("argv, words", [
    (["--mem", "lots", "--", "true"], "--mem: not a size"),
    (["--mem=-1G", "--", "true"], "not a size"),
    (["--time", "soon", "--", "true"], "--time: not a duration"),
    (["--time", "", "--", "true"], "empty duration"),
    (["--after", "x", "--", "true"], "--after"),
    (["--after", "0", "--", "true"], "--after"),
    (["--env", "NOEQ_NOT_SET", "--", "true"], "NAME=VALUE"),
    (["--env", "=v", "--", "true"], "NAME=VALUE"),
    (["--cpus", "-1", "--", "true"], "CPUs must be a whole number from 0"),
    (["--priority", str(1 << 31), "--", "true"], "Priority must be a whole number"),
    ([], "give the command"),
    (["--"], "give the command"),
])
def test_bad_input_is_caught_before_any_call(argv, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        spec(argv)


def test_usage_errors_exit_2_without_touching_the_bus(capsys):
    nowhere = ["--bus-address", "unix:path=/nonexistent/schedctl-test-bus"]
    assert cli.main([*nowhere, "submit", "--time", "1 fortnight", "--", "true"]) == 2
    assert capsys.readouterr().err.startswith("schedctl: --time: not a duration")
    assert cli.main(["show", "abc"]) == 2  # argparse's own errors come back as a status, not SystemExit
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["--version"]) == 0


def test_unreachable_daemon_is_worded_for_a_person(capsys):
    assert cli.main(["--bus-address", "unix:path=/nonexistent/schedctl-test-bus", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("schedctl: cannot reach schedd on the system bus (unix:path=/nonexistent/")
    assert err.rstrip().endswith("is it running? try: systemctl status schedd")
    assert cli.main(["--user", "--bus-address", "unix:path=/nonexistent/x", "queue"]) == 1
    assert "on the session bus" in capsys.readouterr().err


# -- options --------------------------------------------------------------------------------------


def test_global_options_anywhere():
    assert (lambda a: (a.json, a.user_bus))(parse(["queue", "--json", "--user"])) == (True, True)
    assert (lambda a: (a.json, a.user_bus))(parse(["--json", "status"])) == (True, False)
    assert parse(["--user", "show", "--system", "3"]).user_bus is False
    a = parse(["submit", "--json", "--", "echo", "--json"])
    assert a.json and a.command == ["echo", "--json"]


def test_queue_user_filter_versus_the_session_bus():
    a = parse(["queue", "--user", "alice"])
    assert (a.owner, a.user_bus) == ("alice", False)
    a = parse(["queue", "--user"])
    assert (a.owner, a.user_bus) == (None, True)
    a = parse(["--user", "list", "-u", "1000", "--all"])
    assert (a.owner, a.user_bus, a.all) == ("1000", True, True)
    prepare_queue(a)
    assert (a.uid, a.states) == (1000, None)
    b = parse(["queue"])
    prepare_queue(b)
    assert (b.uid, b.states) == (None, ["PENDING", "HELD", "RUNNING", "SUSPENDED"])
    c = parse(["queue", "--all", "--state", "running,failed", "--user", "root"])
    prepare_queue(c)
    assert (c.uid, c.states) == (0, ["RUNNING", "FAILED"])
    for bad in (["--state", "DONE"], ["--user", "no-such-user-here"], ["--limit", "0"]):
        with pytest.raises(UsageError):
            prepare_queue(parse(["queue", *bad]))


@pytest.mark.parametrize("argv", [["cancel", "0"], ["cancel", "-1"], ["wait", "x"], ["logs"],
                                  ["wait", "1", "--timeout", "-3"], ["show"]])
def test_bad_ids_are_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2


# -- wait exit status ------------------------------------------------------------------------------


def job(state="PENDING", code=0, **kw) -> dict:
    base = dict(Id=1, Name="j", User=1000, UserName="alice", State=state, Reason="", ExitCode=code, CPUs=1,
                Memory=1 << 30, Priority=0, SubmitTime=0, StartTime=0, EndTime=0, Node="n1", CPUTimeUSec=0)
    return {**base, **kw}


@pytest.mark.parametrize("jobs, rc", [
    ([job("COMPLETED")], 0),
    ([job("FAILED", 3)], 3),
    ([job("FAILED", 137, Reason="oom-kill")], 137),
    ([job("FAILED", 0, Reason="oom-kill")], 1),
    ([job("CANCELLED", 143)], 1),
    ([job("COMPLETED"), job("COMPLETED")], 0),
    ([job("COMPLETED"), job("FAILED", 2)], 1),
    ([job("COMPLETED"), job("CANCELLED")], 1),
])
def test_wait_exit_codes(jobs, rc):
    assert wait_exit_code(jobs) == rc


# -- rendering ---------------------------------------------------------------------------------------

NOW = 1_800_000_000_000_000


def test_the_queue_asks_for_every_key_it_shows():
    """The queue lists with ListJobs' Properties = QUEUE_PROPERTIES: rows cut to those keys render
    exactly as whole rows (a key left out would show as '-' or 0, or raise)."""
    from schedd.protocol import JOB_PROPERTIES

    everything = {k: v for k, v in job().items()} | {"WorkingDirectory": "/w", "Command": ["x"], "Restarts": 0}
    rows = [everything | kw for kw in (
        dict(Id=7, State="RUNNING", Name="train", SubmitTime=NOW - 5_000_000, StartTime=NOW - 2_000_000, Node="n2"),
        dict(Id=8, State="PENDING", Reason="resources", CPUs=16, Memory=512 << 20, Priority=10, SubmitTime=NOW - 9),
        dict(Id=9, State="COMPLETED", StartTime=NOW - 10_000_000, EndTime=NOW - 7_000_000, User=1001, UserName=""),
        dict(Id=20, State="PENDING", ArrayJobId=20, ArrayTaskId=1, ArrayMaxRunning=4),
        dict(Id=21, State="PENDING", ArrayJobId=20, ArrayTaskId=2, ArrayMaxRunning=4),
        dict(Id=22, State="RUNNING", ArrayJobId=20, ArrayTaskId=3, ArrayMaxRunning=4, StartTime=NOW - 1),
        dict(Id=30, State="HELD", ArrayJobId=30, ArrayTaskId=0, ArrayTasks="0-99"))]
    assert set(render.QUEUE_PROPERTIES) <= set(JOB_PROPERTIES)
    keep = {"Id", "ArrayTasks", *render.QUEUE_PROPERTIES}
    cut = [{k: v for k, v in r.items() if k in keep} for r in rows]
    for fold in (False, True):
        assert render.queue(cut, tty=False, now=NOW, fold=fold) == render.queue(rows, tty=False, now=NOW, fold=fold)
    assert render.queue([{k: v for k, v in r.items() if k != "StartTime"} for r in rows], tty=False, now=NOW) \
        != render.queue(rows, tty=False, now=NOW)  # the comparison sees a missing key


def test_pages_from_a_daemon_without_properties_come_whole():
    """A daemon not restarted since an upgrade answers 'unknown filter key' to Properties: the
    client asks again without it (once), and other errors still reach the caller."""
    from dbus_fast.errors import DBusError

    from schedctl.client import Client

    class Old(Client):
        def __init__(self, error: str) -> None:
            super().__init__(user=True, address="unix:path=/nonexistent")
            self.error, self.filters = error, []

        async def call(self, member, signature="", body=None):
            flt = body[0]
            self.filters.append(sorted(flt))
            if "Properties" in flt:
                raise DBusError("org.schedd.Schedd1.Error.InvalidArgument", self.error)
            return [[{"Id": Variant("t", 7 + flt["After"].value), "State": Variant("s", "HELD")}]
                    if flt["After"].value < 2 else []]

    async def pages(c: Client) -> list:
        return [p async for p in c.job_pages(properties=["State"], page_size=1)]

    old = Old("unknown filter key 'Properties'; valid keys: States, User, Limit, After, AllNodes, FoldArrays")
    assert asyncio.run(pages(old)) == [[{"Id": 7, "State": "HELD"}]]
    assert old.filters == [["After", "Limit", "Properties"], ["After", "Limit"], ["After", "Limit"]]
    with pytest.raises(DBusError, match="no job property"):
        asyncio.run(pages(Old("Properties: no job property 'State'")))


def test_queue_table_is_aligned_counted_and_plain_off_a_tty():
    rows = [job("RUNNING", Id=7, Name="train", SubmitTime=NOW - 5_000_000, StartTime=NOW - 2_000_000),
            job("PENDING", Id=12, Name="a-very-long-name-that-goes-on-and-on", Reason="resources", CPUs=16,
                Memory=512 << 20, Priority=10, SubmitTime=NOW - 65_000_000, Node=""),
            job("COMPLETED", Id=130, Reason="success", StartTime=NOW - 10_000_000, EndTime=NOW - 7_000_000)]
    text = render.queue(rows, tty=False, now=NOW)
    assert not ANSI.search(text)
    out = text.splitlines()
    assert out[0].split() == render.QUEUE_HEADERS
    assert out[1].split() == ["7", "train", "alice", "RUNNING", "-", "1", "1G", "0", "2s", "n1"]
    assert out[2].split() == ["12", "a-very-long-name-that-g…", "alice", "PENDING", "resources", "16", "512M", "10",
                              "1min", "5s", "-"]  # TIME: waited so far
    assert out[3].split()[-2] == "3s"  # run time once finished
    assert len({line.index(s) for line, s in zip(out, ["STATE", "RUNNING", "PENDING", "COMPLETED"])}) == 1
    assert out[0].index("NODE") == out[1].rindex("n1") == out[2].rindex("-") == out[3].rindex("n1")
    assert out[0].index("TIME") + 4 == out[1].index("2s") + 2 == out[2].index("1min 5s") + 7  # right-aligned
    assert out[-2:] == ["", "3 jobs listed."]
    assert render.queue(rows[:1], tty=False, now=NOW).endswith("\n1 job listed.")
    assert render.queue([], tty=False) == "0 jobs listed."
    assert "\033[32mRUNNING\033[0m" in render.queue(rows, tty=True, now=NOW)


class _Queue:
    """A fake client holding a queue: pages by id with the After cursor, as the daemon serves them."""

    def __init__(self, jobs: list[dict]) -> None:
        self.jobs, self.calls = jobs, 0

    async def job_pages(self, states=None, uid=None, limit=None, page_size=3, fold=False, properties=None):
        picked = [j for j in self.jobs if (states is None or j["State"] in states) and uid in (None, j["User"])]
        picked = picked[:limit]
        if properties is not None:  # the daemon's Properties: those keys and Id
            picked = [{k: v for k, v in j.items() if k in {"Id", *properties}} for j in picked]
        for k in range(0, len(picked), page_size):
            self.calls += 1
            yield picked[k:k + page_size]

    async def properties(self) -> dict:
        return {"PendingJobs": sum(j["State"] in ("PENDING", "HELD") for j in self.jobs)}


def run_queue(fake: _Queue, argv: list[str], capsys) -> str:
    from schedctl.commands.jobs import cmd_queue
    a = parse(["queue", *argv])
    prepare_queue(a)
    assert asyncio.run(cmd_queue(fake, a)) == 0
    return capsys.readouterr().out


def test_queue_shows_the_running_and_the_head_of_a_long_queue(capsys):
    from schedctl.commands.jobs import HEAD
    jobs = [job("PENDING" if i % 7 else "HELD", Id=i) for i in range(1, 1001)]
    jobs[500:503] = [job("RUNNING", Id=i) for i in (501, 502, 503)]
    jobs.append(job("COMPLETED", Id=1001))
    out = run_queue(_Queue(jobs), [], capsys).splitlines()
    listed = [int(line.split()[0]) for line in out[1:-2]]
    assert listed == [501, 502, 503, *range(1, HEAD + 1)]  # every running job, then the head
    assert out[-1].startswith(f"{HEAD + 3} jobs listed: 3 running, the first {HEAD} waiting, {997 - HEAD:,} more waiting.")
    assert "--all" in out[-1]
    small = run_queue(_Queue(jobs[:4] + jobs[500:501]), [], capsys).splitlines()
    assert small[-1] == "5 jobs listed."  # nothing left out: no note
    mine = run_queue(_Queue(jobs + [job("PENDING", Id=2000, User=1001)]), ["--user", "1001"], capsys).splitlines()
    assert mine[-1] == "1 job listed." and mine[1].split()[0] == "2000"


def test_queue_all_and_json_stream_every_job_page_by_page(capsys):
    jobs = [job("PENDING", Id=i, Name="x" * (i % 30)) for i in range(1, 101)] + [job("COMPLETED", Id=101)]
    fake = _Queue(jobs)
    out = run_queue(fake, ["--all", "--array"], capsys).splitlines()
    assert fake.calls == 34 and [int(line.split()[0]) for line in out[1:-2]] == list(range(1, 102))
    assert out[-1] == "101 jobs listed."
    assert out[0].index("USER") <= out[1].index("alice")  # a page may widen, never overlap
    active = [j for j in jobs if j["State"] != "COMPLETED"]
    assert run_queue(_Queue(jobs), ["--json"], capsys) == json.dumps(active) + "\n"
    assert run_queue(_Queue([]), ["--json"], capsys) == "[]\n"
    assert run_queue(_Queue(jobs), ["--limit", "5", "--json"], capsys) == json.dumps(active[:5]) + "\n"
    assert run_queue(_Queue([]), ["--all"], capsys) == "0 jobs listed.\n"


def test_stream_table_widths_only_grow():
    t = render.StreamTable(["ID", "NAME"], right={0})
    first = t.page([["1", "ab"], ["22", "c"]]).splitlines()
    assert first == ["ID  NAME", " 1  ab", "22  c"]
    assert t.page([["333", "d"]]).splitlines() == ["333  d"]
    assert t.page([["4", "e"]]).splitlines() == ["  4  e"]


def test_elapsed_by_state():
    assert render.elapsed(job("PENDING", SubmitTime=NOW - 3_000_000), NOW) == "3s"
    assert render.elapsed(job("SUSPENDED", SubmitTime=NOW - 9e6, StartTime=NOW - 4_000_000), NOW) == "4s"
    assert render.elapsed(job("FAILED", StartTime=NOW - 3_600_000_000, EndTime=NOW), NOW) == "1h"
    assert render.elapsed(job("CANCELLED", SubmitTime=NOW - 1), NOW) == "-"  # never started


def test_show_is_greppable_key_value():
    j = {k: 0 for k in JOB_PROPERTIES}
    j.update(Id=3, Command=["sleep", "1"], Memory=1 << 20, State="RUNNING", After=[1, 2], AssignedGPUs=[],
             StartTime=NOW, RuntimeMaxUSec=0)
    plain_text = render.show(j)
    lines = plain_text.splitlines()
    names = [k[:-4] + "Timestamp" if k in ("SubmitTime", "StartTime", "EndTime", "BeginTime") else k
             for k in JOB_PROPERTIES]
    assert [ln.split("=", 1)[0] for ln in lines] == names
    stamp = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(NOW / 1e6))
    assert {"Id=3", "Command=sleep 1", "Memory=1048576", "After=1 2", "AssignedGPUs=", f"StartTimestamp={stamp}",
            "EndTimestamp=", "SubmitTimestamp="} <= set(lines)
    human = dict(ln.split("=", 1) for ln in render.show(j, human=True).splitlines())
    assert human["Memory"] == "1048576  # 1M" and human["RuntimeMaxUSec"] == "0  # infinity"
    assert human["StartTimestamp"] == stamp and human["EndTimestamp"] == ""
    assert render.show(j, props=["State", "Id", "Nope"]) == "State=RUNNING\nId=3"
    assert render.show(j, props=["State"], value_only=True) == "RUNNING"
    # -p takes the D-Bus name or the printed one; --value prints the formatted time
    assert render.show(j, props=["StartTime"]) == render.show(j, props=["StartTimestamp"]) == f"StartTimestamp={stamp}"
    assert render.show(j, props=["StartTime"], value_only=True) == stamp


def test_show_timestamps_are_systemd_style_in_utc(monkeypatch):
    """systemctl show's form, e.g. SubmitTimestamp=Tue 2026-12-01 21:40:50 UTC (in the local zone)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        usec = 1796161250_000_000  # 2026-12-01 21:40:50 UTC
        assert render.show({"SubmitTime": usec + 123_456}) == "SubmitTimestamp=Tue 2026-12-01 21:40:50 UTC"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_status_block():
    props = dict(Version="0.1.0", NodeName="vm", Executor="plain", TotalCPUs=8, AvailableCPUs=6,
                 TotalMemory=16 << 30, AvailableMemory=12 << 30, TotalGPUs=2, AvailableGPUs=1, PendingJobs=4,
                 RunningJobs=2)
    text = render.status(props, tty=False)
    assert text.splitlines() == [
        "● schedd 0.1.0 on node vm",
        "   Executor: plain",
        "       CPUs: 6 of 8 available",
        "     Memory: 12G of 16G available",
        "       GPUs: 1 of 2 available",
        "       Jobs: 2 running, 4 pending",
    ]
    assert "\033[" in render.status(props, tty=True)


def test_nodes_table():
    rows = [dict(Name="a", State="up", URL="", Local=True, TotalCPUs=8, AvailableCPUs=2, TotalMemory=16 << 30,
                 AvailableMemory=1 << 30, TotalGPUs=0, AvailableGPUs=0, PendingJobs=3, RunningJobs=5,
                 LastSeenUSec=NOW - 2_000_000),
            dict(Name="b", State="down", URL="https://b", Local=False, TotalCPUs=4, AvailableCPUs=0, TotalMemory=0,
                 AvailableMemory=0, TotalGPUs=1, AvailableGPUs=1, PendingJobs=0, RunningJobs=0, LastSeenUSec=0)]
    out = render.nodes(rows, tty=False, now=NOW).splitlines()
    assert out[0].split() == ["NAME", "STATE", "CPUS", "MEM", "GPUS", "PENDING", "RUNNING", "LAST-SEEN"]
    assert out[1].split() == ["a*", "up", "2/8", "1G/16G", "0/0", "3", "5", "2s", "ago"]
    assert out[2].split() == ["b", "down", "0/4", "0B/0B", "1/1", "0", "0", "never"]
    assert out[-1] == "2 nodes listed."


def test_stats_per_user_and_total():
    t0 = 1_700_000_000_000_000  # times are µs since the epoch; 0 means "not yet"
    js = [job("COMPLETED", User=1, UserName="a", SubmitTime=t0, StartTime=t0 + 2_000_000, CPUTimeUSec=3_600_000_000),
          job("FAILED", User=1, UserName="a", SubmitTime=t0, StartTime=t0 + 4_000_000),
          job("CANCELLED", User=1, UserName="a", SubmitTime=t0),
          job("PENDING", User=2, UserName="", SubmitTime=t0)]
    s = render.stats(js)
    a = s["Users"]["a"]
    assert (a["Jobs"], a["Completed"], a["Failed"], a["SuccessRate"], a["MeanWaitSec"]) == (3, 1, 1, 0.5, 3.0)
    assert a["States"] == {"COMPLETED": 1, "FAILED": 1, "CANCELLED": 1}
    assert s["Users"]["2"].get("SuccessRate") is None  # no name: the uid; no ended job: no rate
    assert s["Total"]["CPUHours"] == 1.0 and s["Total"]["Jobs"] == 4
    text = render.stats_text(s).splitlines()
    assert text[0].split()[:3] == ["USER", "JOBS", "QUEUED"] and text[1].split()[:2] == ["2", "1"]
    assert text[-1].split()[:2] == ["total", "4"] and "50.0%" in text[2]
    json.dumps(s)


def test_ended_lines():
    assert render.ended(job("COMPLETED", Id=12, Reason="success")) == "job 12 COMPLETED (success)"
    assert render.ended(job("FAILED", 3, Id=13, Reason="exit-code")) == "job 13 FAILED (exit-code), status=3"
    assert render.ended(job("CANCELLED", 143, Id=14, Reason="cancelled")) == "job 14 CANCELLED (cancelled)"


# -- the client, on canned answers -------------------------------------------------------------------


def test_plain_unwraps_nested_variants():
    v = {"Id": Variant("t", 3), "Command": Variant("as", ["a"]), "Nested": Variant("a{sv}", {"x": Variant("u", 1)})}
    assert plain([v]) == [{"Id": 3, "Command": ["a"], "Nested": {"x": 1}}]


async def test_list_jobs_pages_with_the_after_cursor(monkeypatch):
    monkeypatch.setattr("schedctl.client.LIST_LIMIT", 3)
    store = [{"Id": Variant("t", i), "State": Variant("s", "PENDING")} for i in range(1, 9)]
    calls = []

    async def fake_call(self, member, signature="", body=None):
        flt = plain(body[0])
        calls.append(flt)
        return [[j for j in store if j["Id"].value > flt["After"]][: flt["Limit"]]]

    monkeypatch.setattr(Client, "call", fake_call)
    c = Client(user=True, address="unix:path=/unused")
    assert [j["Id"] for j in await c.list_jobs(["PENDING"], 1000)] == list(range(1, 9))
    # A short page is not the end (the daemon shortens pages of large rows): only an empty one is.
    assert [(f["After"], f["Limit"]) for f in calls] == [(0, 3), (3, 3), (6, 3), (8, 3)]
    assert calls[0]["States"] == ["PENDING"] and calls[0]["User"] == 1000
    calls.clear()
    assert [j["Id"] for j in await c.list_jobs(limit=4)] == [1, 2, 3, 4]
    assert [(f["After"], f["Limit"]) for f in calls] == [(0, 3), (3, 1)] and "States" not in calls[0]


async def test_list_jobs_goes_on_after_a_page_the_daemon_shortened(monkeypatch):
    store = [{"Id": Variant("t", i), "State": Variant("s", "PENDING")} for i in range(1, 6)]

    async def fake_call(self, member, signature="", body=None):
        flt = plain(body[0])
        return [[j for j in store if j["Id"].value > flt["After"]][:2]]  # at most 2 rows fit its reply budget

    monkeypatch.setattr(Client, "call", fake_call)
    c = Client(user=True, address="unix:path=/unused")
    assert [j["Id"] for j in await c.list_jobs()] == [1, 2, 3, 4, 5]


class FakeClient:
    """Just enough of Client for wait and logs -f: jobs by id, and a script of signals."""

    def __init__(self, jobs: dict[int, dict], script=()):
        self.jobs = jobs
        self.script = list(script)  # (delay_s, id, state, action) ; action(jobs) runs before the signal
        self.subscribed = False
        self.queue: asyncio.Queue = asyncio.Queue()

    async def subscribe(self):
        self.subscribed = True
        asyncio.get_running_loop().create_task(self._play())

    async def _play(self):
        for delay, jid, state, action in self.script:
            await asyncio.sleep(delay)
            if action:
                action(self.jobs)
            if jid in self.jobs:
                self.jobs[jid]["State"] = state
            self.queue.put_nowait((jid, f"/org/schedd/Schedd1/job/{jid}", state, ""))

    async def get_job(self, jid):
        assert self.subscribed, "subscribe before looking at the state"
        return dict(self.jobs[jid])

    async def next_change(self, timeout=None):
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def properties(self):
        return {"NodeName": "n1"}

    output: dict[int, bytes] = {}  # what ReadOutput serves for jobs on other nodes

    async def call(self, member, signature="", body=None):
        assert member == "ReadOutput" and signature == "tbt"
        jid, _stderr, offset = body
        return [self.output.get(jid, b"")[offset:offset + 4]]  # small chunks: the client must loop


async def test_wait_sees_ends_in_any_order(capsys):
    jobs = {1: job("RUNNING", Id=1), 2: job("COMPLETED", Id=2, Reason="success"), 3: job("PENDING", Id=3)}

    def fail3(js):
        js[3].update(ExitCode=4, Reason="exit-code")

    c = FakeClient(jobs, [(0.01, 99, "RUNNING", None), (0.01, 3, "FAILED", fail3), (0.01, 1, "RUNNING", None),
                          (0.01, 1, "COMPLETED", None)])
    assert await cmd_wait(c, parse(["wait", "1", "2", "3", "2"])) == 1
    assert capsys.readouterr().out.splitlines() == [
        "job 2 COMPLETED (success)", "job 3 FAILED (exit-code), status=4", "job 1 COMPLETED (-)"]


async def test_wait_one_job_exit_status_and_json(capsys):
    c = FakeClient({5: job("RUNNING", Id=5)}, [(0.01, 5, "FAILED", lambda js: js[5].update(ExitCode=3))])
    assert await cmd_wait(c, parse(["--json", "wait", "5"])) == 3
    out = json.loads(capsys.readouterr().out)
    assert [(j["Id"], j["State"], j["ExitCode"]) for j in out] == [(5, "FAILED", 3)]


async def test_wait_timeout_is_124(capsys):
    c = FakeClient({5: job("RUNNING", Id=5)})
    assert await cmd_wait(c, parse(["wait", "5", "--timeout", "0.05"])) == 124
    assert "timed out" in capsys.readouterr().err


async def test_wait_rechecks_when_a_signal_is_lost(monkeypatch, capsys):
    monkeypatch.setattr("schedctl.commands.wait.RECHECK_S", 0.05)
    jobs = {5: job("RUNNING", Id=5)}
    c = FakeClient(jobs)
    asyncio.get_running_loop().call_later(0.02, lambda: jobs[5].update(State="COMPLETED"))  # no signal sent
    assert await asyncio.wait_for(cmd_wait(c, parse(["wait", "5"])), 5) == 0


async def test_logs_follow_prints_everything_up_to_the_end(tmp_path, capsysbinary):
    out = tmp_path / "out.log"
    jobs = {4: job("PENDING", Id=4, StdoutPath=str(out), StderrPath=str(out))}

    def write(text, mode="ab"):
        def act(js):
            with open(out, mode) as f:
                f.write(text)
        return act

    c = FakeClient(jobs, [(0.05, 4, "RUNNING", write(b"line 1\n", "wb")), (0.15, 4, "RUNNING", write(b"line 2\n")),
                          (0.0, 4, "COMPLETED", write(b"last words"))])  # written just before the end
    assert await cmd_logs(c, parse(["logs", "-f", "4"])) == 0
    assert capsysbinary.readouterr().out == b"line 1\nline 2\nlast words"


async def test_logs_follow_starts_again_after_a_truncation(tmp_path, capsysbinary):
    out = tmp_path / "out.log"
    out.write_bytes(b"first run, long output\n")
    jobs = {4: job("RUNNING", Id=4, StdoutPath=str(out))}
    c = FakeClient(jobs, [(0.15, 4, "PENDING", lambda js: out.write_bytes(b"")),
                          (0.15, 4, "RUNNING", lambda js: out.write_bytes(b"again\n")),
                          (0.15, 4, "COMPLETED", None)])
    assert await cmd_logs(c, parse(["logs", "--follow", "4"])) == 0
    assert capsysbinary.readouterr().out == b"first run, long output\nagain\n"


async def test_logs_of_a_job_on_another_node_come_through_read_output(capsysbinary):
    jobs = {4: job("RUNNING", Id=4, Node="n2", StdoutPath="/elsewhere/out")}
    c = FakeClient(jobs)
    c.subscribed = True  # (a plain read needs no signals)
    c.output = {4: b"remote output\n"}
    assert await cmd_logs(c, parse(["logs", "4"])) == 0
    assert capsysbinary.readouterr().out == b"remote output\n"
    c = FakeClient(jobs, [(0.05, 4, "COMPLETED", None)])
    c.output = {4: b"remote output\n"}
    assert await cmd_logs(c, parse(["logs", "-f", "4"])) == 0
    assert capsysbinary.readouterr().out == b"remote output\n"


def test_logs_reads_the_file_itself(tmp_path, capsys):
    out = tmp_path / "o"
    out.write_bytes("héllo\n".encode())
    assert _print_log(job("COMPLETED", Id=2, StartTime=1), str(out), as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == {"Id": 2, "Path": str(out), "Output": "héllo\n"}
    assert _print_log(job("PENDING", Id=2), str(tmp_path / "none"), as_json=False) == 0
    assert "has not started" in capsys.readouterr().err
    with pytest.raises(Failure, match="cannot read"):
        _print_log(job("COMPLETED", Id=2, StartTime=1), str(tmp_path / "none"), as_json=False)


def test_queue_folds_pending_array_tasks():
    from schedctl.render import fold_arrays

    def j(i, state, task=None, aid=0, cap=0):
        return {"Id": i, "State": state, "ArrayJobId": aid, "ArrayTaskId": task or 0, "ArrayMaxRunning": cap}

    jobs = [j(5, "RUNNING"), j(10, "RUNNING", 1, 10, 2), j(11, "PENDING", 2, 10, 2), j(12, "PENDING", 3, 10, 2),
            j(13, "PENDING", 4, 10, 2), j(20, "PENDING", 7, 20)]
    assert [label for label, _ in fold_arrays(jobs)] == ["5", "10 (10_1)", "10_[2-4%2]", "20 (20_7)"]


def test_queue_of_the_whole_cluster_names_each_jobs_origin():
    from schedctl import render

    jobs = [job("RUNNING", Id=3, Origin="a", Node="b"), job("PENDING", Id=3, Origin="b", Node="")]
    text = render.queue(jobs, tty=False)
    lines = text.splitlines()
    assert lines[1].split()[0] == "a:3" and lines[1].split()[-1] == "b"
    assert lines[2].split()[0] == "b:3"


def test_queue_shows_an_arrays_folded_row_as_slurm_does():
    from schedctl.render import fold_arrays

    def j(i, state, task=0, folded=None):
        row = {"Id": i, "State": state, "ArrayJobId": 12, "ArrayTaskId": task, "ArrayMaxRunning": 8}
        return row | ({"ArrayTasks": folded} if folded else {})

    jobs = [j(12, "RUNNING", 1), j(13, "PENDING", 2), j(16, "PENDING", 5, "5-1000000%8")]
    assert [label for label, _ in fold_arrays(jobs)] == ["12 (12_1)", "12_[2,5-1000000%8]"]
    assert [label for label, _ in fold_arrays([j(12, "HELD", 1, "1-9")])] == ["12_[1-9]"]


def test_cancel_of_an_array_target_calls_the_array_verb():
    from schedctl.commands.jobs import array_target

    assert array_target("12") == (12, False)
    assert array_target("12_*") == (12, True) and array_target("12_[*]") == (12, True)
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="ARRAY_"):
        array_target("12_5")


class _Calls:
    """A client that records the Manager calls a command makes (Submit answers with job 12)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def submit(self, spec):
        self.calls.append(("Submit", spec))
        return 12, "/org/schedd/Schedd1/job/12"

    async def call(self, member, signature="", body=None):
        self.calls.append((member, *(body or [])))
        return []


def test_submit_array_is_one_submit_of_the_ranges(capsys, tmp_path, monkeypatch):
    from schedctl.commands.jobs import cmd_action
    from schedctl.commands.submit import cmd_submit, prepare_submit

    monkeypatch.chdir(tmp_path)
    c = _Calls()
    a = parse(["--json", "submit", "--array", "1-1000000%8", "--", "true"])
    prepare_submit(a)
    assert asyncio.run(cmd_submit(c, a)) == 0
    ((member, spec),) = c.calls
    assert member == "Submit" and spec["ArrayTasks"] == Variant("s", "1-1000000%8") and "ArrayTaskId" not in spec
    out = json.loads(capsys.readouterr().out)
    assert (out["id"], out["Tasks"], out["LastId"]) == (12, 1_000_000, 1_000_011) and "ids" not in out
    for argv, want in ((["cancel", "12_*"], ("CancelArray", 12)), (["hold", "--array", "12"], ("HoldArray", 12)),
                       (["release", "12"], ("Release", 12))):
        c.calls.clear()
        a = parse(argv)
        a.command_name = argv[0]
        assert asyncio.run(cmd_action(c, a)) == 0
        assert c.calls == [want]
    with pytest.raises(UsageError, match="--array"):
        prepare_submit(parse(["submit", "--array", "1-5,3-4", "--", "true"]))

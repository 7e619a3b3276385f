"""build_spec: the one place a D-Bus Submit a{sv} becomes a JobSpec."""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import tempfile
from pathlib import Path

import pytest
from dbus_fast import Variant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prereq import require, unavailable
from schedd.errors import AccessDenied, InvalidArgument, SchedError, Unsatisfiable
from schedd.core.model import JobSpec
from schedd.protocol import SPEC_KEYS
from schedd.core.spec import Limits, build_spec

MiB, GiB = 1 << 20, 1 << 30
ROOT = 0


def _non_root_user() -> pwd.struct_passwd:
    for pw in pwd.getpwall():
        if pw.pw_uid != 0:
            return pw
    unavailable("no non-root user in /etc/passwd")


def _unused_uid() -> int:
    uid = 3_999_999_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


USER = _non_root_user()
UNUSED_UID = _unused_uid()
KNOWN_JOBS = {1, 2, 3}


@pytest.fixture
def limits() -> Limits:
    return Limits(
        node_name="alpha",
        total_cpus=4,
        total_memory=8 * GiB,
        total_gpus=1,
        default_memory=GiB,
        min_memory=4 * MiB,
        max_argv_bytes=1 << 20,
        max_env_entries=16,
    )


def build(props: dict, limits: Limits, caller_uid: int = ROOT, **kw) -> JobSpec:
    kw.setdefault("job_known", lambda i: i in KNOWN_JOBS)
    return build_spec(props, caller_uid=caller_uid, limits=limits, **kw)


def cmd(*argv: str) -> dict:
    return {"Command": Variant("as", list(argv))}


# -- accepted ------------------------------------------------------------------------

def test_every_key_with_its_dbus_type(limits: Limits, tmp_path: Path) -> None:
    props = {
        "Command": Variant("as", ["/usr/bin/python3", "train.py", "--epochs", "3"]),
        "Name": Variant("s", "training"),
        "CPUs": Variant("u", 2),
        "Memory": Variant("t", 3 * GiB),
        "GPUs": Variant("u", 1),
        "Priority": Variant("i", -5),
        "WorkingDirectory": Variant("s", "/usr"),
        "Environment": Variant("as", ["A=1", "B=x=y", "EMPTY="]),
        "StdoutPath": Variant("s", str(tmp_path / "out.log")),
        "StderrPath": Variant("s", str(tmp_path / "err.log")),
        "RuntimeMaxUSec": Variant("t", 3_600_000_000),
        "Hold": Variant("b", True),
        "User": Variant("u", USER.pw_uid),
        "After": Variant("at", [1, 3]),
        "AfterAny": Variant("at", [1]),
        "AfterNotOk": Variant("at", [3]),
        "BeginTime": Variant("t", 1_000_000),
        "Node": Variant("s", "alpha"),
        "Requeue": Variant("b", False),
        "ArrayTaskId": Variant("u", 4),
        "ArrayMaxRunning": Variant("u", 8),
        "Container": Variant("s", "localhost/busybox:1"),
    }
    # the test covers the whole contract; ArrayTasks goes without the per-task keys (test_arrays.py)
    assert set(props) | {"ArrayTasks"} == set(SPEC_KEYS)
    spec = build(props, limits, caller_uid=ROOT)
    assert spec == JobSpec(
        command=["/usr/bin/python3", "train.py", "--epochs", "3"],
        name="training",
        cpus=2,
        memory=3 * GiB,
        gpus=1,
        priority=-5,
        working_directory="/usr",
        environment=["A=1", "B=x=y", "EMPTY="],
        stdout_path=str(tmp_path / "out.log"),
        stderr_path=str(tmp_path / "err.log"),
        runtime_max_usec=3_600_000_000,
        hold=True,
        uid=USER.pw_uid,
        gid=USER.pw_gid,
        user_name=USER.pw_name,
        after=[1, 3],
        after_any=[1],
        after_not_ok=[3],
        begin_time=1_000_000,
        node="alpha",
        requeue=False,
        array_task_id=4,
        array_max_running=8,
        container="localhost/busybox:1",
    )


def test_defaults(limits: Limits) -> None:
    spec = build(cmd("/usr/bin/sleep", "10"), limits, caller_uid=ROOT)
    root = pwd.getpwuid(0)
    assert spec.command == ["/usr/bin/sleep", "10"]
    assert spec.cpus == 1
    assert spec.memory == limits.default_memory
    assert spec.gpus == 0
    assert spec.priority == 0
    assert spec.name == "sleep"  # basename of argv[0]
    assert spec.working_directory == (root.pw_dir if os.path.isdir(root.pw_dir) else "/")
    assert spec.uid == 0 and spec.gid == root.pw_gid and spec.user_name == root.pw_name
    assert spec.environment == [] and spec.after == []
    assert spec.stdout_path == "" and spec.stderr_path == ""
    assert spec.hold is False and spec.requeue is True
    assert spec.runtime_max_usec == 0
    assert spec.node == ""


def test_name_defaults_to_argv0_when_not_a_path(limits: Limits) -> None:
    assert build(cmd("true"), limits).name == "true"


def test_name_given_empty_falls_back_to_argv0(limits: Limits) -> None:
    assert build({**cmd("/bin/echo"), "Name": Variant("s", "")}, limits).name == "echo"


def test_working_directory_defaults_to_the_callers_home(limits: Limits) -> None:
    spec = build(cmd("true"), limits, caller_uid=USER.pw_uid)
    expected = USER.pw_dir if os.path.isdir(USER.pw_dir) else "/"
    assert spec.working_directory == expected
    assert spec.uid == USER.pw_uid and spec.user_name == USER.pw_name


def test_working_directory_is_normalised(limits: Limits, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    spec = build({**cmd("true"), "WorkingDirectory": Variant("s", f"{tmp_path}//a/./")}, limits)
    assert spec.working_directory == str(tmp_path / "a")


def test_node_any_and_empty_are_accepted(limits: Limits) -> None:
    assert build({**cmd("true"), "Node": Variant("s", "any")}, limits).node == "any"
    assert build({**cmd("true"), "Node": Variant("s", "")}, limits).node == ""


def test_resources_exactly_the_node(limits: Limits) -> None:
    spec = build({**cmd("true"), "CPUs": Variant("u", 4), "Memory": Variant("t", 8 * GiB),
                  "GPUs": Variant("u", 1)}, limits)
    assert (spec.cpus, spec.memory, spec.gpus) == (4, 8 * GiB, 1)


def test_memory_exactly_the_minimum(limits: Limits) -> None:
    assert build({**cmd("true"), "Memory": Variant("t", 4 * MiB)}, limits).memory == 4 * MiB


def test_user_equal_to_caller_is_fine_for_non_root(limits: Limits) -> None:
    spec = build({**cmd("true"), "User": Variant("u", USER.pw_uid)}, limits, caller_uid=USER.pw_uid)
    assert spec.uid == USER.pw_uid


def test_user_set_by_root_runs_as_that_user(limits: Limits) -> None:
    spec = build({**cmd("id"), "User": Variant("u", USER.pw_uid)}, limits, caller_uid=ROOT)
    assert spec.uid == USER.pw_uid
    assert spec.gid == USER.pw_gid
    assert spec.user_name == USER.pw_name


def test_argument_of_131071_bytes_is_accepted(limits: Limits) -> None:
    spec = build(cmd("echo", "a" * 131071), limits)
    assert len(spec.command[1]) == 131071


def test_env_entries_up_to_the_limit(limits: Limits) -> None:
    env = [f"V{i}=x" for i in range(limits.max_env_entries)]
    assert build({**cmd("env"), "Environment": Variant("as", env)}, limits).environment == env


# -- rejected: InvalidArgument naming the key ---------------------------------------

def test_unknown_key_lists_valid_keys(limits: Limits) -> None:
    with pytest.raises(InvalidArgument) as e:
        build({**cmd("true"), "Cpus": Variant("u", 2)}, limits)
    msg = e.value.message
    assert "'Cpus'" in msg
    for key in SPEC_KEYS:
        assert key in msg
    assert e.value.dbus_name == "org.schedd.Schedd1.Error.InvalidArgument"


def test_several_unknown_keys_all_named(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown keys 'Bar', 'Foo'"):
        build({**cmd("true"), "Foo": Variant("s", ""), "Bar": Variant("s", "")}, limits)


@pytest.mark.parametrize(
    "key, value",
    [
        ("CPUs", Variant("s", "2")),
        ("CPUs", Variant("t", 2)),  # right number, wrong width
        ("Memory", Variant("s", "4G")),
        ("Memory", Variant("u", 4 * MiB)),
        ("Command", Variant("s", "sleep 10")),
        ("Priority", Variant("u", 3)),
        ("Hold", Variant("u", 1)),
        ("After", Variant("au", [1])),
        ("Environment", Variant("s", "A=1")),
        ("User", Variant("t", 0)),
    ],
)
def test_wrong_dbus_type(limits: Limits, key: str, value: Variant) -> None:
    props = {**cmd("true"), key: value}
    with pytest.raises(InvalidArgument, match=rf"^{key}: must have D-Bus type '{SPEC_KEYS[key]}'") as e:
        build(props, limits)
    assert f"got '{value.signature}'" in e.value.message


def test_plain_value_without_variant_is_rejected(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^CPUs: must have D-Bus type 'u'"):
        build({**cmd("true"), "CPUs": 2}, limits)


def test_spec_not_a_dict(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="a{sv}"):
        build([("Command", Variant("as", ["true"]))], limits)  # type: ignore[arg-type]


def test_missing_command(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Command: required"):
        build({"Name": Variant("s", "x")}, limits)


def test_empty_command(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Command:"):
        build(cmd(), limits)


def test_empty_argv0(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Command: .*first element"):
        build(cmd("", "x"), limits)


def test_nul_in_argument(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Command: argument 1 contains a NUL"):
        build(cmd("echo", "a\0b"), limits)


def test_single_argument_over_131071_bytes(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match=r"^Command: argument 1 is 131073 bytes.*131071"):
        build(cmd("echo", "a" * 131072), limits)


def test_single_argument_limit_counts_utf8_bytes(limits: Limits) -> None:
    # 65536 two-byte characters = 131072 bytes: over the limit though only 65536 characters.
    with pytest.raises(InvalidArgument, match="^Command: argument 1"):
        build(cmd("echo", "é" * 65536), limits)


def test_argv_larger_than_max_argv_bytes(limits: Limits) -> None:
    small = dataclasses.replace(limits, max_argv_bytes=100)
    # Each argument is 10 bytes with its NUL: 10 of them are exactly 100 bytes.
    assert build(cmd(*["123456789"] * 10), small).command == ["123456789"] * 10
    with pytest.raises(InvalidArgument, match=r"Command and Environment together are 110 bytes.*at most 100"):
        build(cmd(*["123456789"] * 11), small)


def test_environment_counts_toward_max_argv_bytes(limits: Limits) -> None:
    small = dataclasses.replace(limits, max_argv_bytes=100)
    props = {**cmd(*["123456789"] * 9), "Environment": Variant("as", ["A=1234567", "B=1"])}
    with pytest.raises(InvalidArgument, match="Command and Environment together are 104 bytes"):
        build(props, small)


def test_cpus_zero(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^CPUs: must be at least 1"):
        build({**cmd("true"), "CPUs": Variant("u", 0)}, limits)


def test_memory_below_min(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match=r"^Memory: 4194303 bytes is below the minimum of 4M"):
        build({**cmd("true"), "Memory": Variant("t", 4 * MiB - 1)}, limits)


def test_memory_in_gigabytes_by_mistake(limits: Limits) -> None:
    # A person writing Memory=4 meaning 4G is told the unit.
    with pytest.raises(InvalidArgument, match=r"^Memory: .*in bytes"):
        build({**cmd("true"), "Memory": Variant("t", 4)}, limits)


def test_relative_working_directory(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match=r"^WorkingDirectory: 'work/dir' is relative"):
        build({**cmd("true"), "WorkingDirectory": Variant("s", "work/dir")}, limits)


def test_empty_working_directory(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^WorkingDirectory: must not be empty"):
        build({**cmd("true"), "WorkingDirectory": Variant("s", "")}, limits)


def test_nonexistent_working_directory(limits: Limits, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InvalidArgument, match=rf"^WorkingDirectory: {missing}: No such file or directory"):
        build({**cmd("true"), "WorkingDirectory": Variant("s", str(missing))}, limits)


def test_working_directory_that_is_a_file(limits: Limits, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidArgument, match=rf"^WorkingDirectory: {f} is not a directory"):
        build({**cmd("true"), "WorkingDirectory": Variant("s", str(f))}, limits)


def test_working_directory_too_long(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^WorkingDirectory: path is longer than PATH_MAX"):
        build({**cmd("true"), "WorkingDirectory": Variant("s", "/" + "a" * 4095)}, limits)


@pytest.mark.parametrize("entry", ["NOEQUALS", "=value", ""])
def test_environment_entry_without_name_equals(limits: Limits, entry: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^Environment: entry 1 .*NAME=VALUE"):
        build({**cmd("env"), "Environment": Variant("as", ["OK=1", entry])}, limits)


def test_environment_entry_with_nul(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Environment: entry 0 contains a NUL"):
        build({**cmd("env"), "Environment": Variant("as", ["A=x\0y"])}, limits)


def test_too_many_env_entries(limits: Limits) -> None:
    env = [f"V{i}=x" for i in range(limits.max_env_entries + 1)]
    with pytest.raises(InvalidArgument, match=r"^Environment: 17 entries; .*at most 16"):
        build({**cmd("env"), "Environment": Variant("as", env)}, limits)


def test_env_entry_over_the_kernel_limit(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match=r"^Environment: entry 0 \(BIG\) is 131073 bytes"):
        build({**cmd("env"), "Environment": Variant("as", ["BIG=" + "x" * 131068])}, limits)


@pytest.mark.parametrize("key", ["StdoutPath", "StderrPath"])
def test_relative_output_path(limits: Limits, key: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{key}: 'out.log' is relative"):
        build({**cmd("true"), key: Variant("s", "out.log")}, limits)


def test_output_path_normalised(limits: Limits) -> None:
    spec = build({**cmd("true"), "StdoutPath": Variant("s", "/tmp/./x//out.log")}, limits)
    assert spec.stdout_path == "/tmp/x/out.log"


def test_name_too_long(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Name: is 257 characters"):
        build({**cmd("true"), "Name": Variant("s", "n" * 257)}, limits)


def test_name_with_control_characters(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^Name: must not contain control characters"):
        build({**cmd("true"), "Name": Variant("s", "a\nb")}, limits)


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x01", "\x1b", "\x1f", "\x7f"])
@pytest.mark.parametrize("key", ["WorkingDirectory", "StdoutPath", "StderrPath", "Name", "Command"])
def test_control_characters_refused(limits: Limits, key: str, char: str) -> None:
    """Issue 11: a newline in an output path once forged a job's result through the gate's status file."""
    text = f"/tmp/x{char}status=0"
    props = cmd(text, "arg") if key == "Command" else {**cmd("true"), key: Variant("s", text)}
    with pytest.raises(InvalidArgument, match=rf"^{key}: .*must not contain control characters \(found "
                                              rf"{re.escape(repr(char))} at position 6\)") as e:
        build(props, limits)
    assert e.value.dbus_name == "org.schedd.Schedd1.Error.InvalidArgument"


def test_the_forged_output_path_of_issue_11(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^StdoutPath: must not contain control characters"):
        build({**cmd("false"), "WorkingDirectory": Variant("s", "/"),
               "StdoutPath": Variant("s", "/nonexistent-dir/x\nstatus=0\nend=1\n")}, limits, caller_uid=65534)


def test_newlines_stay_allowed_in_arguments_and_environment(limits: Limits) -> None:
    spec = build({**cmd("sh", "-c", "echo a\necho b"), "Environment": Variant("as", ["MSG=line1\nline2\t\x7f"])},
                 limits)
    assert spec.command[2] == "echo a\necho b" and spec.environment == ["MSG=line1\nline2\t\x7f"]


def test_nul_is_still_reported_as_nul(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^StdoutPath: must not contain NUL bytes"):
        build({**cmd("true"), "StdoutPath": Variant("s", "/tmp/a\0b")}, limits)
    with pytest.raises(InvalidArgument, match="^Command: argument 0 contains a NUL"):
        build(cmd("a\0b"), limits)


def test_user_set_by_non_root_is_access_denied(limits: Limits) -> None:
    with pytest.raises(AccessDenied, match="^User: only root") as e:
        build({**cmd("true"), "User": Variant("u", 0)}, limits, caller_uid=USER.pw_uid)
    assert e.value.dbus_name == "org.schedd.Schedd1.Error.AccessDenied"


def test_user_that_does_not_exist(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match=rf"^User: uid {UNUSED_UID} does not exist"):
        build({**cmd("true"), "User": Variant("u", UNUSED_UID)}, limits, caller_uid=ROOT)


def test_caller_without_passwd_entry(limits: Limits) -> None:
    with pytest.raises(AccessDenied, match=rf"uid {UNUSED_UID} has no passwd entry"):
        build(cmd("true"), limits, caller_uid=UNUSED_UID)


def test_per_user_daemon_runs_only_its_own_uid(limits: Limits) -> None:
    with pytest.raises(AccessDenied, match=f"per-user daemon of uid {USER.pw_uid}"):
        build(cmd("true"), limits, caller_uid=ROOT, daemon_uid=USER.pw_uid)
    assert build(cmd("true"), limits, caller_uid=USER.pw_uid, daemon_uid=USER.pw_uid).uid == USER.pw_uid


def test_too_many_dependencies_are_refused_before_any_is_looked_up(limits: Limits) -> None:
    looked: list[int] = []
    props = {**cmd("true"), "After": Variant("at", [1] * 3000), "AfterAny": Variant("at", [1] * 1097)}
    with pytest.raises(InvalidArgument, match="^After: at most 4096 dependencies per job"):
        build_spec(props, caller_uid=os.getuid(), limits=limits, job_known=lambda j: looked.append(j) or True)
    assert looked == []
    props = {**cmd("true"), "AfterNotOk": Variant("at", [1] * 5000)}  # the error names the key that was sent
    with pytest.raises(InvalidArgument, match="^AfterNotOk: at most 4096 dependencies per job"):
        build_spec(props, caller_uid=os.getuid(), limits=limits, job_known=lambda j: looked.append(j) or True)
    assert looked == []


def test_after_unknown_job(limits: Limits) -> None:
    with pytest.raises(InvalidArgument, match="^After: job 99 does not exist"):
        build({**cmd("true"), "After": Variant("at", [1, 99])}, limits)


# -- rejected: Unsatisfiable -----------------------------------------------------------

def test_node_naming_another_node(limits: Limits) -> None:
    with pytest.raises(Unsatisfiable, match=r"^Node: no node named 'beta'") as e:
        build({**cmd("true"), "Node": Variant("s", "beta")}, limits)
    assert e.value.dbus_name == "org.schedd.Schedd1.Error.Unsatisfiable"


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("CPUs", Variant("u", 5), "asks for 5 CPUs but the largest node offers 4"),
        ("Memory", Variant("t", 8 * GiB + 1), "but the largest node offers 8G"),
        ("GPUs", Variant("u", 2), "asks for 2 GPUs but the largest node offers 1"),
    ],
)
def test_more_than_the_node(limits: Limits, key: str, value: Variant, words: str) -> None:
    with pytest.raises(Unsatisfiable, match=rf"^{key}: ") as e:
        build({**cmd("true"), key: value}, limits)
    assert words in e.value.message


def test_type_errors_come_before_unsatisfiable(limits: Limits) -> None:
    props = {**cmd("true"), "CPUs": Variant("u", 1000), "Node": Variant("s", "beta"), "Priority": Variant("s", "high")}
    with pytest.raises(InvalidArgument, match="^Priority: must have D-Bus type 'i'"):
        build(props, limits)


def test_value_errors_come_before_unsatisfiable(limits: Limits) -> None:
    props = {**cmd("true"), "GPUs": Variant("u", 9), "StdoutPath": Variant("s", "rel")}
    with pytest.raises(InvalidArgument, match="^StdoutPath:"):
        build(props, limits)


def test_every_error_is_a_sched_error() -> None:
    for cls in (InvalidArgument, AccessDenied, Unsatisfiable):
        assert issubclass(cls, SchedError)


# -- property: never anything but a JobSpec obeying the rules, or a SchedError -----------

_SIG_VALUES = {
    "s": st.text(max_size=20),
    "u": st.integers(0, 2**32 - 1),
    "t": st.integers(0, 2**64 - 1),
    "i": st.integers(-(2**31), 2**31 - 1),
    "b": st.booleans(),
    "as": st.lists(st.text(max_size=12), max_size=4),
    "at": st.lists(st.integers(0, 2**64 - 1), max_size=3),
}


def _variant(sig: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return values.map(lambda v: Variant(sig, v))


def _any_variant() -> st.SearchStrategy:
    return st.sampled_from(sorted(_SIG_VALUES)).flatmap(lambda sig: _variant(sig, _SIG_VALUES[sig]))


_PATHS = ["/", "/tmp", "/etc/passwd", "/nonexistent/dir", "relative/dir", "", ".", "/tmp/../etc", "/a\0b",
          "/tmp\n", "/tmp/x\nstatus=0\n", "/tmp/\x7f"]
_GOOD = {
    "Command": _variant("as", st.one_of(
        st.lists(st.sampled_from(["/bin/true", "echo", "a b", "-x", "é"]), min_size=1, max_size=4),
        st.lists(st.sampled_from(["/bin/true", "echo", "", "a b", "-x", "é", "a\0", "a\nb", "\x1b[1m"]), max_size=4),
        _SIG_VALUES["as"])),
    "Name": _variant("s", st.one_of(st.just("job"), st.sampled_from(["", "x" * 257, "a\tb"]), _SIG_VALUES["s"])),
    "CPUs": _variant("u", st.one_of(st.integers(1, 4), st.integers(0, 6), _SIG_VALUES["u"])),
    "Memory": _variant("t", st.one_of(st.integers(4 * MiB, 8 * GiB),
                                      st.sampled_from([0, 4 * MiB - 1, 4 * MiB, GiB, 8 * GiB, 8 * GiB + 1]),
                                      _SIG_VALUES["t"])),
    "GPUs": _variant("u", st.one_of(st.integers(0, 1), st.integers(0, 3), _SIG_VALUES["u"])),
    "Priority": _variant("i", _SIG_VALUES["i"]),
    "WorkingDirectory": _variant("s", st.one_of(st.sampled_from(["/", "/tmp"]), st.sampled_from(_PATHS),
                                                _SIG_VALUES["s"])),
    "Environment": _variant("as", st.one_of(
        st.lists(st.sampled_from(["A=1", "B=", "C=a=b", "D=é"]), max_size=5),
        st.lists(st.one_of(st.sampled_from(["A=1", "=x", "NOEQ", "", "B=", "C=a=b"]), st.text(max_size=8)),
                 max_size=20))),
    "StdoutPath": _variant("s", st.one_of(st.just("/tmp/out.log"), st.sampled_from(_PATHS), _SIG_VALUES["s"])),
    "StderrPath": _variant("s", st.one_of(st.just("/tmp/err.log"), st.sampled_from(_PATHS), _SIG_VALUES["s"])),
    "RuntimeMaxUSec": _variant("t", _SIG_VALUES["t"]),
    "Hold": _variant("b", st.booleans()),
    "User": _variant("u", st.sampled_from([0, USER.pw_uid, UNUSED_UID, 65534])),
    "After": _variant("at", st.one_of(st.lists(st.sampled_from(sorted(KNOWN_JOBS)), max_size=3),
                                      st.lists(st.integers(0, 5), max_size=3))),
    "AfterAny": _variant("at", st.one_of(st.lists(st.sampled_from(sorted(KNOWN_JOBS)), max_size=3),
                                         st.lists(st.integers(0, 5), max_size=3))),
    "AfterNotOk": _variant("at", st.lists(st.integers(0, 5), max_size=3)),
    "BeginTime": _variant("t", _SIG_VALUES["t"]),
    "Node": _variant("s", st.one_of(st.sampled_from(["", "any", "alpha"]), st.sampled_from(["beta"]),
                                    _SIG_VALUES["s"])),
    "Requeue": _variant("b", st.booleans()),
    "ArrayTaskId": _variant("u", st.one_of(st.integers(0, 1000), _SIG_VALUES["u"])),
    "ArrayMaxRunning": _variant("u", st.one_of(st.integers(0, 8), _SIG_VALUES["u"])),
    "ArrayTasks": _variant("s", st.one_of(st.sampled_from(["1-10", "0,3,5-7%2", "0-15:4", "1-2000000", "x", "5-3", ""]),
                                          _SIG_VALUES["s"])),
    "Container": _variant("s", st.one_of(st.sampled_from(["", "debian:12", "localhost/a:1", "-x", "a b", "../x"]),
                                         _SIG_VALUES["s"])),
}
assert set(_GOOD) == set(SPEC_KEYS)

_WELL_TYPED = st.fixed_dictionaries(
    {"Command": _GOOD["Command"]}, optional={k: v for k, v in _GOOD.items() if k != "Command"}
)


@st.composite
def _mistyped(draw: st.DrawFn) -> dict:
    """A well-typed spec with one to three values replaced by any D-Bus type (or no Variant at all)."""
    props = dict(draw(_WELL_TYPED))
    for key in draw(st.lists(st.sampled_from(sorted(SPEC_KEYS)), min_size=1, max_size=3, unique=True)):
        props[key] = draw(st.one_of(_any_variant(), st.integers(), st.none(), st.text(max_size=5)))
    return props


# Mostly well-typed specs (so values and resources get checked), some mistyped, some random.
_PROPS = st.one_of(
    _WELL_TYPED,
    _WELL_TYPED,
    _WELL_TYPED,
    _mistyped(),
    st.dictionaries(st.sampled_from(sorted(SPEC_KEYS) + ["Bogus"]), _any_variant(), max_size=6),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(props=_PROPS, caller=st.sampled_from([0, USER.pw_uid]))
def test_build_spec_property(props: dict, caller: int) -> None:
    lim = Limits(node_name="alpha", total_cpus=4, total_memory=8 * GiB, total_gpus=1, default_memory=GiB,
                 min_memory=4 * MiB, max_argv_bytes=1 << 20, max_env_entries=16)
    try:
        spec = build_spec(props, caller_uid=caller, limits=lim, job_known=lambda i: i in KNOWN_JOBS)
    except SchedError as e:
        assert e.message  # a message a person can act on
        assert type(e) is not SchedError  # always one of the contract's specific errors
        return
    assert isinstance(spec, JobSpec)
    assert spec.command and spec.command[0]
    assert all("\0" not in a for a in spec.command)
    assert 1 <= spec.cpus <= lim.total_cpus
    assert lim.min_memory <= spec.memory <= lim.total_memory
    assert 0 <= spec.gpus <= lim.total_gpus
    assert os.path.isabs(spec.working_directory) and os.path.isdir(spec.working_directory)
    assert len(spec.environment) <= lim.max_env_entries
    for entry in spec.environment:
        name, sep, _ = entry.partition("=")
        assert sep and name and "\0" not in entry
    for path in (spec.stdout_path, spec.stderr_path):
        assert path == "" or os.path.isabs(path)
    for text in (spec.working_directory, spec.stdout_path, spec.stderr_path, spec.name, spec.command[0]):
        assert not re.search(r"[\x00-\x1f\x7f]", text)
    assert spec.node in ("", "any", "alpha")
    assert set(spec.after) <= KNOWN_JOBS
    assert 0 < len(spec.name) <= 256
    if caller != 0:
        assert spec.uid == caller
    assert spec.user_name == pwd.getpwuid(spec.uid).pw_name
    # Every key given with the right type went into the spec.
    if "CPUs" in props:
        assert spec.cpus == props["CPUs"].value
    if "Memory" in props:
        assert spec.memory == props["Memory"].value


def test_runtime_max_infinity_and_overflow(limits: Limits) -> None:
    assert build({**cmd("true"), "RuntimeMaxUSec": Variant("t", 2**64 - 1)}, limits).runtime_max_usec == 0
    with pytest.raises(InvalidArgument, match="^RuntimeMaxUSec: .*beyond any useful limit"):
        build({**cmd("true"), "RuntimeMaxUSec": Variant("t", 2**63)}, limits)



def test_time_limit_default_and_maximum() -> None:
    lim = Limits(node_name="alpha", total_cpus=4, total_memory=8 * GiB, total_gpus=1, default_memory=GiB,
                 min_memory=4 * MiB, max_argv_bytes=1 << 20, max_env_entries=16,
                 default_time_usec=60_000_000, max_time_usec=3_600_000_000)
    assert build(cmd("true"), lim).runtime_max_usec == 60_000_000
    assert build({**cmd("true"), "RuntimeMaxUSec": Variant("t", 2**64 - 1)}, lim).runtime_max_usec == 60_000_000
    assert build({**cmd("true"), "RuntimeMaxUSec": Variant("t", 3_600_000_000)}, lim).runtime_max_usec == 3_600_000_000
    with pytest.raises(InvalidArgument, match="^RuntimeMaxUSec: 1h 1s is longer than this daemon's maximum time limit of 1h"):
        build({**cmd("true"), "RuntimeMaxUSec": Variant("t", 3_601_000_000)}, lim)
    no_default = Limits(**{**lim.__dict__, "default_time_usec": 0})
    assert build(cmd("true"), no_default).runtime_max_usec == 3_600_000_000  # the maximum applies


def test_array_keys(limits: Limits) -> None:
    spec = build({**cmd("true"), "ArrayTaskId": Variant("u", 7), "ArrayMaxRunning": Variant("u", 2)}, limits)
    assert (spec.array_task_id, spec.array_max_running) == (7, 2)
    assert build(cmd("true"), limits).array_task_id is None
    with pytest.raises(InvalidArgument, match="^ArrayMaxRunning: only array tasks"):
        build({**cmd("true"), "ArrayMaxRunning": Variant("u", 2)}, limits)


def test_working_directory_is_looked_at_with_the_users_rights(limits: Limits) -> None:
    """A root daemon's stat must not tell a user what lies inside a directory they cannot enter."""
    require(None if os.geteuid() == 0 else "needs root: checks what a root daemon may look at for a user")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as top:  # /tmp/pytest-of-root is 0700
        os.chmod(top, 0o755)
        _check_locked(limits, Path(top) / "locked")


def _check_locked(limits: Limits, locked: Path) -> None:
    (locked / "inside").mkdir(parents=True)
    locked.chmod(0o700)
    errors = []
    for d in (locked / "inside", locked / "missing"):
        with pytest.raises(InvalidArgument) as e:
            build({"Command": Variant("as", ["true"]), "WorkingDirectory": Variant("s", str(d)),
                   "User": Variant("u", USER.pw_uid)}, limits, caller_uid=ROOT)
        errors.append(str(e.value).replace(d.name, "X"))
    assert errors[0] == errors[1]
    assert f"cannot enter {locked}" in errors[0]
    assert build({"Command": Variant("as", ["true"]), "WorkingDirectory": Variant("s", str(locked / "inside"))},
                 limits, caller_uid=ROOT).working_directory == str(locked / "inside")

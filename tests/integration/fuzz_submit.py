"""Hostile Submit specs over the real bus, run inside the sandbox as an ordinary user; prints a JSON summary.

Two parts, both judged by what a user would check afterwards:

1. Random specs (hypothesis): wrong types, unknown and real-looking keys (MemoryMax, ExecStart,
   cpus), control characters (newline, CR, ESC, DEL, forged "status=0\\nend=1" payloads), huge
   values (u64 max, 2^63, i32 extremes, 1 MiB strings), device, /proc and symlink paths. Every call
   ends in an accepted job whose properties obey the rules, or a documented schedd error with a
   message that names what is wrong. A spec with a control character in WorkingDirectory,
   StdoutPath, StderrPath, Name or Command[0] is never accepted. Accepted jobs are cancelled at
   once and must end CANCELLED (or, if they ended first, honestly).
2. A catalogue of hostile specs whose outcome is known: each is refused with the named error, or
   runs to the end it deserves (never COMPLETED with exit 0 for a job whose output could not be
   opened or whose program cannot run), and ReadOutput of it never hands over a file its user
   could not read.

A broken rule is recorded (not raised) so one run reports every kind; the summary's "violations"
must be empty. Specs that cannot even be marshalled (NUL bytes: D-Bus forbids them) are counted apart.
Usage: fuzz_submit.py N [seed]
"""

import asyncio
import json
import os
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from dbus_fast import Variant
from dbus_fast.errors import DBusError, InvalidMessageError
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from schedd import bus as dbus
from schedd.protocol import SPEC_KEYS

SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")
PREFIX = "org.schedd.Schedd1.Error."
DOCUMENTED = ("InvalidArgument", "NotFound", "AccessDenied", "Unsatisfiable", "InvalidState", "NoSpace")
ERRORS = {PREFIX + n for n in DOCUMENTED}
U32, U64, I32 = 2**32 - 1, 2**64 - 1, 2**31
MiB = 1 << 20
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
CONTROLLED = ("WorkingDirectory", "StdoutPath", "StderrPath", "Name")  # and Command[0]: no C0 or DEL in these

HOME = os.path.expanduser("~")
WORK = f"{HOME}/fuzz-{os.getpid()}"  # this run's files: dirs and links a user could make
ETC_LINK = f"{WORK}/etc"  # -> /etc
SHADOW_LINK = f"{WORK}/shadow"  # -> /etc/shadow
NL_DIR = f"{WORK}/dir\nstatus=0"  # a real directory whose name holds a newline
FORGED = "\nstatus=0\nend=1\n"

CONTROL = "\n\r\t\x1b\x7f\x01\x08\x0b\x0c\x1f"
HOSTILE_WORDS = [
    "", "/", "/tmp", "tmp", "/nonexistent/dir", "/etc/shadow", "../..", "/root", "/var/tmp", "NAME=value", "=x",
    "A=", "true", "/bin/true", "sleep", "%j", "/run/x-%j.log", "/dev/null", "/dev/ptmx", "/dev/tty", "/dev/full",
    "/proc/self/environ", "/proc/self/fd/1", "/proc/self/cwd", "/proc/1/root/etc/shadow", ETC_LINK, SHADOW_LINK,
    f"{ETC_LINK}/passwd", f"/nonexistent-dir/x{FORGED}", "/var/tmp/x\rstatus=0", "\x1b[2J\x1b[31mred", "a\x7f",
    "LD_PRELOAD=/nonexistent.so", "PATH=", "HOME=/root", "SCHEDD_JOB_ID=1", "AWS_SECRET_ACCESS_KEY=AKIAIOSFODNN7",
    f"X={FORGED}",
]
CHARS = st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))
words = st.sampled_from(HOSTILE_WORDS)
controlled = st.builds(lambda a, c, b: a + c + b, words, st.sampled_from(CONTROL), words)
text = st.one_of(  # one branch in eight is a long string, up to 1 MiB
    st.text(alphabet=CHARS, max_size=40), words, words, controlled,
    st.text(alphabet=CHARS, max_size=40), words, controlled,
    st.integers(1 << 10, 1 << 20).map(lambda n: "x" * n),
)
VALUES = {
    "s": text,
    "u": st.one_of(st.integers(0, U32), st.sampled_from([0, 1, 2, I32 - 1, I32, U32])),
    "t": st.one_of(st.integers(0, U64), st.sampled_from([0, 1, 4 << 20, 1 << 30, 1 << 62, 2**63 - 1, 2**63, U64])),
    "i": st.one_of(st.integers(-I32, I32 - 1), st.sampled_from([-I32, -1, 0, 1, I32 - 1])),
    "b": st.booleans(),
    "as": st.one_of(st.lists(text, max_size=8),
                    st.integers(0, 100_000).map(lambda n: [f"V{i}=x" for i in range(n)])),  # up to 100k entries
    "at": st.lists(st.one_of(st.integers(0, U64), st.sampled_from([2**63 - 1, 2**63, U64])), max_size=5),
    "d": st.floats(allow_nan=False),
    "ay": st.binary(max_size=16),
}
SIGS = list(VALUES)
LOOKALIKE_KEYS = ["Bogus", "cpus", "command", "MemoryMax", "CPUQuota", "ExecStart", "StandardOutput", "Nice",
                  "Slice", "Delegate", "WorkingDir", "Environment ", "User\n", "Command\x1b"]


@st.composite
def specs(draw):
    spec = {}
    keys = draw(st.lists(st.sampled_from(list(SPEC_KEYS) + LOOKALIKE_KEYS), max_size=8, unique=True))
    if draw(st.booleans()):
        keys.append("Command")
    for key in keys:
        right = SPEC_KEYS.get(key, "s")
        sig = right if draw(st.integers(0, 4)) else draw(st.sampled_from(SIGS))  # mostly the right type
        value = draw(VALUES[sig])
        if key == "Command" and sig == "as" and draw(st.booleans()):
            head = draw(st.one_of(st.sampled_from(["true", "/bin/true", "sh", "", "/no/such", "/dev/null", "/etc",
                                                   f"{ETC_LINK}/passwd", f"/bin/true{FORGED}", "tr\x1bue"]),
                                  controlled))
            value = [head, *value[:3]]
        spec[key] = (sig, value)
    if spec and draw(st.integers(0, 19)) == 0:  # one spec in twenty carries a NUL byte somewhere
        key = draw(st.sampled_from(sorted(spec)))
        spec[key] = ("s", "a\0b")
    return spec


def has_control(s: str) -> bool:
    return any(ord(c) < 32 or c == "\x7f" for c in s)


def controlled_key(spec: dict) -> str | None:
    """The key whose well-typed value carries a control character where none may be, if any."""
    for key in CONTROLLED:
        sig, value = spec.get(key, (None, None))
        if sig == "s" and isinstance(value, str) and has_control(value):
            return key
    sig, value = spec.get("Command", (None, None))
    if sig == "as" and value and isinstance(value[0], str) and has_control(value[0]):
        return "Command"
    return None


class Bus:
    """One connection, used from hypothesis's synchronous test through a loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.bus = self.run(dbus.connect(dbus.bus_address(False)))

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, member, sig="", body=None, timeout: float = 30):
        """The reply body; TimeoutError when none comes in time (a stuck job, a stalled daemon)."""
        return self.run(dbus.call(self.bus, *SCHEDD, member, sig, body), timeout)

    def job(self, jid: int) -> dict:
        (job,) = self.call("GetJob", "t", [jid])
        return {k: x.value for k, x in job.items()}

    def wait(self, jid: int, timeout: float = 30) -> dict:
        """The job once it is in a terminal state, with a deadline (then as it is)."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(jid)
            if j["State"] in TERMINAL or time.monotonic() > deadline:
                return j
            time.sleep(0.05)


class Report:
    def __init__(self) -> None:
        self.outcomes: Counter = Counter()
        self.violations: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.cases: dict[str, str] = {}  # what became of each catalogue case, for the failure message

    def violation(self, rule: str, detail) -> None:
        self.violations[rule] += 1
        self.examples.setdefault(rule, repr(detail)[:600])

    def check_error(self, e: DBusError, what) -> bool:
        """A documented error with a sentence; False (and a violation) otherwise."""
        if e.type not in ERRORS:
            self.violation("only documented errors", (e.type, e.text, what))
            return False
        if len(e.text or "") <= 10:
            self.violation("errors carry a sentence", (e.type, e.text, what))
        return True


def short(spec: dict) -> dict:
    return {k: (sig, v if not isinstance(v, (str, list)) or len(v) < 80 else f"<{len(v)} long>")
            for k, (sig, v) in spec.items()}


def check_job(rep: Report, v: dict, spec: dict, uid: int) -> None:
    """An accepted job's properties obey the rules."""
    bad = []
    if not (v["Command"] and v["Command"][0]):
        bad.append("Command")
    if not (v["CPUs"] >= 1 and 4 << 20 <= v["Memory"]):
        bad.append("CPUs/Memory")
    if not (v["WorkingDirectory"].startswith("/") and v["StdoutPath"].startswith("/")):
        bad.append("paths")
    want_user = spec.get("User", (None, None))
    if v["User"] != (want_user[1] if uid == 0 and want_user[0] == "u" else uid):  # only root may name a User
        bad.append("User")
    for key, (sig, value) in spec.items():
        if key in ("CPUs", "Memory", "GPUs") and sig == SPEC_KEYS[key] and v[key] != value:
            bad.append(key)
        if key == "Priority" and sig == "i" and v[key] != value and not (uid != 0 and v[key] < value):
            bad.append(key)  # an ordinary user's priority may be capped ([jobs] max_user_priority), never raised
    env = spec.get("Environment", ("as", []))
    if env[0] == "as" and not all("=" in e and not e.startswith("=") for e in env[1]):
        bad.append("Environment")
    if bad:
        rep.violation("accepted jobs obey the rules", (bad, short(spec)))


def random_part(b: Bus, rep: Report, n: int, seed_value: int) -> None:
    uid = os.getuid()
    cancelled: list[tuple[int, bool, dict]] = []

    @seed(seed_value)
    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(specs())
    def fuzz(spec):
        try:
            one(spec)
        except Exception as e:  # noqa: BLE001 - recorded, not raised: hypothesis would replay it for minutes
            rep.violation("the client meets no surprise", (type(e).__name__, str(e)[:200], short(spec)))

    def one(spec):
        try:
            body = {k: Variant(sig, value) for k, (sig, value) in spec.items()}
        except Exception:  # noqa: BLE001 - values that do not fit their signature cannot be built at all
            rep.outcomes["unbuildable"] += 1
            return
        try:
            ((jid, _),) = b.call("Submit", "a{sv}", [body])
        except InvalidMessageError:
            rep.outcomes["refused by the bus library (NUL)"] += 1
            return
        except TimeoutError:
            rep.violation("Submit answers", short(spec))
            return
        except DBusError as e:
            if rep.check_error(e, short(spec)):
                if not (e.type.endswith(("AccessDenied", "NoSpace")) or
                        any(k in e.text for k in list(SPEC_KEYS) + ["key", "spec", "queues"])):
                    rep.violation("errors name what is wrong", (e.text, short(spec)))
            rep.outcomes[e.type.rsplit(".", 1)[1]] += 1
            return
        rep.outcomes["accepted"] += 1
        key = controlled_key(spec)
        if key is not None:
            rep.violation(f"control characters in {key} are refused", short(spec))
        check_job(rep, b.job(jid), spec, uid)
        try:
            b.call("Cancel", "t", [jid], timeout=15)
            cancelled.append((jid, True, spec))
        except TimeoutError:  # Cancel returns once the job is gone: this one never goes
            rep.violation("Cancel of a live job returns (the job is not stuck)", (jid, short(spec)))
        except DBusError as e:
            if not e.type.endswith("InvalidState"):  # it may already have ended
                rep.violation("Cancel of one's own live job works", (e.type, e.text))
            cancelled.append((jid, False, spec))

    fuzz()
    for jid, by_us, spec in cancelled:
        j = b.wait(jid)
        if j["State"] not in TERMINAL:
            rep.violation("a cancelled job ends", (jid, j["State"]))
        elif by_us and j["State"] != "CANCELLED":
            rep.violation("a job cancelled while live ends CANCELLED", (jid, j["State"], j["Reason"]))
        elif j["State"] == "COMPLETED" and (j["ExitCode"] != 0 or controlled_key(spec) or
                                            j["Command"][0] in ("/no/such", "/dev/null", "/etc", "")):
            rep.violation("COMPLETED only for a job that ran and succeeded", (jid, j["ExitCode"], short(spec)))


# -- the catalogue ----------------------------------------------------------------------------------

@dataclass
class Case:
    """One hostile spec and what may come of it: refused with one of `errors` (and `word` in the
    message), or accepted and ending in one of `ends` (state or state/reason)."""

    name: str
    spec: dict
    errors: tuple[str, ...] = ()
    word: str = ""
    ends: tuple[str, ...] = ()
    never_reads: tuple[str, ...] = ("root:",)  # ReadOutput must never hand over these (/etc/passwd, shadow)
    cannot_run: bool = False  # its output cannot be opened or its program run: COMPLETED would be forged
    extra: dict = field(default_factory=dict)


def cmd(*argv: str) -> dict:
    return {"Command": ("as", list(argv))}


def refused(name: str, spec: dict, word: str, error: str = "InvalidArgument", cannot_run: bool = False) -> Case:
    return Case(name, spec, errors=(error,), word=word, cannot_run=cannot_run)


def catalogue() -> list[Case]:
    fail_ = ("FAILED",)
    c = [
        # Control characters where the gate or a log line would carry them: refused, naming the key.
        refused("forged result in StdoutPath", {**cmd("false"), "WorkingDirectory": ("s", "/"),
                                                "StdoutPath": ("s", f"/nonexistent-dir/x{FORGED}")}, "StdoutPath",
                cannot_run=True),
        refused("CR in StderrPath", {**cmd("true"), "StderrPath": ("s", f"{WORK}/e\rstatus=0")}, "StderrPath"),
        refused("DEL in StdoutPath", {**cmd("true"), "StdoutPath": ("s", f"{WORK}/o\x7f")}, "StdoutPath"),
        refused("tab in StdoutPath", {**cmd("true"), "StdoutPath": ("s", f"{WORK}/o\tx")}, "StdoutPath"),
        refused("newline in a real WorkingDirectory", {**cmd("true"), "WorkingDirectory": ("s", NL_DIR)},
                "WorkingDirectory"),
        refused("ESC in Name", {**cmd("true"), "Name": ("s", "job\x1b[31m")}, "Name"),
        refused("DEL in Name", {**cmd("true"), "Name": ("s", "a\x7f")}, "Name"),
        refused("forged result in Command[0]", {**cmd(f"/bin/true{FORGED}"), "Name": ("s", "forged")}, "Command",
                cannot_run=True),
        refused("ESC in Command[0]", {**cmd("tr\x1bue"), "Name": ("s", "esc")}, "Command"),
        # Forged payloads where newlines are legitimate (arguments, environment, output): the job's
        # own exit status decides.
        Case("forged status lines in the output", cmd("sh", "-c", "printf 'status=0\\nend=1\\n'; "
                                                                "printf 'error=x\\nstatus=0\\nend=1\\n' >&2; exit 7"),
             ends=("FAILED/exit-code",), extra={"ExitCode": 7}),
        Case("forged status lines in the environment", {**cmd("false"), "Environment": ("as", [f"X={FORGED}",
                                                                                             "status=0", "end=1"])},
             ends=("FAILED/exit-code",), extra={"ExitCode": 1}),
        Case("forged status lines in an argument", cmd("false", FORGED), ends=("FAILED/exit-code",),
             extra={"ExitCode": 1}),
        # Output that cannot be opened as the user: the job never runs, so never COMPLETED.
        Case("output in a missing directory", {**cmd("true"), "StdoutPath": ("s", "/nonexistent-dir/x")}, ends=fail_),
        Case("output over /etc/shadow", {**cmd("true"), "StdoutPath": ("s", "/etc/shadow")}, ends=fail_),
        Case("output created in /etc", {**cmd("true"), "StdoutPath": ("s", f"/etc/schedd-fuzz-{os.getpid()}")},
             ends=fail_),
        Case("output through a symlink into /etc", {**cmd("true"), "StdoutPath": ("s", f"{ETC_LINK}/passwd")},
             ends=fail_),
        Case("stderr through a symlink to /etc/shadow", {**cmd("true"), "StderrPath": ("s", SHADOW_LINK)},
             ends=fail_),
        Case("output over /proc/self/environ", {**cmd("true"), "StdoutPath": ("s", "/proc/self/environ")},
             ends=fail_),
        Case("output into pid 1's root", {**cmd("true"), "StdoutPath": ("s", "/proc/1/root/etc/shadow")},
             ends=fail_, errors=("InvalidArgument",)),
        Case("output on /dev/tty (no terminal)", {**cmd("true"), "StdoutPath": ("s", "/dev/tty")}, ends=fail_,
             errors=("InvalidArgument",)),
        # Devices a user may open: fine to refuse, fine to run; the exit status is the job's.
        Case("output to /dev/null", {**cmd("true"), "StdoutPath": ("s", "/dev/null")},
             ends=("COMPLETED/success",), errors=("InvalidArgument",)),
        Case("output to /dev/ptmx", {**cmd("true"), "StdoutPath": ("s", "/dev/ptmx")},
             ends=("COMPLETED/success",), errors=("InvalidArgument",)),
        Case("output to /dev/full", {**cmd("sh", "-c", "echo hello"), "StdoutPath": ("s", "/dev/full")},
             ends=("FAILED/exit-code",), errors=("InvalidArgument",)),
        Case("cwd /proc/self/cwd", {**cmd("true"), "WorkingDirectory": ("s", "/proc/self/cwd")},
             ends=("COMPLETED/success", "FAILED"), errors=("InvalidArgument",)),
        refused("cwd /root", {**cmd("true"), "WorkingDirectory": ("s", "/root")}, "WorkingDirectory"),
        # Programs that cannot run: FAILED, never COMPLETED.
        Case("a missing program", cmd("/no/such/program"), ends=fail_),
        Case("a program that is not executable", cmd("/etc/passwd"), ends=fail_),
        Case("a device as the program", cmd("/dev/null"), ends=fail_),
        Case("a directory as the program", cmd("/tmp"), ends=fail_),
        Case("a program through a symlink into /etc", cmd(f"{ETC_LINK}/shadow"), ends=fail_),
        # Huge values.
        refused("CPUs u32 max", {**cmd("true"), "CPUs": ("u", U32)}, "CPUs", "Unsatisfiable"),
        refused("Memory u64 max", {**cmd("true"), "Memory": ("t", U64)}, "Memory", "Unsatisfiable"),
        refused("Memory 2^63", {**cmd("true"), "Memory": ("t", 2**63)}, "Memory", "Unsatisfiable"),
        refused("GPUs u32 max", {**cmd("true"), "GPUs": ("u", U32)}, "GPUs", "Unsatisfiable"),
        Case("Priority i32 min", {**cmd("true"), "Priority": ("i", -I32)}, ends=("COMPLETED/success",),
             extra={"Priority": -I32}),
        Case("Priority i32 max", {**cmd("true"), "Priority": ("i", I32 - 1)}, ends=("COMPLETED/success",),
             errors=("AccessDenied",)),
        Case("RuntimeMaxUSec u64 max (none)", {**cmd("true"), "RuntimeMaxUSec": ("t", U64)},
             ends=("COMPLETED/success",)),
        refused("RuntimeMaxUSec 2^63", {**cmd("true"), "RuntimeMaxUSec": ("t", 2**63)}, "RuntimeMaxUSec"),
        Case("RuntimeMaxUSec 1 µs", {**cmd("sleep", "30"), "RuntimeMaxUSec": ("t", 1)}, ends=("FAILED/timeout",)),
        refused("After u64 max", {**cmd("true"), "After": ("at", [U64])}, "After"),
        refused("After 2^63", {**cmd("true"), "After": ("at", [2**63])}, "After"),
        refused("User u32 max", {**cmd("true"), "User": ("u", U32)}, "User", "AccessDenied"),
        refused("User root", {**cmd("true"), "User": ("u", 0)}, "User", "AccessDenied"),
        Case("ArrayTaskId u32 max", {**cmd("true"), "ArrayTaskId": ("u", U32)}, ends=("COMPLETED/success",)),
        refused("a 1 MiB Name", {**cmd("true"), "Name": ("s", "x" * MiB)}, "Name"),
        refused("a 1 MiB argument", cmd("true", "x" * MiB), "Command"),
        refused("a 1 MiB environment entry", {**cmd("true"), "Environment": ("as", ["A=" + "x" * MiB])},
                "Environment"),
        refused("a 1 MiB StdoutPath", {**cmd("true"), "StdoutPath": ("s", "/" + "x" * MiB)}, "StdoutPath"),
        refused("a 1 MiB Node", {**cmd("true"), "Node": ("s", "x" * MiB)}, "Node", "Unsatisfiable"),
        # Real-looking keys: systemd's and other schedulers' names are not ours.
        refused("MemoryMax", {**cmd("true"), "MemoryMax": ("t", 1 << 30)}, "MemoryMax"),
        refused("ExecStart", {**cmd("true"), "ExecStart": ("s", "/bin/sh")}, "ExecStart"),
        refused("cpus", {**cmd("true"), "cpus": ("u", 2)}, "cpus"),
        refused("command", {"command": ("as", ["true"])}, "command"),
        Case("LD_PRELOAD and PATH in the environment",
             {**cmd("/bin/true"), "Environment": ("as", ["LD_PRELOAD=/nonexistent/x.so", "PATH=/nonexistent"])},
             ends=("COMPLETED/success",)),
        Case("HOME and USER of root in the environment",
             {**cmd("sh", "-c", 'test "$(id -u)" != 0 && test -w "$0"', WORK),
              "Environment": ("as", ["HOME=/root", "USER=root", "LOGNAME=root"])}, ends=("COMPLETED/success",)),
    ]
    return c


def judge(b: Bus, rep: Report, case: Case, outcome) -> None:
    """outcome: ("error", DBusError) or ("job", final GetJob dict, ReadOutput results)."""
    if outcome[0] == "error":
        e = outcome[1]
        rep.cases[case.name] = f"{e.type.rsplit('.', 1)[1]}: {e.text[:100]}"
        if not rep.check_error(e, case.name):
            return
        if e.type.rsplit(".", 1)[1] not in case.errors:
            rep.violation(f"{case.name}: {'/'.join(case.errors) or 'accepted'} expected", (e.type, e.text))
        elif case.word and case.word not in e.text:
            rep.violation(f"{case.name}: the error names {case.word}", e.text)
        return
    _, j, reads = outcome
    rep.cases[case.name] = f"{j['State']}/{j['Reason']} exit {j['ExitCode']}; ReadOutput " + ", ".join(
        f"{k} {v.type.rsplit('.', 1)[1] if isinstance(v, DBusError) else len(v)}" for k, v in reads.items())
    if not case.ends:
        rep.violation(f"{case.name}: {'/'.join(case.errors)} expected", ("accepted", j["State"], j["Reason"],
                                                                         j["ExitCode"]))
    elif j["State"] not in case.ends and f"{j['State']}/{j['Reason']}" not in case.ends:
        rep.violation(f"{case.name}: ends {' or '.join(case.ends)}", (j["State"], j["Reason"], j["ExitCode"]))
    for k, want in case.extra.items():
        if j.get(k) != want:
            rep.violation(f"{case.name}: {k} is {want}", j.get(k))
    if j["State"] == "COMPLETED" and j["ExitCode"] != 0:
        rep.violation("COMPLETED means exit code 0", (case.name, j["ExitCode"]))
    if j["State"] == "COMPLETED" and (case.cannot_run or case.ends == ("FAILED",)):
        rep.violation(f"{case.name}: never a forged success", (j["State"], j["Reason"], j["ExitCode"]))
    for stream, r in reads.items():
        if isinstance(r, DBusError):
            rep.check_error(r, (case.name, "ReadOutput", stream))
        elif any(w.encode() in r for w in case.never_reads):
            rep.violation(f"{case.name}: ReadOutput {stream} never hands over a file the user cannot read", r[:80])


def catalogue_part(b: Bus, rep: Report) -> None:
    os.makedirs(NL_DIR)
    os.symlink("/etc", ETC_LINK)
    os.symlink("/etc/shadow", SHADOW_LINK)
    submitted: list[tuple[Case, object]] = []
    for case in catalogue():
        try:
            ((jid, _),) = b.call("Submit", "a{sv}", [{k: Variant(s, v) for k, (s, v) in case.spec.items()}])
            submitted.append((case, jid))
        except DBusError as e:
            submitted.append((case, e))
        except TimeoutError:
            rep.violation(f"{case.name}: Submit answers", short(case.spec))
    for case, r in submitted:
        if isinstance(r, DBusError):
            rep.outcomes["catalogue refused"] += 1
            judge(b, rep, case, ("error", r))
            continue
        rep.outcomes["catalogue ran"] += 1
        j = b.wait(r)
        if j["State"] not in TERMINAL:
            rep.violation(f"{case.name}: the job ends", j["State"])
            try:
                b.call("Cancel", "t", [r], timeout=5)
            except (DBusError, TimeoutError):
                pass  # a stuck job is already the violation
        reads = {}
        for stream, flag in (("stdout", False), ("stderr", True)):
            try:
                (reads[stream],) = b.call("ReadOutput", "tbt", [r, flag, 0])
            except DBusError as e:
                reads[stream] = e
            except TimeoutError:
                rep.violation(f"{case.name}: ReadOutput {stream} answers", case.spec.get("StdoutPath"))
                reads[stream] = b""
        judge(b, rep, case, ("job", j, reads))


def main() -> None:
    n = int(sys.argv[1])
    b = Bus()
    rep = Report()
    os.makedirs(WORK)
    try:
        catalogue_part(b, rep)
        random_part(b, rep, n, int(sys.argv[2]) if len(sys.argv) > 2 else 20261122)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print(json.dumps({"calls": sum(rep.outcomes.values()), **rep.outcomes,
                      "violations": dict(rep.violations), "examples": rep.examples, "catalogue": rep.cases}))


if __name__ == "__main__":
    main()

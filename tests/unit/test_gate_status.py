"""The gate's status file as the daemon reads it: only what a gate writes counts, and reading never raises."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedd.executor.gate import MAX_STATUS_BYTES, GateRunner

U63 = 2**63 - 1


def record(status: int = 0, oom: int = 0, peak: int = 4096, cpu: int = 1000, stragglers: int = 0,
           error: str | None = None) -> bytes:
    head = f"error={error}\n" if error is not None else ""
    return (f"{head}status={status}\noom_kill={oom}\npeak={peak}\ncpu_usec={cpu}\n"
            f"stragglers={stragglers}\nend=1\n").encode()


@pytest.fixture(scope="module")
def gates(tmp_path_factory) -> GateRunner:
    return GateRunner(tmp_path_factory.mktemp("exits"), accounting=False)


def read(gates: GateRunner, data: bytes, wait_status: int | None = None):
    gates.status_path(7).write_bytes(data)
    return gates.read_status(7, wait_status)


def test_a_well_formed_record(gates):
    info = read(gates, record(status=3 << 8, oom=0, peak=123, cpu=456, stragglers=2))
    assert (info.exit_code, info.signal, info.memory_peak, info.cpu_usec, info.stragglers) == (3, 0, 123, 456, 2)
    assert not info.lost and not info.malformed
    info = read(gates, record(status=9, error="cannot execute x: No such file or directory"))
    assert (info.exit_code, info.signal, info.error) == (137, 9, "cannot execute x: No such file or directory")


def test_largest_values_in_range(gates):
    info = read(gates, record(status=0xFFFF, oom=U63, peak=U63, cpu=U63, stragglers=U63))
    assert not info.lost and info.memory_peak == U63 and info.oom_killed


def test_nothing_recorded_is_lost_not_malformed(gates):
    info = read(gates, b"", wait_status=9)  # the gate was SIGKILLed before it wrote anything
    assert info.lost and not info.malformed and info.signal == 9
    info = read(gates, b"aborted=1\n", wait_status=121 << 8)
    assert info.lost and info.aborted and not info.malformed


FORGED = [
    # The output path of issue 11: the gate's error line carried the user's newlines.
    (b"error=cannot open /nonexistent-dir/x\nstatus=0\nend=1\n for writing: No such file or directory\n"
     + record(status=209 << 8), "line 4 is not key=value"),
    (b"error=x\nstatus=0\nend=1\n", "missing"),
    (record(status=0) + record(status=1 << 8), "duplicate"),
    (b"status=abc\noom_kill=0\npeak=0\ncpu_usec=0\nstragglers=0\nend=1\n", "status='abc'"),
    (b"error=x\npeak=99999999999999999999\naborted=1\n" + record(), "peak="),
    (record(peak=2**63), "peak="),
    (record(status=65536), "status="),
    (record().replace(b"status=0", b"status=-0"), "status="),
    (record().replace(b"status=0", b"status= 0"), "status="),
    (record().replace(b"status=0", "status=\u0660".encode()), "not ASCII"),
    (record().replace(b"cpu_usec=1000", b"cpu_usec=1_000"), "cpu_usec="),
    (record() + b"aborted=1\n", "unknown key|duplicate|order"),
    (record()[:-1], "truncated"),
    (record()[:-7], "truncated"),
    (record()[: len(record()) // 2], "truncated"),
    (record().replace(b"end=1", b"end=0"), "end"),
    (record().replace(b"oom_kill=0\n", b""), "oom_kill missing"),
    (record().replace(b"peak=4096\ncpu_usec=1000", b"cpu_usec=1000\npeak=4096"), "order"),
    (b"surprise=1\n" + record(), "unknown key"),
    (b"\n" + record(), "not key=value"),
    (b"error=a\tb\n" + record(), "control characters"),
    (b"\x00\xff\xfe garbage \x80\n", "not ASCII"),
    (b"status=0\r\noom_kill=0\r\npeak=0\r\ncpu_usec=0\r\nstragglers=0\r\nend=1\r\n", "status="),
    (b"error=" + b"a" * MAX_STATUS_BYTES + b"\n" + record(), "larger than"),
]


@pytest.mark.parametrize("data, why", FORGED)
def test_malformed_files_are_lost_and_say_why(gates, caplog, data, why):
    caplog.set_level("WARNING", logger="schedd.executor.gate")
    info = read(gates, data, wait_status=0)
    assert info.lost and not info.aborted
    assert re.search(why, info.malformed), info.malformed
    assert any("job 7" in r.getMessage() and info.malformed in r.getMessage() for r in caplog.records)


def test_a_malformed_file_is_never_an_abort_even_if_the_gate_exited_121(gates):
    info = read(gates, b"aborted=1\naborted=1\n", wait_status=121 << 8)
    assert info.lost and info.malformed and not info.aborted and not info.gate_failed


@pytest.mark.parametrize("code, words", [(120, "release pipe"), (121, "without go"), (122, "status file"),
                                         (123, "could not fork")])
def test_the_gates_own_failure_is_flagged_not_taken_for_the_jobs_exit(gates, code, words):
    info = read(gates, b"", wait_status=code << 8)
    assert info.lost and info.gate_failed and info.exit_code == code and words in info.error
    assert info.aborted == (code == 121)


@pytest.mark.parametrize("wait_status", [0, 3 << 8, 124 << 8, 9])
def test_a_gate_exit_that_mirrors_the_job_is_no_gate_failure(gates, wait_status):
    assert not read(gates, b"", wait_status=wait_status).gate_failed
    assert not read(gates, record(status=122 << 8), wait_status=wait_status).gate_failed  # the job exited 122


def test_an_unreadable_status_file_is_lost(gates):
    p = gates.status_path(8)
    p.mkdir(exist_ok=True)
    info = gates.read_status(8)
    assert info.lost and info.malformed


# -- property: never raises, never a success unless the file is a gate's record ---------------------

_WELL_FORMED = re.compile(
    rb"(error=[\x20-\x7e]*\n)?status=(0|[1-9][0-9]*)\noom_kill=(0|[1-9][0-9]*)\npeak=(0|[1-9][0-9]*)\n"
    rb"cpu_usec=(0|[1-9][0-9]*)\nstragglers=(0|[1-9][0-9]*)\nend=1\n")


def well_formed(data: bytes) -> bool:
    """The reference: a gate's record by a regular expression and the ranges, written independently."""
    m = _WELL_FORMED.fullmatch(data)
    if m is None or len(data) > MAX_STATUS_BYTES:
        return False
    status, *counters = (int(g) for g in m.groups()[1:])
    return status <= 0xFFFF and all(c <= U63 for c in counters)


_NUMBERS = st.one_of(st.integers(0, 0xFFFF), st.integers(0, 2**64), st.sampled_from([-1, U63, U63 + 1]))
_LINES = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["status", "oom_kill", "peak", "cpu_usec", "stragglers",
                                                         "end", "aborted", "error", "Status", "bogus"]),
              st.one_of(_NUMBERS.map(str), st.sampled_from(["", "abc", "1 ", "+1", "0x10", "1e3", "١"]),
                        st.text(max_size=12))),
    st.text(max_size=20),
)


@st.composite
def _status_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # arbitrary bytes
        return draw(st.binary(max_size=300))
    if kind == 1:  # lines that look like the gate's
        lines = draw(st.lists(_LINES, max_size=10))
        return ("\n".join(lines) + draw(st.sampled_from(["\n", ""]))).encode("utf-8", "surrogatepass")
    good = record(status=draw(st.integers(0, 0xFFFF)), oom=draw(st.integers(0, U63)),
                  peak=draw(st.integers(0, U63)), cpu=draw(st.integers(0, U63)),
                  stragglers=draw(st.integers(0, 3)),
                  error=draw(st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126)))))
    if kind == 2:
        return good
    # A real record, then edited: a line inserted, dropped or duplicated, or the file cut short.
    lines = good.split(b"\n")
    i = draw(st.integers(0, len(lines) - 1))
    edit = draw(st.sampled_from(["insert", "drop", "dup", "cut"]))
    if edit == "insert":
        lines.insert(i, draw(_LINES).encode("utf-8", "surrogatepass"))
    elif edit == "drop":
        del lines[i]
    elif edit == "dup":
        lines.insert(i, lines[i])
    else:
        return good[: draw(st.integers(0, len(good)))]
    return b"\n".join(lines)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_status_files(), wait_status=st.one_of(st.none(), st.sampled_from([0, 9, 121 << 8, 1 << 8])))
def test_read_status_never_raises_and_never_forges_a_success(gates, data, wait_status):
    info = read(gates, data, wait_status)  # raising fails the test
    if well_formed(data):
        assert not info.lost and not info.malformed
        status = int(re.search(rb"status=(\d+)", data.split(b"\n", 1)[-1] if data.startswith(b"error=") else data)[1])
        assert info.exit_code == (128 + (status & 0x7F) if status & 0x7F else status >> 8)
    else:
        assert info.lost  # whatever it holds, it is not taken as the job's result
        assert info.malformed or data in (b"", b"aborted=1\n")  # nothing recorded, or the gate's abort record
        assert not info.aborted or not info.malformed
    assert not info.gate_failed or (info.lost and not info.malformed and info.exit_code in range(120, 124))

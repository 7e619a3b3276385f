"""squeue and sacct print each ListJobs page as it comes (a long queue is never held whole), and
their output is the output of the whole list: an array's pending tasks fold into one row even when
a page boundary falls inside the array."""

from __future__ import annotations

import contextlib
import io
import sys

from hypothesis import given, settings, strategies as st

from schedd_slurm import common, formats, sacct, squeue


def job(id_: int, state: str = "HELD", array: int = 0, task: int = 0, **kw) -> dict:
    row = {"Id": id_, "Name": f"j{id_}", "User": 1000, "UserName": "alice", "State": state,
           "Reason": "held" if state == "HELD" else "", "CPUs": 1, "Memory": 1 << 20, "Node": "",
           "SubmitTime": 1_000_000, "StartTime": 0, "EndTime": 0, "RuntimeMaxUSec": 0, "Priority": 0,
           "ArrayJobId": array, "ArrayTaskId": task, "ArrayMaxRunning": 0, "ExitCode": 0}
    if state in ("RUNNING", "COMPLETED"):
        row.update(StartTime=2_000_000, Node="box", Reason="success" if state == "COMPLETED" else "")
    if state == "COMPLETED":
        row["EndTime"] = 3_000_000
    return row | kw


@st.composite
def queues(draw) -> list[dict]:
    """Jobs in id order, each array's jobs on the ids its submit reserved (a run of ids together),
    plain jobs between them; some tasks started, some still the daemon's folded row."""
    rows: list[dict] = []
    next_id = 1
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            rows.append(job(next_id, draw(st.sampled_from(["HELD", "PENDING", "RUNNING"]))))
            next_id += 1
            continue
        n, first, cap = draw(st.integers(1, 6)), next_id, draw(st.sampled_from([0, 0, 2]))
        # the tasks that are no jobs yet (the daemon's fold row) stand at the first of them, which
        # may come before tasks made jobs early (a verb named them)
        fold_at = draw(st.one_of(st.none(), st.integers(0, n)))
        for i in range(n + 1):
            if i == fold_at:
                rows.append(job(first + i, "PENDING", array=first, task=i, ArrayMaxRunning=cap,
                                ArrayTasks=f"{i}-{i + 9}"))
            elif i < n:
                state = draw(st.sampled_from(["PENDING", "PENDING", "HELD", "RUNNING", "COMPLETED"]))
                rows.append(job(first + i, state, array=first, task=i, ArrayMaxRunning=cap))
        next_id = first + n + 10
    return rows


@settings(max_examples=300, deadline=None)
@given(queues(), st.lists(st.integers(1, 40), max_size=6))
def test_pages_fold_as_the_whole_list_does(rows, cuts):
    """Cut anywhere into pages, the folder gives the rows collapse_pending_arrays gives the whole."""
    bounds = sorted(min(c, len(rows)) for c in cuts)  # a repeated cut: an empty page (all filtered out)
    pages = [rows[a:b] for a, b in zip([0, *bounds], [*bounds, len(rows)])]
    folder = formats.ArrayFolder()
    out = [r for page in pages for r in folder.feed(page)] + folder.end()
    assert out == formats.collapse_pending_arrays(rows)


def test_squeue_j_folds_an_array_wherever_its_tasks_stand():
    """squeue -j names jobs in any order: the whole list folds (no pages there)."""
    rows = [job(3, "PENDING", array=3), job(1), job(4, "PENDING", array=3, task=1, ArrayMaxRunning=1)]
    assert [r.get("_row_id", r["Id"]) for r in formats.collapse_pending_arrays(rows)] == ["3_[0-1]", 1]


class Pages:
    """A daemon's ListJobs pages: each asked for in turn, with what the command had printed by then."""

    def __init__(self, pages: list[list[dict]], stdout: io.StringIO) -> None:
        self.pages, self.stdout, self.printed_before, self.asked = pages, stdout, [], {}

    async def job_pages(self, states=None, uid=None, limit=None, page_size=None, fold=False, properties=None):
        self.asked = {"fold": fold, "properties": properties}
        for page in self.pages:
            if isinstance(page, Exception):
                raise page
            self.printed_before.append(self.stdout.getvalue())
            yield page


def run(monkeypatch, main, argv: list[str], pages: list) -> tuple[int, str, Pages]:
    """main(argv) against these pages (an Exception among them: the daemon fails there)."""
    out = io.StringIO()
    daemon = Pages(pages, out)

    @contextlib.asynccontextmanager
    async def connect():
        yield daemon

    monkeypatch.setattr(common, "connect", connect)
    monkeypatch.setattr(sys, "stdout", out)
    rc = main(argv)
    return rc, out.getvalue(), daemon


def test_squeue_prints_a_page_before_it_asks_for_the_next(monkeypatch):
    first = [job(1), job(2)]
    array = [job(3 + i, "PENDING", array=3, task=i) for i in range(4)]  # the page boundary falls inside it
    rc, out, daemon = run(monkeypatch, squeue.main, ["-h", "-o", "%i %T"], [first + array[:2], array[2:] + [job(9)]])
    assert rc == 0
    assert out.splitlines() == ["1 PENDING", "2 PENDING", "3_[0-3] PENDING", "9 PENDING"]
    assert daemon.printed_before == ["", "1 PENDING\n2 PENDING\n"]  # the array's rows wait for the rest of it
    assert daemon.asked == {"fold": True, "properties": formats.squeue_properties(formats.parse_squeue_format(
        "%i %T")[0])}


def test_squeue_header_comes_alone_for_an_empty_queue(monkeypatch):
    rc, out, _ = run(monkeypatch, squeue.main, ["-o", "%i %T"], [])
    assert (rc, out) == (0, "JOBID STATE\n")
    rc, out, daemon = run(monkeypatch, squeue.main, ["-r", "-o", "%i"], [[job(3, "PENDING", array=3)],
                                                                        [job(4, "PENDING", array=3, task=1)]])
    assert out.splitlines() == ["JOBID", "3_0", "3_1"]  # -r: every task its own row, nothing folded
    assert daemon.asked["fold"] is False


def test_a_listing_cut_short_says_so(monkeypatch, capsys):
    """The daemon failing after a page: that page stays printed, stderr says the listing above is
    incomplete, and the exit status is 1 (a pipeline with pipefail sees it)."""
    from schedd_slurm.common import DBusError

    rc, out, _ = run(monkeypatch, squeue.main, ["-h", "-o", "%i"], [[job(1)], DBusError("org.x.Boom", "boom")])
    assert (rc, out) == (1, "1\n")
    assert capsys.readouterr().err.splitlines() == ["squeue: error: the listing above stops after 1 job: "
                                                     "it is incomplete", "squeue: error: boom"]
    rc, out, _ = run(monkeypatch, sacct.main, ["-a", "-n", "-P", "-o", "JobID"], [DBusError("org.x.Boom", "boom")])
    assert (rc, out) == (1, "")  # nothing printed: nothing to warn of
    assert capsys.readouterr().err.splitlines() == ["sacct: error: boom"]


def test_sacct_prints_each_page_with_one_header(monkeypatch):
    done = [job(1, "COMPLETED"), job(2, "COMPLETED")]
    rc, out, daemon = run(monkeypatch, sacct.main, ["-a", "-P", "-S", "1970-01-01", "-o", "JobID,State"],
                          [done[:1], done[1:]])
    assert rc == 0
    assert out.splitlines() == ["JobID|State", "1|COMPLETED", "1.batch|COMPLETED", "2|COMPLETED",
                                "2.batch|COMPLETED"]
    assert daemon.printed_before == ["", "JobID|State\n1|COMPLETED\n1.batch|COMPLETED\n"]
    rc, out, _ = run(monkeypatch, sacct.main, ["-a", "-P", "-o", "JobID,State"], [])
    assert (rc, out) == (0, "JobID|State\n")

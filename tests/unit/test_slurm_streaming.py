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
        n, first = draw(st.integers(1, 6)), next_id
        for i in range(n):
            state = draw(st.sampled_from(["PENDING", "PENDING", "HELD", "RUNNING"]))
            rows.append(job(first + i, state, array=first, task=i))
        if draw(st.booleans()):  # the tasks that are no jobs yet: one row, the daemon's fold
            rows.append(job(first + n, "PENDING", array=first, task=n, ArrayTasks=f"{n}-{n + 9}"))
        next_id = first + n + 10
    return rows


@settings(max_examples=300, deadline=None)
@given(queues(), st.lists(st.integers(1, 40), max_size=6))
def test_pages_fold_as_the_whole_list_does(rows, cuts):
    """Cut anywhere into pages, the folder gives the rows collapse_pending_arrays gives the whole."""
    bounds = sorted({min(c, len(rows)) for c in cuts})
    pages = [rows[a:b] for a, b in zip([0, *bounds], [*bounds, len(rows)])]
    folder = formats.ArrayFolder()
    out = [r for page in pages for r in folder.feed(page)] + folder.end()
    assert out == formats.collapse_pending_arrays(rows)


class Pages:
    """A daemon's ListJobs pages: each asked for in turn, with what the command had printed by then."""

    def __init__(self, pages: list[list[dict]], stdout: io.StringIO) -> None:
        self.pages, self.stdout, self.printed_before = pages, stdout, []

    async def job_pages(self, states=None, uid=None, limit=None, page_size=None, fold=False, properties=None):
        for page in self.pages:
            self.printed_before.append(self.stdout.getvalue())
            yield page


def run(monkeypatch, main, argv: list[str], pages: list[list[dict]]) -> tuple[int, str, list[str]]:
    out = io.StringIO()
    daemon = Pages(pages, out)

    @contextlib.asynccontextmanager
    async def connect():
        yield daemon

    monkeypatch.setattr(common, "connect", connect)
    monkeypatch.setattr(sys, "stdout", out)
    rc = main(argv)
    return rc, out.getvalue(), daemon.printed_before


def test_squeue_prints_a_page_before_it_asks_for_the_next(monkeypatch):
    first = [job(1), job(2)]
    array = [job(3 + i, "PENDING", array=3, task=i) for i in range(4)]  # the page boundary falls inside it
    rc, out, before = run(monkeypatch, squeue.main, ["-h", "-o", "%i %T"], [first + array[:2], array[2:] + [job(9)]])
    assert rc == 0
    assert out.splitlines() == ["1 PENDING", "2 PENDING", "3_[0-3] PENDING", "9 PENDING"]
    assert before == ["", "1 PENDING\n2 PENDING\n"]  # the array's rows wait for the rest of it


def test_squeue_header_comes_alone_for_an_empty_queue(monkeypatch):
    rc, out, _ = run(monkeypatch, squeue.main, ["-o", "%i %T"], [])
    assert (rc, out) == (0, "JOBID STATE\n")
    rc, out, _ = run(monkeypatch, squeue.main, ["-r", "-o", "%i"], [[job(3, "PENDING", array=3)],
                                                                   [job(4, "PENDING", array=3, task=1)]])
    assert out.splitlines() == ["JOBID", "3_0", "3_1"]  # -r: every task its own row, nothing folded


def test_sacct_prints_each_page_with_one_header(monkeypatch):
    done = [job(1, "COMPLETED"), job(2, "COMPLETED")]
    rc, out, before = run(monkeypatch, sacct.main, ["-a", "-P", "-S", "1970-01-01", "-o", "JobID,State"],
                          [done[:1], done[1:]])
    assert rc == 0
    assert out.splitlines() == ["JobID|State", "1|COMPLETED", "1.batch|COMPLETED", "2|COMPLETED",
                                "2.batch|COMPLETED"]
    assert before == ["", "JobID|State\n1|COMPLETED\n1.batch|COMPLETED\n"]
    rc, out, _ = run(monkeypatch, sacct.main, ["-a", "-P", "-o", "JobID,State"], [])
    assert (rc, out) == (0, "JobID|State\n")

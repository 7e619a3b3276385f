"""The fault tests' judge (tests/runlog.py): issue 18's rules read off a run log, without a cluster."""

from runlog import Fault, Outcome, judge, parse_log

FAULT = Fault("b", 100.0, 110.0)  # b failed from t=100 to t=110; a is the origin


def verdict(log: str, *outcomes: Outcome):
    return judge(list(outcomes), parse_log(log), FAULT, origin="a", grace=5.0)


def test_parse_pairs_each_start_with_the_next_end_on_its_node():
    runs = parse_log("start t:1 b 99.0\nstart t:1 c 104.0\nend t:1 c 106.0\ngarbage line\nstart t:2 a 1.5\n")
    assert [(r.node, r.start, r.end) for r in runs["t:1"]] == [("b", 99.0, None), ("c", 104.0, 106.0)]
    assert runs["t:2"][0].end is None


def test_a_job_run_once_where_its_origin_says_passes():
    v = verdict("start t:1 c 101 \nend t:1 c 103\n", Outcome("t:1", True, "COMPLETED", "success", 0, "c", "COMPLETED"))
    assert v.problems == [] and v.doubles == [] and v.runs == 1


def test_a_requeue_from_the_failed_node_is_the_one_allowed_double_run():
    log = "start t:1 b 99\nend t:1 b 101\nstart t:1 c 103.5\nend t:1 c 105.5\n"
    v = verdict(log, Outcome("t:1", True, "COMPLETED", "success", 1, "c", "COMPLETED"))
    assert v.problems == [] and len(v.doubles) == 1 and "allowed" in v.doubles[0]
    # ... but not without Restarts, not with Requeue=false, not when its stale copy ran on past the fault.
    assert verdict(log, Outcome("t:1", True, "COMPLETED", "success", 0, "c", "COMPLETED")).problems
    assert verdict(log, Outcome("t:1", False, "COMPLETED", "success", 1, "c", "COMPLETED")).problems
    late = "start t:1 b 99\nstart t:1 c 103.5\nend t:1 c 105.5\nend t:1 b 117\n"
    assert "not stopped" in verdict(late, Outcome("t:1", True, "COMPLETED", "success", 1, "c", "COMPLETED")).problems[0]


def test_a_job_that_was_not_running_on_the_failed_node_must_not_run_twice():
    # Waiting on b when it failed, placed on c, then b starts its stale copy: the bug of issue 18.
    log = "start t:1 c 104\nend t:1 c 106\nstart t:1 b 110.03\n"
    v = verdict(log, Outcome("t:1", True, "COMPLETED", "success", 1, "c", "COMPLETED"))
    assert len(v.problems) == 1 and "after the fault began" in v.problems[0]
    # An origin that stalls: nothing failed, yet it reran a job that had ended on b.
    origin_fault = judge([Outcome("t:2", True, "COMPLETED", "success", 1, "a", None)],
                         parse_log("start t:2 b 99\nend t:2 b 101\nstart t:2 a 110\nend t:2 a 112\n"),
                         Fault("a", 100, 110), origin="a")
    assert "started again after its end line" in origin_fault.problems[0]


def test_requeue_false_on_the_failed_node_fails_node_failure_and_runs_once():
    ok = Outcome("t:1", False, "FAILED", "node-failure", 0, "b", "COMPLETED")
    assert verdict("start t:1 b 99\nend t:1 b 101\n", ok).problems == []
    # Said of a job on a node that did not fail, node-failure is a lie.
    wrong = Outcome("t:1", False, "FAILED", "node-failure", 0, "c", "COMPLETED")
    assert verdict("start t:1 c 99\nend t:1 c 101\n", wrong).problems


def test_lost_and_false_completions_are_problems():
    assert "lost" in verdict("", Outcome("t:1", True, "RUNNING", "", 0, "c", "RUNNING")).problems[0]
    assert "never started" in verdict("", Outcome("t:1", True, "COMPLETED", "success", 0, "c", "COMPLETED")).problems[0]
    mismatch = verdict("start t:1 c 101\nend t:1 c 103\n", Outcome("t:1", True, "CANCELLED", "", 0, "c", "COMPLETED"))
    assert "copy on c says COMPLETED" in mismatch.problems[0]


def test_the_failed_node_must_stop_a_stale_copy_before_it_starts_anything_else():
    log = "start t:1 b 99\nstart t:1 c 103.5\nend t:1 c 105.5\nstart t:2 b 110.2\nend t:2 b 112.2\n"
    stale = Outcome("t:1", True, "COMPLETED", "success", 1, "c", "COMPLETED", stale_end=110.5)
    other = Outcome("t:2", True, "COMPLETED", "success", 0, "b", "COMPLETED")
    assert "before it stopped this stale copy" in verdict(log, stale, other).problems[0]
    stopped_first = Outcome("t:1", True, "COMPLETED", "success", 1, "c", "COMPLETED", stale_end=110.1)
    assert verdict(log, stopped_first, other).problems == []

"""Placement: here if it fits now, else the up peer with the most room, else where it fits soonest."""

from __future__ import annotations

import pytest

from schedd.errors import InvalidArgument, Unsatisfiable
from schedd.core.placement import Need, NodeView, check_satisfiable, choose

G = 1 << 30


def node(name: str, cpus: int = 4, free: int | None = None, mem: int = 8 * G, gpus: int = 0, free_gpus: int | None = None,
         up: bool = True, local: bool = False, pending: int = 0, running: int = 0) -> NodeView:
    return NodeView(name, up, local=local, total_cpus=cpus, free_cpus=cpus if free is None else free,
                    total_memory=mem, free_memory=mem, total_gpus=gpus,
                    free_gpus=gpus if free_gpus is None else free_gpus, pending=pending, running=running)


ONE = Need(1, G)


def test_no_node_or_own_name_means_here_even_when_full():
    nodes = [node("a", free=0, local=True), node("b")]
    assert choose("", ONE, nodes) == "a"
    assert choose("a", ONE, nodes) == "a"


def test_any_stays_here_when_it_fits_now():
    assert choose("any", ONE, [node("a", local=True, free=1), node("b", free=4)]) == "a"


def test_any_spills_to_the_up_peer_with_most_room():
    nodes = [node("a", local=True, free=0), node("b", free=1), node("c", free=3), node("d", free=4, up=False)]
    assert choose("any", ONE, nodes) == "c"


def test_any_queues_where_it_fits_soonest_when_nothing_fits_now():
    nodes = [node("a", local=True, free=0, pending=5), node("b", free=0, pending=1), node("c", free=0, pending=3)]
    assert choose("any", ONE, nodes) == "b"
    tie = [node("a", local=True, free=0, pending=1), node("b", free=0, pending=1)]
    assert choose("any", ONE, tie) == "a"


def test_gpu_jobs_go_only_to_nodes_with_gpus():
    nodes = [node("a", local=True), node("b", free=4), node("g", free=1, gpus=2)]
    assert choose("any", Need(1, G, 1), nodes) == "g"
    busy = [node("a", local=True), node("g", gpus=1, free_gpus=0)]
    assert choose("any", Need(1, G, 1), busy) == "g"  # queued there: the only node that ever fits


def test_named_peer_waits_while_down_and_unknown_names_are_refused():
    nodes = [node("a", local=True), node("b", up=False)]
    assert choose("b", ONE, nodes) is None
    with pytest.raises(InvalidArgument):
        choose("zz", ONE, nodes)


def test_requeued_jobs_avoid_the_failed_node():
    nodes = [node("a", local=True, free=0), node("b", free=4), node("c", free=2)]
    assert choose("any", ONE, nodes, frozenset({"b"})) == "c"
    only_b_free = [node("a", local=True, free=0), node("b", free=8)]
    assert choose("any", ONE, only_b_free, frozenset({"b"})) == "a"  # queued here rather than back on b
    assert choose("b", ONE, only_b_free, frozenset({"b"})) is None


def test_nothing_up_that_could_fit_means_wait():
    nodes = [node("a", local=True, cpus=1), node("b", cpus=8, up=False)]
    assert choose("any", Need(4, G), nodes) is None


@pytest.mark.parametrize("target, need, words", [
    ("any", Need(16, G), "CPUs: asks for 16 CPUs but the largest node offers 8"),
    ("any", Need(1, G, 4), "GPUs: asks for 4 GPUs but the largest node offers 2"),
    ("any", Need(1, 64 * G), "Memory"),
    ("b", Need(6, G), "node b offers 4"),
    ("zz", ONE, "no node named 'zz'"),
    ("", Need(8, G), "node a offers 2"),
    ("any", Need(8, G, 1), "no single node"),
])
def test_unsatisfiable_anywhere_is_refused_with_the_largest_offer(target, need, words):
    nodes = [node("a", cpus=2, local=True), node("b", cpus=4), node("c", cpus=8, up=False), node("g", cpus=2, gpus=2)]
    with pytest.raises(Unsatisfiable, match=words):
        check_satisfiable(target, need, nodes)


def test_satisfiable_checks_pass_and_unknown_peers_decide_for_themselves():
    nodes = [node("a", cpus=2, local=True), NodeView("b", False, known=False)]
    check_satisfiable("any", Need(2, G), nodes)
    check_satisfiable("b", Need(64, G), nodes)  # b never heard from: it answers when the job is forwarded


def test_a_job_placed_here_after_all_gets_its_own_paths_with_percent_j_in_both():
    """Node=any, waiting for a node, then run locally: %j in StderrPath is the id too (it stayed literal)."""
    from pathlib import Path

    from schedd.cluster.origin import fill_paths
    from schedd.core.model import Job, JobSpec

    jobs_dir = Path("/var/lib/schedd/jobs")
    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 20, uid=1000, gid=1000, user_name="u",
                   working_directory="/", stdout_path="/home/u/out.%j", stderr_path="/home/u/err.%j")
    fill_paths(Job(id=12, spec=spec), jobs_dir)
    assert (spec.stdout_path, spec.stderr_path) == ("/home/u/out.12", "/home/u/err.12")
    spec = JobSpec(command=["true"], name="t", cpus=1, memory=1 << 20, uid=1000, gid=1000, user_name="u",
                   working_directory="/")
    fill_paths(Job(id=13, spec=spec), jobs_dir)
    assert spec.stdout_path == spec.stderr_path == "/var/lib/schedd/jobs/13/output"

"""The failure detector on virtual time: silence counts only while this node was awake."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.cluster.liveness import Liveness

INTERVAL = 1.0


def detector(now: float = 0.0) -> Liveness:
    return Liveness(["b", "c"], threshold=3 * INTERVAL, stall=INTERVAL, now=now)


def run(live: Liveness, start: float, end: float, beats: dict[str, float] | None = None) -> list[str]:
    """Tick every quarter interval from start to end; peers in beats are heard every interval until
    the time given. Returns the peers judged down, in order."""
    downs: list[str] = []
    t = start
    while t <= end:
        for name, until in (beats or {}).items():
            if t <= until and abs(t - round(t)) < 1e-9:
                live.heard(name, t)
        downs += live.tick(t)[1]
        t = round(t + INTERVAL / 4, 6)
    return downs


def test_a_silent_peer_is_down_after_three_intervals_and_reported_once():
    live = detector()
    live.heard("b", 0.0)
    live.heard("c", 0.0)
    assert run(live, 0.25, 3.0, {"b": 10.0, "c": 10.0}) == []
    downs = run(live, 3.25, 8.0, {"b": 10.0})
    assert downs == ["c"]  # once, not at every tick
    assert live.heard("c", 8.5) is True and "c" in live.up  # up again the moment it is heard


def test_a_peer_never_heard_is_judged_from_this_nodes_start():
    live = detector(now=100.0)
    assert run(live, 100.25, 103.0, {"b": 200.0}) == []
    assert run(live, 103.25, 104.0, {"b": 200.0}) == ["c"]


def test_this_nodes_own_stall_is_not_its_peers_death():
    live = detector()
    live.heard("b", 0.0)
    live.heard("c", 0.0)
    run(live, 0.25, 2.0, {"b": 2.0, "c": 2.0})
    # Stopped for 10 s: no tick ran. Its peers beat on; their beats wait in its sockets.
    away, down = live.tick(12.0)
    assert away and down == [] and live.stalls == 1
    # Only what it misses after waking counts: b beats again, c does not.
    assert run(live, 12.25, 15.0, {"b": 20.0}) == []
    assert run(live, 15.25, 16.0, {"b": 20.0}) == ["c"]


def test_a_tick_that_is_merely_late_is_not_a_stall():
    live = detector()
    live.heard("b", 0.0)
    away, _ = live.tick(0.9)  # a busy loop: 0.9 s between two ticks, under one interval
    assert not away and live.stalls == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["beat-b", "tick", "stall"]), st.floats(0.01, 12.0)), max_size=60))
def test_no_peer_is_judged_on_less_than_three_intervals_of_awake_silence(events):
    """Whatever the schedule of beats, ticks and stalls: a peer judged down was silent for over
    3 intervals counted from when this node last woke."""
    live = detector()
    t, heard, woke = 0.0, 0.0, 0.0
    live.heard("b", 0.0)
    for kind, dt in events:
        if kind == "stall":
            t += dt
            continue
        t += min(dt, INTERVAL / 4) if kind == "tick" else dt
        if kind == "beat-b":
            live.heard("b", t)
            heard = t
            continue
        away, down = live.tick(t)
        if away:
            woke = t
        if "b" in down:
            assert t - max(heard, woke) > 3 * INTERVAL


def test_a_node_that_hears_no_majority_judges_nobody():
    """Three nodes: when both peers fall silent at once, this node is the likelier one cut off."""
    live = detector()
    live.heard("b", 0.0)
    live.heard("c", 0.0)
    assert run(live, 0.25, 10.0) == [] and not live.quorate
    # One peer heard again: two of three, a majority; the other silent one is judged now.
    live.heard("b", 10.1)
    assert run(live, 10.25, 10.5, {"b": 20.0}) == ["c"] and live.quorate


def test_in_a_cluster_of_two_a_silent_peer_is_down():
    live = Liveness(["b"], threshold=3 * INTERVAL, stall=INTERVAL, now=0.0)
    live.heard("b", 0.0)
    assert run(live, 0.25, 3.5) == ["b"]

"""Failure detection that counts only the silence this node was awake to hear.

A peer is down once it has been silent for `threshold` seconds *of this node's own waking time*.
When this node itself was away -- its loop did not run for longer than `stall` (a SIGSTOP, a VM
pause, a suspended laptop, a swap storm, a long GC) -- the silence it slept through proves nothing
about its peers: their heartbeats and pushes are still waiting in its sockets. So after a stall the
count starts again from the moment it woke, and it hears its peers (and reconciles) before it
judges anyone.

And a node that hears no majority of the cluster (itself included) judges nobody: when every peer
falls silent at once, the likelier story is that this node's own link is cut, and the majority
side -- which can still hear itself -- is the one to requeue. (A cluster of two has no majority
to consult; there a silent peer is down as usual.) A member that joined counts for the majority
only once it has answered this node's heartbeat (`confirm`): a flood of joins under made-up names
that then fall silent must not leave every node without a majority, judging nobody for good. Pure: the daemon feeds it a clock that counts
suspend (CLOCK_BOOTTIME); the unit tests feed it virtual time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def boottime() -> float:
    """Seconds on a clock that goes on while the machine is suspended (monotonic does not)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Liveness:
    names: list[str]
    threshold: float  # silence (of our own waking time) after which a peer is down
    stall: float  # a gap between two ticks longer than this: this node was the one away
    now: float  # when this node started (a peer never heard from is judged from then)
    awake_since: float = 0.0
    last_tick: float = 0.0
    last_heard: dict[str, float] = field(default_factory=dict)
    up: set[str] = field(default_factory=set)
    judged: set[str] = field(default_factory=set)  # down, and already reported as such since last heard
    stalls: int = 0  # how often this node found it had been away
    quorate: bool = True  # it hears a majority of the cluster (it judges peers only then)
    provisional: set[str] = field(default_factory=set)  # joined, not counted for a majority until confirmed

    def __post_init__(self) -> None:
        self.awake_since = self.last_tick = self.now

    def heard(self, name: str, now: float) -> bool:
        """A heartbeat from name arrived; True when it was not up before (it is up now)."""
        self.last_heard[name] = now
        self.judged.discard(name)
        if name in self.up:
            return False
        self.up.add(name)
        return True

    def add(self, name: str, now: float, *, provisional: bool = False) -> None:
        """A member joined: its silence counts from now (and, provisional, not for a majority yet)."""
        if name not in self.names:
            self.names.append(name)
        self.last_heard[name] = now
        self.judged.discard(name)
        if provisional:
            self.provisional.add(name)

    def confirm(self, name: str) -> None:
        """It answered our heartbeat: it is a node, and counts for a majority from now on."""
        self.provisional.discard(name)

    def remove(self, name: str) -> None:
        if name in self.names:
            self.names.remove(name)
        self.last_heard.pop(name, None)
        self.up.discard(name)
        self.judged.discard(name)
        self.provisional.discard(name)

    def tick(self, now: float) -> tuple[bool, list[str]]:
        """Called every fraction of a heartbeat: (this node was away since the last tick, the peers
        that are down now and were not reported down yet)."""
        away = now - self.last_tick > self.stall
        self.last_tick = now
        if away:
            self.awake_since = now
            self.stalls += 1
        silent = [n for n in self.names if self.silence(n, now) > self.threshold]
        voters = len(self.names) - len(self.provisional)
        heard = 1 + voters - len([n for n in silent if n not in self.provisional])  # this node and those it hears
        self.quorate = voters < 2 or 2 * heard > voters + 1
        down = []
        if self.quorate:
            for name in silent:
                if name not in self.judged:
                    down.append(name)
                    self.judged.add(name)
                    self.up.discard(name)
        return away, down

    def silence(self, name: str, now: float) -> float:
        """How long name has been silent while this node was awake."""
        return now - max(self.last_heard.get(name, self.now), self.awake_since)

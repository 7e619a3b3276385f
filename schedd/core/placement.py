"""Where a job runs: pure logic over node views, so it can be tested without a cluster.

`Node` in a spec: absent (or this node's name) → here; a peer's name → that peer;
`any` → (never a drained node) here if it fits now, else the up peer where it fits now with the most free
capacity, else the node where it will fit soonest (fewest jobs queued ahead, then
fewest running). A request no known node could ever hold is Unsatisfiable.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedd.errors import InvalidArgument, Unsatisfiable
from schedd.protocol import format_size

ANY = "any"


CONTAINER = "container"  # the feature a node advertises when it runs Container jobs


@dataclass(frozen=True, slots=True)
class Need:
    cpus: int
    memory: int
    gpus: int = 0
    container: bool = False  # runs in an image: only a node with the "container" feature can take it

    @classmethod
    def of(cls, spec) -> "Need":
        return cls(spec.cpus, spec.memory, spec.gpus, bool(spec.container))


# A node's capacity and load on the wire (heartbeats, ListNodes) and the NodeView field for each.
LOAD_FIELDS = {
    "TotalCPUs": "total_cpus", "AvailableCPUs": "free_cpus", "TotalMemory": "total_memory",
    "AvailableMemory": "free_memory", "TotalGPUs": "total_gpus", "AvailableGPUs": "free_gpus",
    "PendingJobs": "pending", "RunningJobs": "running",
}


def ledger_load(ledger, pending: int, running: int) -> dict[str, int]:
    """This node's capacity and load, keyed as on the wire: what the ledger has free, and the job counts."""
    return {"TotalCPUs": ledger.total_cpus, "AvailableCPUs": ledger.free_cpus, "TotalMemory": ledger.total_memory,
            "AvailableMemory": ledger.free_memory, "TotalGPUs": ledger.total_gpus, "AvailableGPUs": ledger.free_gpus,
            "PendingJobs": pending, "RunningJobs": running}


@dataclass(frozen=True, slots=True)
class NodeView:
    """What a node offers as its last heartbeat (or the ledger, for this node) told."""

    name: str
    up: bool
    local: bool = False
    known: bool = True  # a peer never heard from has no capacity figures yet
    total_cpus: int = 0
    free_cpus: int = 0
    total_memory: int = 0
    free_memory: int = 0
    total_gpus: int = 0
    free_gpus: int = 0
    pending: int = 0
    running: int = 0
    drained: bool = False  # draining or drained (schedctl drain): it takes no new jobs
    features: frozenset[str] = frozenset()  # what it runs beyond plain commands (CONTAINER), as it says

    @classmethod
    def of_load(cls, name: str, up: bool, load: dict[str, int] | None, local: bool = False,
                features: frozenset[str] = frozenset()) -> "NodeView":
        if load is None:
            return cls(name, up, local=local, known=False)
        return cls(name, up, local=local, features=features, **{f: load[k] for k, f in LOAD_FIELDS.items()})

    def load(self) -> dict[str, int]:
        return {k: getattr(self, f) for k, f in LOAD_FIELDS.items()}

    def could_fit(self, need: Need) -> bool:
        return (self.known and need.cpus <= self.total_cpus and need.memory <= self.total_memory
                and need.gpus <= self.total_gpus and (not need.container or CONTAINER in self.features))

    def fits_now(self, need: Need) -> bool:
        return (self.up and self.could_fit(need) and need.cpus <= self.free_cpus
                and need.memory <= self.free_memory and need.gpus <= self.free_gpus)

    def headroom(self) -> tuple[float, int, int]:
        """Most free capacity first: free CPU share, then free memory, then free GPUs."""
        return (self.free_cpus / max(1, self.total_cpus), self.free_memory, self.free_gpus)


def check_satisfiable(target: str, need: Need, nodes: list[NodeView]) -> None:
    """Unsatisfiable (with the largest offer) unless some eligible known node could ever hold it."""
    local = next(n for n in nodes if n.local)
    if target in ("", local.name):
        eligible = [local]
    elif target == ANY:
        eligible = [n for n in nodes if n.known]
    else:
        eligible = [n for n in nodes if n.name == target]
        if not eligible:
            names = ", ".join(sorted(n.name for n in nodes))
            raise Unsatisfiable(f"Node: no node named {target!r} in this cluster (nodes: {names}; or 'any')")
        if not eligible[0].known:
            return  # not heard from yet: it will say for itself when the job is forwarded
    if any(n.could_fit(need) for n in eligible):
        return
    where = "the largest node offers" if target == ANY else f"node {eligible[0].name} offers"
    if need.container and not any(CONTAINER in n.features for n in eligible):
        raise Unsatisfiable("Container: " + ("no node of this cluster runs containers" if target == ANY else
                                             f"node {eligible[0].name} has no container runtime"))
    if need.gpus and not any(n.total_gpus >= need.gpus for n in eligible):
        raise Unsatisfiable(f"GPUs: asks for {need.gpus} GPUs but {where} {max(n.total_gpus for n in eligible)}")
    if not any(n.total_cpus >= need.cpus for n in eligible):
        raise Unsatisfiable(f"CPUs: asks for {need.cpus} CPUs but {where} {max(n.total_cpus for n in eligible)}")
    if not any(n.total_memory >= need.memory for n in eligible):
        raise Unsatisfiable(f"Memory: asks for {format_size(need.memory)} but {where} "
                            f"{format_size(max(n.total_memory for n in eligible))}")
    raise Unsatisfiable(f"no single node offers {need.cpus} CPUs, {format_size(need.memory)} and {need.gpus} GPUs "
                        "together")


def choose(target: str, need: Need, nodes: list[NodeView], exclude: frozenset[str] = frozenset()) -> str | None:
    """The name of the node to run on now, or None to wait (the target is down, or nothing fits anywhere).

    `exclude` names nodes a requeued job must avoid (the one that failed under it).
    """
    local = next(n for n in nodes if n.local)
    if target in ("", local.name):
        return local.name
    if target != ANY:
        view = next((n for n in nodes if n.name == target), None)
        if view is None:
            raise InvalidArgument(f"Node: no node named {target!r}")
        return target if view.up and not view.drained and target not in exclude else None
    candidates = [n for n in nodes if n.name not in exclude and (n.up or n.local) and not n.drained
                  and n.could_fit(need)]
    if not candidates:
        return None
    if local in candidates and local.fits_now(need):
        return local.name
    fitting = [n for n in candidates if n.fits_now(need)]
    if fitting:
        return max(fitting, key=lambda n: n.headroom()).name
    # Nowhere now: queue where it will fit soonest. Running jobs end in unknown order, so the
    # estimate is the queue ahead of it, then how much is running; this node wins ties.
    return min(candidates, key=lambda n: (n.pending, n.running, not n.local)).name

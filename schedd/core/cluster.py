"""What the engine asks of the cluster, as a protocol: the core names no federation class.

``schedd.cluster`` implements it; ``Engine.federation`` is None on a node without peers. The other
direction (what the cluster asks of the engine: records of jobs placed elsewhere) is the engine's
own public API.
"""

from __future__ import annotations

from typing import Literal, Protocol

from schedd.core.model import Job, JobSpec
from schedd.core.placement import NodeView

RemoteAction = Literal["cancel", "hold", "release", "suspend", "resume", "requeue"]
# What a copy's origin says when the engine is about to release the copy's program: go (granted),
# fenced (it placed the job elsewhere or ended it: the copy stops), failed (it counts this run as
# failed: the copy ends FAILED node-failure, unrun), later (it cannot be asked now).
StartVerdict = Literal["go", "fenced", "failed", "later"]


# Optional members (the engine asks with getattr; a cluster without them takes no arrays or After
# elsewhere): `array_nodes: frozenset[str]` (nodes that take a whole array, a job per task: Slurm
# peers), `takes_array(node) -> bool`, `async submit_array(specs) -> list[Job] | None`,
# `takes_after(spec) -> bool` (a job for spec.node may wait for its After jobs there).
class Cluster(Protocol):
    def views(self) -> list[NodeView]:
        """Every node this one knows, itself included, as placement sees them."""
        ...

    def require_local_fit(self, spec: JobSpec, why: str) -> None:
        """Raise Unsatisfiable unless this node could ever hold the job (it may go nowhere else)."""
        ...

    async def submit(self, spec: JobSpec) -> Job | None:
        """Place a job that names a Node: the record of a job sent elsewhere, or None for here."""
        ...

    async def action(self, job: Job, name: RemoteAction) -> None:
        """Carry out a verb on a job of ours that another node holds or waits to place."""
        ...

    def origin_ready(self, origin: str) -> bool:
        """Whether the copies of origin's jobs may ask it for their start now (else they wait, parked)."""
        ...

    async def may_start(self, job: Job) -> StartVerdict:
        """Ask a copy's origin whether its program may start now (no copy starts without a grant)."""
        ...

    def drained_job(self, job: Job) -> bool:
        """This node drains: take a queued job of ours that may run elsewhere (True), or leave it here (False)."""
        ...

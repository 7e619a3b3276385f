"""The engine: owns the jobs, applies every transition, and keeps store, scheduler and executor in step.

Front ends (D-Bus, the peer API, the dashboard) call the engine's methods with a Caller and
listen to its events (events.py); they hold no job state of their own. Live jobs are in memory
and decide scheduling; the store is the durable copy and the archive of finished jobs, which
the engine reads for jobs no longer in memory: a dependency on an archived job (admission, and
submit's check that After names a known job), GetJob, a listing of old ones, and a verb on one
(Requeue runs it again; the others answer that it has finished).

One Engine, one concern per module, each a mixin that owns its part of the state:
  table.py      the job table, the transition point (_set, _end), listener events
  access.py     Caller and who may act on a job
  submit.py     submit_many: validate -> route -> create -> commit
  admission.py  dependencies, array caps: when a pending job reaches the scheduler
  arrays.py     arrays as one record (ArrayTasks): tasks become jobs when about to run or named
  running.py    scheduling passes, starts, ends
  limits.py     time limits
  verbs.py      cancel, hold, release, suspend, resume, requeue
  recovery.py   start-up: reload and re-adopt
  loading.py    the bulk of a long queue, read after start-up
  records.py    what the federation calls: records of jobs placed on peers, fencing
  sweep.py      finished jobs leaving memory and the store
  draining.py   a drain of this node: nothing new starts, what runs finishes
"""

from __future__ import annotations

from typing import Any

from schedd.config import Config
from schedd.core.cluster import Cluster
from schedd.core.engine.access import MANAGE_ACTION, PRIORITY_ACTION, Access, Caller
from schedd.core.engine.admission import Admission
from schedd.core.engine.arrays import Arrays
from schedd.core.engine.draining import Drain, Draining
from schedd.core.engine.events import COUNTS, RESOURCES, Listener
from schedd.core.engine.limits import TimeLimits
from schedd.core.engine.loading import Loading
from schedd.core.engine.records import Records
from schedd.core.engine.recovery import Recovery
from schedd.core.engine.running import Runs
from schedd.core.engine.submit import Submission, _Slicer
from schedd.core.engine.sweep import Sweep
from schedd.core.engine.table import JobTable
from schedd.core.engine.verbs import Verbs
from schedd.core.ledger import Ledger
from schedd.core.quota import Quotas
from schedd.core.scheduler import Scheduler
from schedd.core.spec import Limits
from schedd.core.store import Store
from schedd.executor import Executor

__all__ = ["COUNTS", "Drain", "MANAGE_ACTION", "PRIORITY_ACTION", "RESOURCES", "Caller", "Engine", "Listener", "_Slicer"]


class Engine(Draining, Arrays, JobTable, Access, Submission, Admission, Runs, TimeLimits, Verbs, Recovery, Loading, Records, Sweep):
    def __init__(self, config: Config, store: Store, *, user_mode: bool = False) -> None:
        self.config = config
        self.store = store
        self.user_mode = user_mode
        self.ledger = Ledger(config.cpu_ids, config.memory, config.gpu_ids)
        self.executor: Executor | None = None
        self.authorize_other: Any = None  # async (Caller, action) -> bool, e.g. polkit
        self.federation: Cluster | None = None  # set by the daemon when [[peers]] are configured
        self.quotas = Quotas(config)  # queued jobs and their argv+environment bytes, per uid
        self.jobs_dir = config.state_dir / "jobs"
        self._next_id = 1
        self._init_table()
        self._init_admission()
        self._init_runs()
        self._init_limits()
        self._init_loading()
        self._init_arrays()
        self._init_draining()
        self.scheduler = Scheduler(self.ledger, config.policy, running=self._running)

    def limits(self) -> Limits:
        """What a submission is checked against: this node's resources and rules, and the cluster's nodes."""
        c = self.config
        return Limits(
            node_name=c.node_name, total_cpus=self.ledger.total_cpus, total_memory=self.ledger.total_memory,
            total_gpus=self.ledger.total_gpus, default_memory=c.default_memory, min_memory=c.min_memory,
            max_argv_bytes=c.max_argv_bytes, max_env_entries=c.max_env_entries,
            default_time_usec=c.default_time_usec, max_time_usec=c.max_time_usec, max_array_tasks=c.max_array_tasks,
            cluster=self.federation.views if self.federation is not None else None,
            array_nodes=getattr(self.federation, "array_nodes", frozenset()),
        )

    async def shutdown(self) -> None:
        """Stop watching; running jobs go on in their scopes and are re-adopted at the next start."""
        self.begin_shutdown()
        if getattr(self, "_sweeper", None):
            self._sweeper.cancel()
        if getattr(self, "_purger", None):
            self._purger.cancel()
        if self._loader is not None:
            self._loader.cancel()
        await self.store.drain()
        if self.executor is not None:
            await self.executor.close()

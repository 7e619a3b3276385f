"""The resource ledger: which CPU ids, how much memory and which GPU indices are free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Allocation:
    cpus: tuple[int, ...]
    memory: int
    gpus: tuple[int, ...] = ()


class LedgerConflict(Exception):
    """A claimed allocation overlaps one already held (only at recovery)."""


class Ledger:
    """Free resources by id. Never hands out an id twice; never goes below zero memory."""

    def __init__(self, cpu_ids: list[int], memory: int, gpu_ids: list[int] | None = None) -> None:
        self.cpu_ids = tuple(sorted(set(cpu_ids)))
        self.gpu_ids = tuple(sorted(set(gpu_ids or ())))
        self.total_memory = memory
        self._free_cpus = set(self.cpu_ids)
        self._free_gpus = set(self.gpu_ids)
        self.free_memory = memory

    @property
    def total_cpus(self) -> int:
        return len(self.cpu_ids)

    @property
    def total_gpus(self) -> int:
        return len(self.gpu_ids)

    @property
    def free_cpus(self) -> int:
        return len(self._free_cpus)

    @property
    def free_gpus(self) -> int:
        return len(self._free_gpus)

    def fits(self, cpus: int, memory: int, gpus: int = 0) -> bool:
        return cpus <= len(self._free_cpus) and memory <= self.free_memory and gpus <= len(self._free_gpus)

    def allocate(self, cpus: int, memory: int, gpus: int = 0) -> Allocation | None:
        """Take the lowest free ids (keeps jobs packed on the first cores), or None if it does not fit."""
        if not self.fits(cpus, memory, gpus):
            return None
        cpu_ids = tuple(sorted(self._free_cpus)[:cpus])
        gpu_ids = tuple(sorted(self._free_gpus)[:gpus])
        self._free_cpus.difference_update(cpu_ids)
        self._free_gpus.difference_update(gpu_ids)
        self.free_memory -= memory
        return Allocation(cpu_ids, memory, gpu_ids)

    def claim(self, alloc: Allocation) -> None:
        """Take exactly these ids (re-adopting a running job after a restart)."""
        busy_cpus = set(alloc.cpus) - self._free_cpus
        busy_gpus = set(alloc.gpus) - self._free_gpus
        if busy_cpus or busy_gpus or alloc.memory > self.free_memory:
            raise LedgerConflict(
                f"cpus {sorted(busy_cpus)} gpus {sorted(busy_gpus)} memory {alloc.memory} > free {self.free_memory}"
            )
        self._free_cpus.difference_update(alloc.cpus)
        self._free_gpus.difference_update(alloc.gpus)
        self.free_memory -= alloc.memory

    def release(self, alloc: Allocation) -> None:
        self._free_cpus.update(c for c in alloc.cpus if c in self.cpu_ids)
        self._free_gpus.update(g for g in alloc.gpus if g in self.gpu_ids)
        self.free_memory = min(self.total_memory, self.free_memory + alloc.memory)

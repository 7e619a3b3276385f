"""The resource ledger: CPU ids, memory and GPU indices, never handed out twice."""

from __future__ import annotations

import pytest

from schedd.core.ledger import Allocation, Ledger, LedgerConflict

GiB = 1 << 30


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(cpu_ids=[0, 1, 2, 3], memory=8 * GiB, gpu_ids=[0, 1])


def test_totals_and_initial_free(ledger: Ledger) -> None:
    assert ledger.total_cpus == 4
    assert ledger.free_cpus == 4
    assert ledger.total_memory == ledger.free_memory == 8 * GiB
    assert ledger.total_gpus == ledger.free_gpus == 2


def test_duplicate_and_unsorted_ids_are_normalised() -> None:
    led = Ledger(cpu_ids=[3, 1, 1, 2], memory=GiB, gpu_ids=[1, 0, 1])
    assert led.cpu_ids == (1, 2, 3)
    assert led.gpu_ids == (0, 1)
    assert led.total_cpus == 3 and led.total_gpus == 2


def test_allocate_takes_lowest_ids_first(ledger: Ledger) -> None:
    a = ledger.allocate(2, GiB, 1)
    assert a == Allocation(cpus=(0, 1), memory=GiB, gpus=(0,))
    b = ledger.allocate(1, GiB)
    assert b == Allocation(cpus=(2,), memory=GiB, gpus=())
    assert ledger.free_cpus == 1
    assert ledger.free_memory == 6 * GiB
    assert ledger.free_gpus == 1


def test_allocate_reuses_lowest_released_ids(ledger: Ledger) -> None:
    a = ledger.allocate(1, GiB)
    b = ledger.allocate(2, GiB)
    assert a.cpus == (0,) and b.cpus == (1, 2)
    ledger.release(a)
    c = ledger.allocate(2, GiB)
    # 0 is free again and 3 was never taken: the two lowest free ids.
    assert c.cpus == (0, 3)


def test_allocate_returns_none_and_changes_nothing_when_it_does_not_fit(ledger: Ledger) -> None:
    assert ledger.allocate(5, GiB) is None
    assert ledger.allocate(1, 9 * GiB) is None
    assert ledger.allocate(1, GiB, 3) is None
    assert ledger.free_cpus == 4
    assert ledger.free_memory == 8 * GiB
    assert ledger.free_gpus == 2


def test_release_returns_everything(ledger: Ledger) -> None:
    a = ledger.allocate(3, 5 * GiB, 2)
    assert ledger.free_cpus == 1 and ledger.free_memory == 3 * GiB and ledger.free_gpus == 0
    ledger.release(a)
    assert ledger.free_cpus == 4
    assert ledger.free_memory == 8 * GiB
    assert ledger.free_gpus == 2
    # The same ids can be handed out again.
    assert ledger.allocate(4, 8 * GiB, 2) == Allocation((0, 1, 2, 3), 8 * GiB, (0, 1))


def test_release_ignores_ids_the_node_does_not_have_and_caps_memory(ledger: Ledger) -> None:
    ledger.release(Allocation(cpus=(7, 99), memory=GiB, gpus=(5,)))
    assert ledger.free_cpus == 4
    assert ledger.free_gpus == 2
    assert ledger.free_memory == 8 * GiB  # never above the total


def test_memory_accounting_exact(ledger: Ledger) -> None:
    a = ledger.allocate(1, 3 * GiB)
    b = ledger.allocate(1, 5 * GiB)
    assert a is not None and b is not None
    assert ledger.free_memory == 0
    # CPUs are free but memory is not.
    assert ledger.allocate(1, 1) is None
    ledger.release(a)
    assert ledger.free_memory == 3 * GiB
    assert ledger.allocate(1, 3 * GiB + 1) is None
    assert ledger.allocate(1, 3 * GiB) is not None


def test_gpu_accounting(ledger: Ledger) -> None:
    a = ledger.allocate(1, GiB, 1)
    b = ledger.allocate(1, GiB, 1)
    assert a.gpus == (0,) and b.gpus == (1,)
    assert ledger.free_gpus == 0
    assert ledger.allocate(1, GiB, 1) is None
    assert ledger.allocate(1, GiB, 0) is not None  # a CPU-only job still fits
    ledger.release(b)
    assert ledger.allocate(1, GiB, 1).gpus == (1,)


def test_fits(ledger: Ledger) -> None:
    assert ledger.fits(4, 8 * GiB, 2)
    assert not ledger.fits(5, GiB)
    assert not ledger.fits(1, 8 * GiB + 1)
    assert not ledger.fits(1, GiB, 3)
    ledger.allocate(3, 6 * GiB, 1)
    assert ledger.fits(1, 2 * GiB, 1)
    assert not ledger.fits(2, GiB)
    assert not ledger.fits(1, 2 * GiB + 1)
    assert not ledger.fits(1, GiB, 2)


def test_fits_does_not_allocate(ledger: Ledger) -> None:
    assert ledger.fits(4, 8 * GiB, 2)
    assert ledger.free_cpus == 4 and ledger.free_memory == 8 * GiB and ledger.free_gpus == 2


def test_claim_takes_exactly_those_ids(ledger: Ledger) -> None:
    ledger.claim(Allocation(cpus=(1, 3), memory=2 * GiB, gpus=(1,)))
    assert ledger.free_cpus == 2
    assert ledger.free_memory == 6 * GiB
    assert ledger.free_gpus == 1
    # Later allocations get what is left, lowest first.
    assert ledger.allocate(2, GiB, 1) == Allocation((0, 2), GiB, (0,))


@pytest.mark.parametrize(
    "second",
    [
        Allocation(cpus=(2,), memory=GiB),  # CPU 2 already held
        Allocation(cpus=(3,), memory=GiB, gpus=(0,)),  # GPU 0 already held
        Allocation(cpus=(3,), memory=7 * GiB),  # more memory than is left
        Allocation(cpus=(9,), memory=GiB),  # a CPU this node does not have
    ],
)
def test_claim_conflict_raises_and_changes_nothing(ledger: Ledger, second: Allocation) -> None:
    ledger.claim(Allocation(cpus=(1, 2), memory=2 * GiB, gpus=(0,)))
    with pytest.raises(LedgerConflict):
        ledger.claim(second)
    assert ledger.free_cpus == 2
    assert ledger.free_memory == 6 * GiB
    assert ledger.free_gpus == 1


def test_claim_of_an_allocated_cpu_conflicts(ledger: Ledger) -> None:
    a = ledger.allocate(1, GiB)
    with pytest.raises(LedgerConflict, match=r"cpus \[0\]"):
        ledger.claim(Allocation(cpus=a.cpus, memory=GiB))

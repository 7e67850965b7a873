"""A results writer for spawned processes (test_sweep.py): a module that imports no torch, so that each
spawned child starts in a fraction of a second instead of re-importing the test module's libraries."""

from __future__ import annotations

from steerguide.evaluate.results import ResultsStore


def append_many(path: str, worker: int, barrier) -> None:
    store = ResultsStore(path)
    barrier.wait(60)  # start together: the writers must overlap for the test to mean anything
    for i in range(60):  # both workers write the same keys, in opposite orders
        k = i if worker == 0 else 59 - i
        store.append([{"key": f"k{k}", "worker": worker, "pad": "x" * 500}])

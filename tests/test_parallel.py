"""lapa.parallel: results and their order, in-process and in spawned workers, one pool for several maps."""

from __future__ import annotations

import math
import os

import pytest

from lapa.parallel import WorkerPool, parallel_map


def test_in_process_when_workers_is_zero_or_one_item():
    assert list(parallel_map(_pid, [], 2)) == []
    assert set(parallel_map(_pid, range(3), 0, progress=False)) == {os.getpid()}
    assert list(parallel_map(_pid, [1], 4, progress=False)) == [os.getpid()]  # one item: no process started


def test_spawned_workers_keep_order_or_return_everything():
    items = list(range(12))
    expected = [math.factorial(i) for i in items]
    assert list(parallel_map(math.factorial, items, 2, desc="ordered", progress=False)) == expected
    unordered = list(parallel_map(math.factorial, items, 2, ordered=False, progress=False))
    assert sorted(unordered) == sorted(expected)


def test_one_pool_serves_several_maps():
    with WorkerPool(2) as pool:
        first = list(pool.map(_pid, range(4), progress=False))
        second = list(pool.map(math.factorial, range(5), progress=False))
    assert os.getpid() not in first and second == [1, 1, 2, 6, 24]
    with WorkerPool(0) as pool:
        assert list(pool.map(_pid, range(2), progress=False)) == [os.getpid()] * 2


def test_errors_in_a_worker_reach_the_caller():
    with pytest.raises(ValueError):
        list(parallel_map(math.factorial, [3, -1, 4], 2, progress=False))


def _pid(_: object) -> int:
    """Which process computed an item (module-level: spawned workers import it by name)."""
    return os.getpid()

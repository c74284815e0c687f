"""The export's read-ahead: items in order, errors raised in the consumer, the thread
stopped and joined when the consumer stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from worker.prefetch import prefetch


def test_items_in_order_across_batches() -> None:
    assert list(prefetch(iter(range(1234)), batch=7, depth=2)) == list(range(1234))
    assert list(prefetch(iter([]))) == []


def test_an_error_in_the_source_is_raised_in_the_consumer_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield from range(10)
        raise ValueError("the cursor broke")

    got: list[int] = []
    with pytest.raises(ValueError, match="the cursor broke"):
        for item in prefetch(source(), batch=3):
            got.append(item)
    assert got == list(range(10))  # every item read before the error


def test_stopping_early_closes_the_source_in_its_thread_and_joins() -> None:
    closed_in: list[str] = []

    def source() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed_in.append(threading.current_thread().name)

    stream = prefetch(source(), batch=10, depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed_in == ["reenrich-prefetch"]
    assert not any(t.name == "reenrich-prefetch" for t in threading.enumerate())

"""Page sizing and throttling (pure)."""

from __future__ import annotations

from worker.jobs.pacing import MAX_BATCH, MIN_BATCH, Pacer


def test_size_shrinks_toward_the_target_and_grows_back_within_bounds() -> None:
    pacer = Pacer(target_seconds=1.0)
    start = pacer.next_size()
    pacer.after_page(start, 4.0)  # four times too slow: halves at most per step
    assert pacer.next_size() == start // 2
    for _ in range(20):
        pacer.after_page(pacer.next_size(), 10.0)
    assert pacer.next_size() == MIN_BATCH
    for _ in range(20):
        pacer.after_page(pacer.next_size(), 0.01)
    assert pacer.next_size() == MAX_BATCH


def test_short_last_page_does_not_change_the_size() -> None:
    pacer = Pacer(target_seconds=1.0)
    pacer.after_page(3, 5.0)
    assert pacer.next_size() == pacer.size == 500


def test_fixed_size_never_changes() -> None:
    pacer = Pacer(fixed_size=37, target_seconds=0.1)
    pacer.after_page(37, 10.0)
    assert pacer.next_size() == 37


def test_rate_cap_and_sleep_give_a_pause() -> None:
    assert Pacer(sleep_seconds=0.25).after_page(10, 0.01) == 0.25
    capped = Pacer(max_rows_per_second=100)
    pause = capped.after_page(500, 0.01)  # 500 rows at 100/s: about 5 s ahead
    assert 4.0 < pause <= 5.0

"""The dashboard's throughput series: closed buckets are read once, then kept."""

from __future__ import annotations

from dispatcher.feed import BUCKET_SECONDS, WINDOW_BUCKETS, Throughput


def rows(**per_bucket: int) -> list[dict[str, object]]:
    return [{"bucket": int(b[1:]), "status": "completed", "n": n} for b, n in per_bucket.items()]


def test_the_first_read_covers_the_window_and_later_reads_only_the_open_buckets() -> None:
    series = Throughput()
    now = 1000 * BUCKET_SECONDS + 7  # 7 s into bucket 1000
    assert series.since(now) == (1000 - WINDOW_BUCKETS + 1) * BUCKET_SECONDS
    first = series.update(now, series.since(now), rows(b950=4, b999=2, b1000=1))
    assert len(first["series"]["completed"]) == WINDOW_BUCKETS
    assert first["series"]["completed"][-1] == 1 and first["series"]["completed"][-2] == 2
    assert sum(first["series"]["completed"]) == 7
    # bucket 999 ended 7 s ago (frozen); bucket 1000 is still open
    assert series.since(now + 1) == 1000 * BUCKET_SECONDS
    second = series.update(now + 1, series.since(now + 1), rows(b1000=3))
    assert second["series"]["completed"][-3:] == [0, 2, 3]
    assert sum(second["series"]["completed"]) == 9  # the frozen buckets were not read again


def test_a_bucket_is_read_again_until_it_ended_a_while_ago() -> None:
    series = Throughput()
    now = 1000 * BUCKET_SECONDS + 2  # bucket 999 ended 2 s ago: a late commit may still land
    series.update(now, series.since(now), rows(b999=1))
    assert series.since(now) == 999 * BUCKET_SECONDS
    later = now + 5
    update = series.update(later, series.since(later), rows(b999=2))
    assert update["series"]["completed"][-2] == 2
    assert series.since(later) == 1000 * BUCKET_SECONDS


def test_buckets_that_leave_the_window_are_forgotten_and_the_rate_is_per_second() -> None:
    series = Throughput()
    now = 1000 * BUCKET_SECONDS + 9
    series.update(now, series.since(now), rows(b941=60, b995=30, b999=30))
    assert 941 in series.frozen
    later = now + 2 * BUCKET_SECONDS
    update = series.update(later, series.since(later), [])
    assert 941 not in series.frozen and min(series.frozen) >= 1002 - WINDOW_BUCKETS + 1
    # the last minute: 6 full buckets (996-1001) plus 9 s of bucket 1002 hold 30 completions
    assert update["done_per_second"] == round(30 / (60 + 9), 2)

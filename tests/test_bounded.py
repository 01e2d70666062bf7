"""The one eviction rule of the call path's caches (fusile/bounded.py)."""

from fusile.bounded import Bounded


def test_a_full_cache_drops_its_oldest_quarter_and_keeps_the_rest() -> None:
    b: Bounded[int, int] = Bounded(8)
    for i in range(8):
        assert b.put(i, i * i) == i * i
    b.put(3, -1)  # replacing an entry evicts nothing
    assert len(b) == 8 and b[3] == -1
    b.put(8, 64)
    assert sorted(b) == [2, 3, 4, 5, 6, 7, 8]  # 0 and 1 (the oldest quarter) went
    for i in range(9, 100):
        b.put(i, i)
        assert len(b) <= 8 and b[i] == i

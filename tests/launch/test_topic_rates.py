"""`topic hz` on a DDS topic: the rate is what arrived over the window (as for shm channels and
as `bw` counts bytes); the gaps give the periodic rate beside it."""
from __future__ import annotations

import pytest

from launch.inspect_topics import _rate_dds

S = 1_000_000_000


def test_a_burst_is_not_a_high_rate():
    m = _rate_dds("request", [("gw", 1 * S), ("gw", 1 * S + 3_500_000)], 200, 5.0)
    assert m["rate_hz"] == pytest.approx(0.4) and m["bytes_per_s"] == pytest.approx(40)
    assert m["gap_rate_hz"] == pytest.approx(1 / 0.0035)
    assert m["min_gap_s"] == m["max_gap_s"] == pytest.approx(0.0035)


def test_periodic_writers_add_up():
    stamps = [(w, t * S + k) for k, w in enumerate("abcd") for t in range(5)]   # 1 Hz each
    m = _rate_dds("heartbeat", stamps, 0, 5.0)
    assert m["writers"] == 4 and m["rate_hz"] == pytest.approx(4.0)
    assert m["gap_rate_hz"] == pytest.approx(4.0)


def test_nothing_arrived():
    m = _rate_dds("request", [], 0, 2.0)
    assert m["messages"] == 0 and m["rate_hz"] == 0 and "gap_rate_hz" not in m

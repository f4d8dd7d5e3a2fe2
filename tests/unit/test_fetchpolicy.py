"""The worker consumer's fetches batch while records come often and return at once while they
come rarely (agents.fetchpolicy), with no flapping between the two."""

from __future__ import annotations

from agents.app import FETCH_MAX_WAIT_MS
from agents.fetchpolicy import BUSY, BUSY_RATE, LIGHT, LIGHT_RATE, FetchPolicy


def test_light_until_records_come_often_then_busy_until_they_come_rarely() -> None:
    policy = FetchPolicy()
    assert policy.observe(0, 100.0) is LIGHT  # nothing to compare with yet
    assert policy.observe(400, 101.0) is LIGHT  # 400 records/s
    assert policy.observe(400 + int(BUSY_RATE), 102.0) is BUSY
    assert policy.rate == BUSY_RATE
    # Between the two rates: stays what it is (no flapping at the edge).
    assert policy.observe(2000 + 700, 103.0) is BUSY
    assert policy.observe(2700 + int(LIGHT_RATE) - 1, 104.0) is LIGHT
    assert policy.observe(3199 + 700, 105.0) is LIGHT


def test_the_rate_is_per_second_whatever_the_tick() -> None:
    policy = FetchPolicy()
    policy.observe(0, 0.0)
    assert policy.observe(int(BUSY_RATE) // 2, 0.5) is BUSY  # half a second at the busy rate
    assert policy.observe(int(BUSY_RATE) // 2, 0.5) is BUSY  # no time passed: unchanged
    assert policy.observe(int(BUSY_RATE) // 2, 1.5) is LIGHT  # a second without a record


def test_the_two_settings() -> None:
    assert (LIGHT.min_bytes, LIGHT.max_wait_ms) == (1, FETCH_MAX_WAIT_MS)
    assert BUSY.min_bytes > 1
    assert BUSY.max_wait_ms <= 2  # what a record may wait more at the broker under load
    assert LIGHT_RATE < BUSY_RATE

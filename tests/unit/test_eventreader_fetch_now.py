"""The worker's reader of runs.events writes its next fetch at once only while its fetches return
with the first record (agents.eventreader.EventReader.fetch; the behaviour of ``fetch_now`` is
tested on the broker in tests/integration/test_quirks.py)."""

from __future__ import annotations

from agents.eventreader import EventReader
from agents.fetchpolicy import BUSY, LIGHT


def test_the_next_fetch_goes_at_once_only_while_fetches_do_not_batch() -> None:
    reader = EventReader("127.0.0.1:1", "t.events", max_records=10)
    assert reader._fetch_now  # a reader starts light
    reader.fetch(BUSY)
    assert not reader._fetch_now
    reader.fetch(LIGHT)
    assert reader._fetch_now

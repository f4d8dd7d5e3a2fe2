"""The worker's consumer asks the broker to hold an empty fetch for ``FETCH_MAX_WAIT_MS``, not
Faust's fixed 1.5 s (agents.app explains the stall that caused)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from agents.app import FETCH_MAX_WAIT_MS, _short_fetch_wait, create_app
from agents.config import Settings
from agents.quirks import consumer_fetcher


async def test_the_fetch_wait_is_set_at_every_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings(app_id="fetch-wait-test"))
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500)
    thread = SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher))
    monkeypatch.setattr(app.consumer, "_thread", thread)
    assert consumer_fetcher(app) is fetcher
    await app.on_partitions_assigned.send(set())  # the receiver create_app connected
    assert fetcher._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1500


async def test_a_fetcher_not_found_is_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(app_id="fetch-wait-test"))
    monkeypatch.setattr(app.consumer, "_thread", SimpleNamespace(_consumer=None))
    with caplog.at_level(logging.WARNING, logger="runstream.app"):
        await _short_fetch_wait(app, set())
    assert "fetcher was not found" in caplog.text

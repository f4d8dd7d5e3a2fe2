"""The log is kept whole: runstream creates its input topics with unlimited retention and warns
about existing topics whose settings would delete history or lose acknowledged events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from agents.config import Settings
from agents.resources import (
    _describe_configs,
    check_topic_config,
    ensure_topics,
    topic_configs,
    topic_warnings,
)
from tests.harness import make_settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


def _settings(unique: str, kafka: str) -> Settings:
    return make_settings(unique, kafka, "127.0.0.1:2379", "file:///tmp/unused", partitions=2)


def _gauge(topic: str, setting: str) -> float | None:
    return REGISTRY.get_sample_value(
        "runstream_topic_config_unsafe", {"topic": topic, "setting": setting}
    )


async def test_input_topics_are_created_with_unlimited_retention(
    kafka_bootstrap: str, unique: str, admin: AIOKafkaAdminClient
) -> None:
    s = _settings(unique, kafka_bootstrap)
    await ensure_topics(s)
    configs = await _describe_configs(
        admin, [s.topic_events, s.topic_setup_errors, s.topic_phases, s.topic_dlq]
    )
    assert configs[s.topic_events]["retention.ms"] == "-1"
    assert configs[s.topic_setup_errors]["retention.ms"] == "-1"
    # The derived topics keep the broker's default: they can be rebuilt.
    assert configs[s.topic_phases]["retention.ms"] != "-1"
    tasks = await _describe_configs(admin, [s.topic_tasks])
    assert tasks[s.topic_tasks]["retention.ms"] == configs[s.topic_phases]["retention.ms"]
    assert topic_warnings() == []
    for topic in (s.topic_events, s.topic_setup_errors):
        assert _gauge(topic, "retention.ms") == 0


async def test_a_retention_setting_is_honoured(
    kafka_bootstrap: str, unique: str, admin: AIOKafkaAdminClient
) -> None:
    s = replace(_settings(unique, kafka_bootstrap), events_retention_ms=3_600_000)
    await ensure_topics(s)
    configs = await _describe_configs(admin, [s.topic_events])
    assert configs[s.topic_events]["retention.ms"] == "3600000"
    # Finite retention was asked for, and it is still reported as unsafe.
    assert {(w.topic, w.setting) for w in topic_warnings()} == {
        (s.topic_events, "retention.ms"),
        (s.topic_setup_errors, "retention.ms"),
    }


async def test_existing_unsafe_topics_are_reported(
    kafka_bootstrap: str, unique: str, admin: AIOKafkaAdminClient
) -> None:
    s = _settings(unique, kafka_bootstrap)
    await admin.create_topics(
        [
            NewTopic(
                s.topic_events,
                num_partitions=2,
                replication_factor=1,
                topic_configs={
                    "retention.ms": "604800000",
                    "retention.bytes": "1073741824",
                    "cleanup.policy": "compact",
                    "unclean.leader.election.enable": "true",
                },
            )
        ]
    )
    for _ in range(100):  # the new topic's metadata reaches the broker's cache shortly after
        if (await admin.describe_topics([s.topic_events]))[0]["partitions"]:
            break
        await asyncio.sleep(0.1)
    await ensure_topics(s)
    found = {(w.topic, w.setting): w for w in topic_warnings()}
    assert set(found) == {
        (s.topic_events, "retention.ms"),
        (s.topic_events, "retention.bytes"),
        (s.topic_events, "cleanup.policy"),
        (s.topic_events, "unclean.leader.election.enable"),
    }
    assert found[(s.topic_events, "retention.ms")].value == "604800000"
    assert _gauge(s.topic_events, "cleanup.policy") == 1
    assert _gauge(s.topic_events, "min.insync.replicas") == 0
    assert _gauge(s.topic_setup_errors, "retention.ms") == 0
    assert topic_warnings()[0].as_dict()["topic"] == s.topic_events


async def test_an_output_topic_added_by_an_upgrade_gets_the_partitions_of_the_log(
    kafka_bootstrap: str, unique: str, admin: AIOKafkaAdminClient
) -> None:
    # A deployment whose topics were made with 3 partitions, from before runs.tasks existed,
    # upgraded with settings that say 2: its new runs.tasks must follow runs.events' count.
    old = _settings(unique, kafka_bootstrap)
    await admin.create_topics(
        [
            NewTopic(t, num_partitions=3, replication_factor=1)
            for t in (old.topic_events, old.topic_phases, old.topic_refusals)
        ]
    )
    for _ in range(100):
        if all(d["partitions"] for d in await admin.describe_topics([old.topic_events])):
            break
        await asyncio.sleep(0.1)
    await ensure_topics(old)
    [tasks] = await admin.describe_topics([old.topic_tasks])
    assert len(tasks["partitions"]) == 3
    [requests] = await admin.describe_topics([old.topic_requests])
    assert len(requests["partitions"]) == 2  # a topic with no partition rule: as the settings say


def test_replication_above_one_asks_for_replication_minus_one_in_sync() -> None:
    s = Settings(replication=3)
    assert topic_configs(s, s.topic_events) == {"retention.ms": "-1", "min.insync.replicas": "2"}
    assert topic_configs(s, s.topic_phases) == {"min.insync.replicas": "2"}
    assert topic_configs(s, s.topic_tasks) == {"min.insync.replicas": "2"}
    assert topic_configs(Settings(), Settings().topic_phases) == {}


def test_few_in_sync_replicas_are_unsafe_only_with_three_replicas_or_more() -> None:
    safe = {"retention.ms": "-1", "min.insync.replicas": "1"}
    assert check_topic_config("t", safe, replication=1) == []
    assert check_topic_config("t", safe, replication=2) == []
    [w] = check_topic_config("t", safe, replication=3)
    assert (w.setting, w.value) == ("min.insync.replicas", "1")
    assert check_topic_config("t", {**safe, "min.insync.replicas": "2"}, replication=3) == []

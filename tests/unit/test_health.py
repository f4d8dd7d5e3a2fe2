"""``/healthz``'s detail (``agents.health.readiness``): what is not ready, with the progress of
each owned partition, the lag and the topic warnings."""

from __future__ import annotations

from agents.health import Lag, readiness
from agents.resources import TopicWarning
from tests.unit.test_owner import Rig, checkpointed, creation, loaded


async def test_loading_catching_up_and_serving_partitions_are_told_apart() -> None:
    loading, catching, serving = Rig(), Rig(), Rig()
    for rig in (catching, serving):
        rig.append(creation(1))
        rig.append(creation(2))
        await rig.owner.load()  # the log ended at offset 2 when it was assigned
    await serving.feed()
    catching.fed = 1
    await catching.owner.handle(0, catching.log.values("runs.events")[0], None)
    owners = {0: loading.owner, 1: catching.owner, 2: serving.owner}
    lag = Lag(records={1: 1, 2: 0}, seconds={1: 2.5, 2: 0.0}, index=3, at=1.0)
    warn = TopicWarning(topic="runs.events", setting="retention.ms", value="1", why="deleted")
    got = readiness(owners, index_loaded=False, lag=lag, warnings=[warn])
    assert got["ready"] is False
    assert got["not_ready"] == [
        "partition 0 is loading its checkpoint",
        "partition 1 is catching up with the log (1 records left)",
        "the run index is not loaded yet",
    ]
    rows = {r["partition"]: r for r in got["partitions"]}
    assert rows[0] == {"partition": 0, "state": "loading"}
    assert rows[1]["state"] == "catching_up"
    assert (rows[1]["records_to_catch_up"], rows[1]["lag_records"], rows[1]["lag_seconds"]) == (1, 1, 2.5)  # fmt: skip
    assert rows[2]["state"] == "serving"
    assert got["index"] == {"loaded": False, "lag_records": 3}
    assert got["topic_warnings"] == [
        {"topic": "runs.events", "setting": "retention.ms", "value": "1", "why": "deleted"}
    ]
    # Ready once every owned partition serves and the index is loaded; warnings do not matter.
    ready = readiness({2: serving.owner}, index_loaded=True, lag=lag, warnings=[warn])
    assert (ready["ready"], ready["not_ready"]) == (True, [])


async def test_a_partition_that_lost_offsets_to_retention_says_so_and_stays_ready() -> None:
    rig, values = await checkpointed(4, 1)  # covers offset 0
    rig.log.starts[("runs.events", 0)] = 3  # offsets 1 and 2 expired
    owner = rig.new_owner()
    await owner.load()
    await owner.handle(3, values[3], None)
    got = readiness({0: owner}, index_loaded=True, lag=Lag())
    assert got["ready"] is True
    [row] = got["partitions"]
    assert row["state"] == "serving"
    assert row["offsets_lost"] == {"from": 1, "to": 3, "count": 2}
    # A partition that lost nothing has no such field.
    fresh = await loaded()
    assert "offsets_lost" not in readiness({0: fresh.owner}, index_loaded=True)["partitions"][0]

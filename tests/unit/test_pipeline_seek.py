"""The wiring's seek (``MaterializerService.seek``, the owner's ``OwnerHooks.seek``): it waits for
Faust's flow to run again after a rebalance (a batch Faust drops meanwhile makes it seek back to
the committed offsets, which would undo this seek) and seeks in the consumer's thread
(``seek_wait``), never with Faust's plain ``seek`` from the event loop's thread."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from agents.materializer_service import MaterializerService


class FakeConsumer:
    def __init__(self, *, flow_active: bool) -> None:
        self.flow_active = flow_active
        self.can_resume_flow = asyncio.Event()
        self.seeks: list[dict[TP, int]] = []

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        assert self.flow_active, "seeked while the flow was stopped"
        self.seeks.append(dict(partitions))

    async def seek(self, partition: TP, offset: int) -> None:
        raise AssertionError("Faust's plain seek runs aiokafka from the wrong thread")

    def resume_flow(self) -> None:
        self.flow_active = True
        self.can_resume_flow.set()


def wiring(consumer: FakeConsumer) -> SimpleNamespace:
    return SimpleNamespace(
        app=SimpleNamespace(consumer=consumer),
        settings=SimpleNamespace(topic_events="runs.events"),
    )


async def test_the_seek_goes_through_the_consumers_thread() -> None:
    consumer = FakeConsumer(flow_active=True)
    await MaterializerService.seek(wiring(consumer), 3, 17)  # type: ignore[arg-type]
    assert consumer.seeks == [{TP("runs.events", 3): 17}]


async def test_the_seek_waits_until_the_flow_runs_again() -> None:
    consumer = FakeConsumer(flow_active=False)
    seek = asyncio.ensure_future(MaterializerService.seek(wiring(consumer), 0, 5))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not seek.done()
    assert consumer.seeks == []
    consumer.resume_flow()
    await asyncio.wait_for(seek, 1)
    assert consumer.seeks == [{TP("runs.events", 0): 5}]

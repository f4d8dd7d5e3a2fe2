"""An in-memory ``api.ports.DeadLetters``: dead letters as records, redrive that only says."""

from __future__ import annotations

from datetime import UTC, datetime

from api.dlq import (
    DeadLetter,
    DeadLetterPage,
    DeadLetterSummary,
    DlqCursor,
    DlqSelection,
    PageBuilder,
    RedriveItem,
    RedriveResult,
    sort_key,
    value_of,
)

__all__ = ["FakeDeadLetters", "dead_letter"]


def dead_letter(
    partition: int,
    offset: int,
    *,
    reason: str = "undecodable",
    value: bytes = b'{"not": "an event"}',
    timestamp_ms: int = 1_700_000_000_000,
    source_partition: int = 0,
    truncated_from: int | None = None,
) -> tuple[int, DeadLetter]:
    """(timestamp_ms, a dead letter) as the worker would show it."""
    when = datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return timestamp_ms, DeadLetter(
        id=f"{partition}:{offset}",
        partition=partition,
        offset=offset,
        time=when,
        reason=reason,
        message=f"{reason}: a test record",
        source_topic="runs.events",
        source_partition=source_partition,
        source_offset=offset,
        size=len(value),
        truncated_from=truncated_from,
        key=None,
        headers={"runstream-error": reason, "runstream-source-topic": "runs.events"},
        truncated=truncated_from is not None,
        value=value_of(value),
    )


class FakeDeadLetters:
    def __init__(self) -> None:
        self.records: list[tuple[int, DeadLetter]] = []
        self.redriven: list[str] = []

    @classmethod
    def with_records(cls, *records: tuple[int, DeadLetter]) -> FakeDeadLetters:
        fake = cls()
        fake.records.extend(records)
        return fake

    def _selected(self, s: DlqSelection) -> list[tuple[int, DeadLetter]]:
        out = []
        for ts, r in self.records:
            when = datetime.fromtimestamp(ts / 1000, UTC)
            if (
                (not s.reasons or r.reason in s.reasons)
                and (not s.source_partitions or r.source_partition in s.source_partitions)
                and (s.since is None or when >= s.since)
                and (s.until is None or when < s.until)
                and (not s.ids or (r.partition, r.offset) in s.ids)
            ):
                out.append((ts, r))
        return out

    async def page(
        self, selection: DlqSelection, *, limit: int, after: DlqCursor | None
    ) -> DeadLetterPage:
        pages = PageBuilder(limit, after)
        fields = DeadLetterSummary.__struct_fields__
        for ts, r in self._selected(selection):
            summary = DeadLetterSummary(**{f: getattr(r, f) for f in fields})
            pages.add(sort_key(ts, r.partition, r.offset), summary)
        return pages.page()

    async def get(self, partition: int, offset: int) -> DeadLetter | None:
        return next(
            (r for _, r in self.records if (r.partition, r.offset) == (partition, offset)), None
        )

    async def redrive(self, selection: DlqSelection, *, dry_run: bool) -> RedriveResult:
        items = []
        for _, r in self._selected(selection):
            if r.truncated:
                items.append(RedriveItem(id=r.id, outcome="skipped", why="a truncated copy"))
            else:
                items.append(
                    RedriveItem(
                        id=r.id,
                        outcome="would_redrive" if dry_run else "redriven",
                        topic=r.source_topic,
                    )
                )
                if not dry_run:
                    self.redriven.append(r.id)
        sent = [i for i in items if i.outcome != "skipped"]
        return RedriveResult(
            dry_run=dry_run,
            redriven=len(sent),
            skipped=len(items) - len(sent),
            by_topic={"runs.events": len(sent)} if sent else {},
            items=items,
        )
